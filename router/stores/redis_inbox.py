"""`Inbox` on Redis: per client, a sorted set of ids, a hash of their entries and a hash of
the marks of those given (`router.base.Inbox`).

Key layout (prefix `zp` by default; `T(id)` is the client id as a hash tag, as the registry makes
it: `registry.redis_layout.tag`):

    zp:i:{T(client)}     sorted set: every member scored 0, so ordered by id bytewise (message
                         ids are time-ordered ASCII, so that is time order); "after X" is
                         ZRANGEBYLEX (X +
    zp:i:{T(client)}:e   hash: id -> EXPIRES_AT (15 digits, wall-clock ms) followed by the payload
    zp:i:{T(client)}:g   hash: id -> mark, for the entries given (written by edges as they
                         write them to devices, and by pulls)
    zp:i:{T(client)}:h   hash: id -> the peer regions the entry was forwarded to ("b,c,")

The four keys of a client share its tag, so each call is one script on one Cluster slot. A
script per operation keeps them in step (`router.stores.redis_inbox_lua`): ADD (ZADD NX, HSET, drop
the
oldest past the cap, extend the keys' TTL), AFTER (range, skip and delete expired entries, until
`limit` live ones or the end; for a pull, mark what it answers), RESUME (remove what the device
has, then AFTER from the start), THROUGH (the removal alone), GIVEN (raise marks), HANDED and
UNHANDED (record forwards, read what a region was not handed) and ACK (ZREM and HDELs).

Time. An entry is expired when the caller's wall clock (`clock_ms`, passed to the scripts) has
reached its `expires_at_ms`; reads skip and delete expired entries. Redis TTLs only reclaim
memory: each add extends the keys' TTL to the entry's remaining life (never shortens it), so an
inbox disappears by itself once its latest entry has expired. Entries that expire before newer
ones stay (counted against the cap, which bounds them) until a read passes over them.

Batching. `add` for many clients (a message to a user's devices) is one script call per client,
all in one pipeline: one round trip per `PIPELINE_ITEMS` clients, whatever their slots (a cluster
pipeline sends each node its share at once). `resume_many`, `given_many` and `ack_many` are
pipelined the same way.

Errors. An unreachable Redis raises `Unavailable`. Every operation is idempotent, so callers
retry the whole call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from core.clock import ClockMs, wall_ms
from core.redis.client import Client
from core.redis.common import ScriptCall, run_pipelined, run_script, unavailable
from core.redis.keys import tag
from core.redis.lua import Lua
from core.redis.store import RedisStore
from router.base import InboxEntry
from router.stores.redis_inbox_lua import ACK, ADD, AFTER, GIVEN, HANDED, RESUME, THROUGH, UNHANDED

EXPIRY_DIGITS = 15
FORWARDED = b"F"
"""After the expiry, in the entry of a forwarded message (payloads are JSON objects: `{`)."""
ACK_ITEMS = 1000
GIVEN_ITEMS = 500
"""Marks per GIVEN call (id and mark: two arguments each)."""


class RedisInbox(RedisStore):
    """`Inbox` on Redis (layout and behaviour in the module docstring).

    `client` is a redis-py asyncio `Redis` or `RedisCluster` with bytes replies; the inbox closes
    it only if it made it (`from_url`). `peered`: this is one region's inbox in a fleet of
    several (`Inbox.resume_many`).
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "zp",
        max_per_client: int,
        clock_ms: ClockMs = wall_ms,
        peered: bool = False,
    ) -> None:
        super().__init__(client, prefix=prefix)
        if max_per_client < 1:
            raise ValueError("max_per_client must be at least 1")
        self._cap = max_per_client
        self._clock_ms = clock_ms
        self._strict = "1" if peered else "0"

    def keys(self, client_id: str) -> list[str]:
        """The client's four keys: its ids (sorted set), entries, marks and handed (hashes)."""
        ids = f"{self._prefix}:i:{{{tag(client_id)}}}"
        return [ids, ids + ":e", ids + ":g", ids + ":h"]

    async def add(self, client_ids: Iterable[str], entry: InboxEntry) -> None:
        await self.add_many([(tuple(client_ids), entry)])

    async def add_many(self, items: Sequence[tuple[Sequence[str], InboxEntry]]) -> None:
        now_ms = self._clock_ms()
        calls: list[ScriptCall] = []
        for client_ids, entry in items:
            ttl_ms = entry.expires_at_ms - now_ms
            if ttl_ms <= 0:
                continue
            value = b"%015d%b%b" % (entry.expires_at_ms, FORWARDED if entry.forwarded else b"",
                                    entry.payload)
            args = [entry.id, value, self._cap, ttl_ms]
            calls += [(ADD, self.keys(c), args) for c in dict.fromkeys(client_ids)]
        if calls:
            with unavailable("inbox"):
                await run_pipelined(self._client, calls)

    async def after(self, client_id: str, last_id: str | None, limit: int) -> list[InboxEntry]:
        return await self._page(client_id, last_id, limit, mark=False)

    async def pull(self, client_id: str, last_id: str | None, limit: int) -> list[InboxEntry]:
        return await self._page(client_id, last_id, limit, mark=True)

    async def resume_many(self, resumes: Sequence[tuple[str, str | None]],
                          limit: int) -> list[list[InboxEntry]]:
        if limit <= 0 or not resumes:
            return [[] for _ in resumes]
        now_ms, strict = self._clock_ms(), self._strict
        calls: list[ScriptCall] = [
            (RESUME, self.keys(client_id), [resume_id or "", limit, now_ms, strict])
            for client_id, resume_id in resumes]
        with unavailable("inbox"):
            return [_page(found) for found in await run_pipelined(self._client, calls)]

    async def through(self, client_id: str, last_id: str) -> int:
        with unavailable("inbox"):
            return int(await self._run(THROUGH, client_id, [last_id, self._strict]))

    async def given_many(self, items: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> None:
        calls: list[ScriptCall] = []
        for client_id, marks in items:
            flat = [part for pair in marks for part in pair]
            calls += [(GIVEN, self.keys(client_id), flat[start:start + 2 * GIVEN_ITEMS])
                      for start in range(0, len(flat), 2 * GIVEN_ITEMS)]
        if calls:
            with unavailable("inbox"):
                await run_pipelined(self._client, calls)

    async def handed_many(self, region: str, items: Sequence[tuple[str, Sequence[str]]]) -> None:
        calls: list[ScriptCall] = [
            (HANDED, self.keys(client_id), [region, *ids[start:start + ACK_ITEMS]])
            for client_id, ids in items for start in range(0, len(ids), ACK_ITEMS)]
        if calls:
            with unavailable("inbox"):
                await run_pipelined(self._client, calls)

    async def unhanded_many(self, region: str,
                            client_ids: Sequence[str]) -> list[list[InboxEntry]]:
        if not client_ids:
            return []
        now_ms = self._clock_ms()
        calls: list[ScriptCall] = [(UNHANDED, self.keys(c), [region, self._cap, now_ms])
                                   for c in client_ids]
        with unavailable("inbox"):
            return [_page(found) for found in await run_pipelined(self._client, calls)]

    async def ack(self, client_id: str, ids: Sequence[str]) -> int:
        removed = 0
        with unavailable("inbox"):
            for start in range(0, len(ids), ACK_ITEMS):
                removed += await self._run(ACK, client_id, ids[start:start + ACK_ITEMS])
        return removed

    async def ack_many(self, acks: Sequence[tuple[str, Sequence[str]]]) -> int:
        calls: list[ScriptCall] = [
            (ACK, self.keys(client_id), ids[start:start + ACK_ITEMS])
            for client_id, ids in acks for start in range(0, len(ids), ACK_ITEMS)]
        if not calls:
            return 0
        with unavailable("inbox"):
            return sum(int(n) for n in await run_pipelined(self._client, calls))

    async def _run(self, script: Lua, client_id: str, args: Sequence[Any]) -> Any:
        return await run_script(self._client, script, self.keys(client_id), args)

    async def _page(self, client_id: str, last_id: str | None, limit: int, *,
                    mark: bool) -> list[InboxEntry]:
        if limit <= 0:
            return []
        start = "-" if last_id is None else "(" + last_id
        with unavailable("inbox"):
            found = await self._run(AFTER, client_id,
                                    [start, limit, self._clock_ms(), "1" if mark else "0"])
        return _page(found)


def _page(found: Sequence[bytes]) -> list[InboxEntry]:
    """The entries an AFTER script answered: flat (id, value) pairs."""
    return [_entry(found[i], found[i + 1]) for i in range(0, len(found), 2)]


def _entry(entry_id: bytes, value: bytes) -> InboxEntry:
    forwarded = value[EXPIRY_DIGITS:EXPIRY_DIGITS + 1] == FORWARDED
    payload = value[EXPIRY_DIGITS + 1:] if forwarded else value[EXPIRY_DIGITS:]
    return InboxEntry(entry_id.decode(), payload, int(value[:EXPIRY_DIGITS]), forwarded)

