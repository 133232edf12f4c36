"""The registry on Redis: one Redis server, or a Redis Cluster. Redis does the distributing.

Key layout (prefix `zp` by default; `T(id)` is the id as a hash tag, see `registry.redis_layout`):

    zp:c:{T(client)}      registration: one record string (below), PX = the registration TTL
    zp:d:{T(client)}      device record: the same record string, PX = the device TTL (days)
    zp:u:{T(user)}        the user's device index: sorted set of client ids, each scored by
                          the wall-clock ms (`clock_ms`) its device record lasts until; the key
                          itself lives for the device TTL from the last registration
    {zp:nodes}            set of node ids that heartbeated (members pruned once their record
                          has expired)
    {zp:nodes}:<node>     node record: compact JSON, PX = the heartbeat TTL

A record is `VERSION(20 digits) 0xFF NODE 0xFF USER 0xFF DEVICE_TYPE`: lookups are plain
GET/MGET of small strings, and the Lua scripts read the version and node at fixed offsets.

Slots. A client's registration and device record share the client's tag, so the register,
refresh and unregister scripts (`registry.redis_lua`) each run on one slot. A user's index has
the user's tag. All node keys share the tag `{zp:nodes}`, so `nodes()` and the node reads of
`locate_many` each touch one slot. Ids are opaque: a `}` or `%` in an id is percent-escaped
inside the tag (`%7D`, `%25`), so no id can end the tag early or leave it empty and move one of
a client's keys to another slot; `{`, `:` and any unicode are kept as they are.

Writes.
- `register`: the REGISTER script sets the registration if `(version, node_id)` wins (last writer
  wins, exact on 20-digit version strings), and the device record unless the stored one wins;
  INDEX_ADD adds the client to its user's index. Both go in one pipeline. When a device moved to
  another user, a second round trip removes it from the old user's index.
- `refresh`: PEXPIRE of the registrations that still name this node (REFRESH).
- `unregister`: compare-and-delete on `(node, version)` (UNREGISTER).
Batches cost a constant number of round trips: items are packed many to one EVALSHA (on a single
Redis up to `SCRIPT_ITEMS`; on a cluster the items of one slot), and up to `PIPELINE_ITEMS`
items go in one non-transactional pipeline (a cluster pipeline sends each node its share at
once). Reads are MGET (on a cluster `mget_nonatomic`, by slot), chunked the same way.

Devices. The device record and the index entry last the device TTL from the client's latest
registration; `refresh` extends only the registration (edges re-register every connection when it
reconnects, long before a device TTL of days runs out).

Reads of a user's devices go through the index, and each member is checked against its device
record (the one source of truth: it expires by Redis TTL and names the current user), so a
device that expired, or moved to another user in a race between the two slots, is never
reported; such members are pruned as they are found.

Time. Registration, device and node TTLs are Redis TTLs (server time). Only index scores are
compared by this code, on wall-clock milliseconds from `clock_ms`.

Clients. `connect(url)` (`registry.redis_client`) makes the client for `from_url`:
`redis://host:port/db` (also `rediss://`, `unix://`) for one server,
`redis+cluster://host:port[,host:port...]` for a Redis Cluster.

Errors. redis-py's `ConnectionError` and `TimeoutError` propagate (after redis-py's own
retries); every write here is idempotent, so callers retry the whole call. Scripts are sent by
SHA; after a restart or `SCRIPT FLUSH` (NOSCRIPT) they are loaded again, on every primary of a
cluster, and the failed calls are repeated.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from registry import redis_lua as lua
from registry.base import Device, Location, NodeInfo, Registration
from registry.redis_client import Client, connect
from registry.redis_layout import (
    Keys,
    decode_device,
    decode_node,
    decode_registration,
    encode_node,
    encode_record,
    node_mark,
    user_of,
    version_mark,
)

DEFAULT_DEVICE_TTL_S = 7 * 24 * 3600.0
SCRIPT_ITEMS = 500
PIPELINE_ITEMS = 5000
MGET_KEYS = 1000
T = TypeVar("T")


def wall_ms() -> float:
    return time.time() * 1000.0


class RedisRegistry:
    """`Registry` on a Redis server or Redis Cluster (see the module docstring for the layout).

    `client` is a redis-py asyncio `Redis` or `RedisCluster` with bytes replies; the registry
    closes it only if it made it (`from_url`). Registries with different `prefix`es share a
    server without touching each other's keys.
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "zp",
        device_ttl_s: float = DEFAULT_DEVICE_TTL_S,
        clock_ms: Callable[[], float] = wall_ms,
    ) -> None:
        encoder = client.get_encoder() if isinstance(client, RedisCluster) \
            else client.connection_pool.get_encoder()
        if encoder.decode_responses:
            raise ValueError("the registry reads bytes: the client must not decode responses")
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._keys = Keys(prefix)
        self._device_ttl_ms = _ms(device_ttl_s)
        self._clock_ms = clock_ms
        self._owns_client = False
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisRegistry:
        """A registry on a client made by `connect(url)`, closed by `close()`. `kwargs` are the
        constructor's (prefix, device_ttl_s, clock_ms)."""
        registry = cls(connect(url), **kwargs)
        registry._owns_client = True
        return registry

    @property
    def client(self) -> Client:
        return self._client

    @property
    def keys(self) -> Keys:
        return self._keys

    # --- registrations --------------------------------------------------------------------------

    async def register(self, registrations: Sequence[Registration], ttl_s: float) -> None:
        for chunk in _chunks(registrations, PIPELINE_ITEMS):
            await self._register(chunk, _ms(ttl_s))

    async def _register(self, regs: Sequence[Registration], ttl_ms: int) -> None:
        keys = self._keys
        groups = self._groups(regs, lambda r: keys.registration(r.client_id))
        calls: list[_Call] = []
        for group in groups:
            call_keys: list[str] = []
            args: list[Any] = [ttl_ms, self._device_ttl_ms]
            for reg in group:
                call_keys += (keys.registration(reg.client_id), keys.device(reg.client_id))
                args.append(encode_record(reg))
            calls.append((lua.REGISTER, call_keys, args))
        now = int(self._clock_ms())
        for group in self._groups(regs, lambda r: keys.user(r.user_id)):
            calls.append((lua.INDEX_ADD, [keys.user(r.user_id) for r in group],
                          [now, now + self._device_ttl_ms, self._device_ttl_ms,
                           *(r.client_id for r in group)]))
        results = await self._run(calls)
        await self._unindex_moved(groups, results[:len(groups)])

    async def _unindex_moved(
        self, groups: list[Sequence[Registration]], results: list[Any]
    ) -> None:
        """Drop each client whose device moved to another user from the old user's index.
        `results` are REGISTER's answers for `groups`: {i, previous device record, ...}."""
        moved: dict[str, list[str]] = {}
        for group, result in zip(groups, results, strict=True):
            for i in range(0, len(result), 2):
                old_user = user_of(result[i + 1]).decode()
                moved.setdefault(self._keys.user(old_user), []).append(
                    group[int(result[i]) - 1].client_id)
        if moved:
            pipe = self._client.pipeline(transaction=False)
            for user_key, client_ids in moved.items():
                pipe.zrem(user_key, *client_ids)
            await _awaited(pipe.execute())

    async def refresh(self, node_id: str, client_ids: Sequence[str], ttl_s: float) -> int:
        keys, mark, ttl_ms = self._keys, node_mark(node_id), _ms(ttl_s)
        extended = 0
        for chunk in _chunks(client_ids, PIPELINE_ITEMS):
            calls: list[_Call] = [
                (lua.REFRESH, [keys.registration(c) for c in group], [ttl_ms, mark])
                for group in self._groups(chunk, keys.registration)]
            extended += sum(await self._run(calls))
        return extended

    async def unregister(self, client_id: str, node_id: str, version: int) -> bool:
        key = self._keys.registration(client_id)
        return bool(await self._eval(lua.UNREGISTER, [key], [version_mark(version, node_id)]))

    async def lookup(self, client_id: str) -> Registration | None:
        raw = await self._get(self._keys.registration(client_id))
        return None if raw is None else decode_registration(client_id, raw)

    async def lookup_many(self, client_ids: Iterable[str]) -> dict[str, Registration]:
        ids = list(client_ids)
        key = self._keys.registration
        values = await self._mget([key(c) for c in ids])
        return {c: decode_registration(c, raw)
                for c, raw in zip(ids, values, strict=True) if raw is not None}

    async def locate_many(self, client_ids: Iterable[str]) -> dict[str, Location]:
        found = await self.lookup_many(client_ids)
        node_ids = sorted({reg.node_id for reg in found.values()})
        records = await self._mget([self._keys.node(n) for n in node_ids])
        nodes = {n: decode_node(raw) for n, raw in zip(node_ids, records, strict=True)
                 if raw is not None}
        return {c: Location(reg, nodes.get(reg.node_id)) for c, reg in found.items()}

    # --- devices --------------------------------------------------------------------------------

    async def devices_many(self, client_ids: Iterable[str]) -> dict[str, Device]:
        ids = list(client_ids)
        values = await self._mget([self._keys.device(c) for c in ids])
        return {c: decode_device(c, raw)
                for c, raw in zip(ids, values, strict=True) if raw is not None}

    async def device(self, client_id: str) -> Device | None:
        raw = await self._get(self._keys.device(client_id))
        return None if raw is None else decode_device(client_id, raw)

    async def devices_of_user(self, user_id: str) -> list[Device]:
        user_key = self._keys.user(user_id)
        members = await self._eval(lua.INDEX_READ, [user_key], [int(self._clock_ms())])
        client_ids = [member.decode() for member in members[::2]]
        records = await self._mget([self._keys.device(c) for c in client_ids])
        devices: list[Device] = []
        stale: list[bytes] = []
        user = user_id.encode()
        for i, raw in enumerate(records):
            if raw is not None and user_of(raw) == user:
                devices.append(decode_device(client_ids[i], raw))
            else:
                stale += (members[2 * i], members[2 * i + 1])
        if stale:
            await self._eval(lua.INDEX_PRUNE, [user_key], stale)
        return devices

    # --- nodes ----------------------------------------------------------------------------------

    async def heartbeat_node(self, node: NodeInfo, ttl_s: float) -> None:
        keys = [self._keys.node_set, self._keys.node(node.node_id)]
        await self._eval(lua.NODE_PUT, keys, [node.node_id, encode_node(node), _ms(ttl_s)])

    async def remove_node(self, node_id: str) -> None:
        await self._eval(lua.NODE_DELETE, [self._keys.node_set, self._keys.node(node_id)],
                         [node_id])

    async def nodes(self) -> list[NodeInfo]:
        members = cast(set[bytes], await _awaited(self._client.smembers(self._keys.node_set)))
        node_ids = sorted(m.decode() for m in members)
        records = await self._mget([self._keys.node(n) for n in node_ids])
        gone = [n for n, raw in zip(node_ids, records, strict=True) if raw is None]
        if gone:
            await self._eval(lua.NODE_PRUNE,
                             [self._keys.node_set, *(self._keys.node(n) for n in gone)], gone)
        return [decode_node(raw) for raw in records if raw is not None]

    async def close(self) -> None:
        if self._owns_client and not self._closed:
            self._closed = True
            await self._client.aclose()

    # --- plumbing -------------------------------------------------------------------------------

    def _groups(self, items: Sequence[T], key_of: Callable[[T], str]) -> list[Sequence[T]]:
        """Items in groups that one script call may take: chunks of `SCRIPT_ITEMS` on a single
        Redis; on a cluster, the items whose key (by `key_of`) is in one slot."""
        if not self._cluster:
            return _chunks(items, SCRIPT_ITEMS)
        by_slot: dict[int, list[T]] = {}
        for item in items:
            by_slot.setdefault(key_slot(key_of(item).encode()), []).append(item)
        return [chunk for group in by_slot.values() for chunk in _chunks(group, SCRIPT_ITEMS)]

    async def _mget(self, keys: list[str]) -> list[bytes | None]:
        """Values of `keys` in order, in one round trip per `PIPELINE_ITEMS` keys."""
        values: list[bytes | None] = []
        for chunk in _chunks(keys, PIPELINE_ITEMS):
            values += await self._mget_pipelined(chunk)
        return values

    async def _mget_pipelined(self, keys: Sequence[str]) -> list[bytes | None]:
        if self._cluster:
            return await self._client.mget_nonatomic(keys)  # type: ignore[union-attr]
        if len(keys) <= MGET_KEYS:
            return cast(list[bytes | None], await self._client.mget(keys))
        pipe = self._client.pipeline(transaction=False)
        for chunk in _chunks(keys, MGET_KEYS):
            pipe.mget(chunk)
        return [value for values in await _awaited(pipe.execute()) for value in values]

    async def _get(self, key: str) -> bytes | None:
        return cast(bytes | None, await self._client.get(key))

    async def _eval(self, script: lua.Lua, keys: list[str], args: Sequence[Any]) -> Any:
        return (await self._run([(script, keys, args)]))[0]

    async def _run(self, calls: list[_Call]) -> list[Any]:
        """Run script calls in one pipeline; load the scripts and repeat the calls that met
        NOSCRIPT (a restarted or flushed server). Other errors are raised."""
        results = await self._pipeline(calls)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            await self._load_scripts()
            for i, result in zip(missing, await self._pipeline([calls[i] for i in missing]),
                                 strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        if not calls:
            return []
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return await _awaited(pipe.execute(raise_on_error=False))

    async def _load_scripts(self) -> None:
        """Load every script (on a cluster, on every primary: redis-py routes SCRIPT LOAD so)."""
        for script in lua.ALL:
            sha = await self._client.script_load(script.source)
            if isinstance(sha, bytes):
                sha = sha.decode()
            if sha != script.sha:
                raise RuntimeError(f"script {script.name}: server SHA {sha} != {script.sha}")


_Call = tuple[lua.Lua, list[str], Sequence[Any]]


async def _awaited(result: Awaitable[T]) -> T:
    return await result


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    if len(items) <= size:
        return [items] if items else []
    return [items[i:i + size] for i in range(0, len(items), size)]


def _ms(seconds: float) -> int:
    """A Redis PX from seconds: whole milliseconds, at least 1 (PX 0 is an error)."""
    return max(1, round(seconds * 1000))


__all__ = ["RedisRegistry", "connect"]
