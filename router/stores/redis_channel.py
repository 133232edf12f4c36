"""`NodeChannel` on Redis Streams: one stream per edge node.

Key layout (prefix `zp` by default; `T(id)` is the node id as a hash tag):

    zp:n:{T(node)}   stream; one entry per `publish` call: field `h` (compact JSON, per delivery
                     [message id, payload length, clients, broadcast, device types]) and field
                     `p` (the payloads, concatenated, as sent)

Publish. One XADD per batch (a router publishes one batch per node per taken batch), with an
exact `MAXLEN` of `maxlen` entries, so a node that stops reading keeps at most the newest
`maxlen` batches; the rest are in the clients' inboxes. Each publish also sets the key's TTL to
`ttl_s`, so the stream of a node that is gone disappears by itself. Publishes from one publisher
arrive in the order made (one stream, XADD order); those of different publishers interleave.

Receive. XREAD (BLOCK, in slices of at most a second) after the last entry this channel object
read for that node; entries are split into deliveries, and what exceeds `max_n` is kept for the
next receive. Each receive also trims (`XTRIM MINID ~`) what earlier receives already handed out,
in the same round trip, so a node that keeps up keeps its stream short. A node's first receive
starts from the entries published in the last `catch_up_s` (by stream id, which is the Redis
server's clock: keep clocks within a second or so): a node registers connections before its
delivery loop's first read, and deliveries published in between are not lost, while a node id
reused after a restart does not replay an old backlog. Older deliveries are in the inboxes.

One reader per node id (the node itself); several readers of one node id would each see every
delivery, and trim under each other.

Errors. An unreachable Redis raises `Unavailable`. After `close`, publishes are dropped, a
waiting receive returns [] at once and later ones after their timeout.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson

from core.clock import ClockMs, wall_ms
from core.redis.client import Client
from core.redis.common import block_ms, idle, unavailable, unless_closed
from core.redis.keys import tag
from core.redis.store import RedisStore
from router.base import Delivery

DEFAULT_MAXLEN = 10_000
DEFAULT_TTL_S = 3600.0
DEFAULT_CATCH_UP_S = 30.0


class _Reader:
    """Where this channel object is in one node's stream."""

    __slots__ = ("buffered", "last_id", "trim_id")

    def __init__(self, start_id: str) -> None:
        self.last_id = start_id
        self.trim_id: str | None = None  # entries before it were handed out already
        self.buffered: deque[Delivery] = deque()


class RedisNodeChannel(RedisStore):
    """`NodeChannel` on Redis Streams (layout and behaviour in the module docstring).

    `client` is a redis-py asyncio `Redis` or `RedisCluster` with bytes replies; the channel
    closes it only if it made it (`from_url`). `clock_ms` (wall-clock ms) places a node's
    first receive `catch_up_s` back.
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "zp",
        maxlen: int = DEFAULT_MAXLEN,
        ttl_s: float = DEFAULT_TTL_S,
        catch_up_s: float = DEFAULT_CATCH_UP_S,
        clock_ms: ClockMs = wall_ms,
    ) -> None:
        super().__init__(client, prefix=prefix)
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self._maxlen = maxlen
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._catch_up_ms = round(catch_up_s * 1000)
        self._clock_ms = clock_ms
        self._readers: dict[str, _Reader] = {}

    def key(self, node_id: str) -> str:
        return f"{self._prefix}:n:{{{tag(node_id)}}}"

    async def publish(self, node_id: str, deliveries: Sequence[Delivery]) -> None:
        if self._closed.is_set() or not deliveries:
            return
        head, payloads = encode(deliveries)
        key = self.key(node_id)
        pipe = self._client.pipeline(transaction=False)
        pipe.execute_command("XADD", key, "MAXLEN", self._maxlen, "*", "h", head, "p", payloads)
        pipe.execute_command("PEXPIRE", key, self._ttl_ms)
        with unavailable("node channel"):
            await pipe.execute()

    async def receive(self, node_id: str, max_n: int, timeout_s: float) -> list[Delivery]:
        if self._closed.is_set():
            await idle(timeout_s)
            return []
        if max_n <= 0:
            return []
        reader = self._reader(node_id)
        if not reader.buffered:
            with unavailable("node channel"):
                await self._read(node_id, reader, max_n, timeout_s)
        n = min(max_n, len(reader.buffered))
        return [reader.buffered.popleft() for _ in range(n)]

    def _reader(self, node_id: str) -> _Reader:
        reader = self._readers.get(node_id)
        if reader is None:
            start_ms = max(0, self._clock_ms() - self._catch_up_ms)
            reader = self._readers[node_id] = _Reader(f"{start_ms}-0")
        return reader

    async def _read(self, node_id: str, reader: _Reader, max_n: int, timeout_s: float) -> None:
        """Read up to `max_n` entries after `reader.last_id` into its buffer, waiting up to
        `timeout_s` (in slices) for the first; trim what was handed out before."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        key = self.key(node_id)
        while True:
            remaining = deadline - loop.time()
            pipe = self._client.pipeline(transaction=False)
            if reader.trim_id is not None:
                pipe.execute_command("XTRIM", key, "MINID", "~", reader.trim_id)
            block = ("BLOCK", block_ms(remaining)) if remaining > 0 else ()
            pipe.execute_command("XREAD", "COUNT", max_n, *block, "STREAMS", key, reader.last_id)
            finished, results = await unless_closed(self._closed, pipe.execute())
            if not finished or self._closed.is_set():
                return
            assert results is not None
            reply = results[-1]
            reader.trim_id = None
            if reply:
                self._keep(reader, _entries(reply))
                return
            if deadline - loop.time() <= 0:
                return

    @staticmethod
    def _keep(reader: _Reader, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for entry_id, fields in entries:
            reader.buffered.extend(decode(fields[b"h"], fields[b"p"]))
            reader.last_id = entry_id.decode()
        reader.trim_id = reader.last_id


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XREAD's entries for one stream, whichever reply shape redis-py gave (RESP2 list of
    [key, entries], or a RESP3 dict of key -> entries); fields as a dict."""
    streams = list(reply.values()) if isinstance(reply, dict) else [s[1] for s in reply]
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    for entries in streams:
        for entry_id, fields in entries:
            if not isinstance(fields, dict):
                fields = dict(zip(fields[::2], fields[1::2], strict=True))
            out.append((entry_id, fields))
    return out


def encode(deliveries: Sequence[Delivery]) -> tuple[bytes, bytes]:
    """A batch as one entry's two fields: the heads (JSON) and the payloads (concatenated)."""
    head = orjson.dumps([
        [d.message_id, len(d.payload), d.clients, d.broadcast, sorted(d.device_types)]
        for d in deliveries])
    return head, b"".join(d.payload for d in deliveries)


def decode(head: bytes, payloads: bytes) -> list[Delivery]:
    """The deliveries `encode` made `head` and `payloads` from."""
    out: list[Delivery] = []
    offset = 0
    for message_id, size, clients, broadcast, device_types in orjson.loads(head):
        payload = payloads[offset:offset + size]
        offset += size
        out.append(Delivery(message_id, payload, tuple(clients), broadcast,
                            frozenset(device_types)))
    return out
