"""The registry on Redis: one Redis server, or a Redis Cluster. Redis does the distributing.

Key layout (prefix `zp` by default; `T(id)` is the id as a hash tag, see `registry.redis_layout`):

    zp:c:{T(client)}      the client's one record (below): its registration and its device.
                          The key's Redis TTL is the device TTL (days), renewed by registrations
    zp:u:{T(user)}        the user's device index: sorted set of client ids, each scored by
                          the wall-clock ms its device part lasts until; the key itself lives
                          for the device TTL from the last registration that renewed a device
    {zp:nodes}            set of node ids that heartbeated (members pruned once their record
                          has expired)
    {zp:nodes}:<node>     node record: compact JSON, PX = the heartbeat TTL
    {zp:nodes}!drain:<node>  "1" while an operator's drain request for the node stands (PX;
                          GETDEL by the node that takes it)

A record is `VERSION(20 digits) 0xFF DEVICE_UNTIL(15) 0xFF LIVE_UNTIL(15) 0xFF NODE 0xFF USER
0xFF DEVICE_TYPE`: lookups are plain GET/MGET of small strings, parsed here, and the Lua scripts
read the version, the times and the node at fixed offsets. The registration is live while
LIVE_UNTIL (wall-clock ms) is later than now; an unregistered client keeps its record with
LIVE_UNTIL 0, so its device stays known. The device part is known while DEVICE_UNTIL (or
LIVE_UNTIL) is later than now.

One key per client, because a reconnect storm is mostly known devices registering again (same
user, same device type, a newer version, often another node): each costs one GET and one
`SET ... KEEPTTL` in Redis, no TTL write and no second key or script. Only a new client, a client
whose user or device type changed, or one whose device part is due (less than half the device TTL
left) is written with a new DEVICE_UNTIL and `PX`, and only those go on to the user index. Such a
write is *pending* (a DEVICE_UNTIL that counts as due) until the index has it and CONFIRM sets
the real one: if the index write is lost (a timeout, a dropped connection), the next
registration of the device writes the index again instead of skipping it as known.

Slots. A client's record has the client's tag, so the register, refresh and unregister scripts
(`registry.redis_lua`) each touch one slot per call. A user's index has the user's tag. All node
keys share the tag `{zp:nodes}`, so `nodes()` and the node reads of `locate_many` each touch one
slot. Ids are opaque: a `}` or `%` in an id is percent-escaped inside the tag (`%7D`, `%25`), so no
id can end the tag early or leave it empty and move a client's key to another slot; `{`, `:` and
any unicode are kept as they are.

Writes.
- `register`: the REGISTER script writes a record if the client has none, if its registration is
  no longer live (expired or unregistered), or if the new `(version, node_id)` wins (last writer
  wins, exact on 20-digit version strings); a losing older write writes nothing. The items whose
  device part it (re)wrote then go, in a second round trip, to their users' indexes (INDEX_ADD),
  and a device that moved to another user leaves the old user's index; a third (CONFIRM) marks
  their device parts indexed. The same registration sent again (a retry) wins over itself, so
  it is indexed even when the first attempt's answer was lost. A batch of known devices
  registering again costs one round trip.
- `refresh`: the live registrations that still name this node get a new LIVE_UNTIL (REFRESH).
- `unregister`: compare-and-delete on `(node, version)`: LIVE_UNTIL becomes 0 (UNREGISTER).
Batches cost a constant number of round trips: items are packed many to one EVALSHA (on a single
Redis up to `SCRIPT_ITEMS`; on a cluster the items of one slot), and up to `PIPELINE_ITEMS`
items go in one non-transactional pipeline (a cluster pipeline sends each node its share at
once). Reads are MGET (on a cluster `mget_nonatomic`, by slot), chunked the same way.

Devices. The device part follows the registration: it is the user and device type of the
registration that last won, with that registration's `(version, node)`. Regions still converge:
every replicated register carries the full record (user, device type, version, node), and every
region applies it by the same rule, so where the registrations agree the devices agree. Its
DEVICE_UNTIL is counted in each region from when that region last renewed it (as a device TTL
always was); `refresh` extends only the registration (edges re-register every connection when it
reconnects, long before a device TTL of days runs out).

Reads of a user's devices go through the index, and each member is checked against the client's
record (the one source of truth: it names the current user and how long the device lasts), so a
device that expired, or moved to another user in a race between the two slots, is never
reported; such members are pruned as they are found.

Time. Liveness is decided on the caller's wall clock (`clock_ms`, a `core.clock.ClockMs`:
whole milliseconds; passed to the scripts as
`now_ms` and used here on reads), not on Redis TTLs: the edges that write and the routers that
read need clocks within a few seconds of each other (NTP), which is small beside registration
TTLs of minutes. Redis TTLs only reclaim memory: a client's key expires with its device part (or
its registration, if that lasts longer), and node records with their heartbeat TTL.

Clients. `connect(url)` (`core.redis.client`) makes the client for `from_url`:
`redis://host:port/db` (also `rediss://`, `unix://`) for one server,
`redis+cluster://host:port[,host:port...]` for a Redis Cluster.

Errors. An outage (Redis unreachable or timing out after redis-py's own retries, a cluster that
is down, or Redis refusing writes for memory) leaves every public method as
`core.errors.Unavailable` (`core.redis.common.as_outage`, the Redis error chained); any other
Redis error is a bug or a misconfiguration and propagates as it is. Every write here is
idempotent, so callers retry the whole call. Scripts are sent by SHA; after a restart or
`SCRIPT FLUSH` (NOSCRIPT) they are loaded again, on every primary of a cluster, and the failed
calls are repeated.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar, cast

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from core.clock import ClockMs, wall_ms
from core.redis.client import Client, connect
from core.redis.common import as_outage
from core.redis.store import RedisStore
from registry import redis_lua as lua
from registry.base import Device, Location, NodeInfo, Registration
from registry.redis_layout import (
    Decoder,
    Keys,
    decode_node,
    encode_head,
    encode_node,
    ms_field,
    node_mark,
    version_field,
)

DEFAULT_DEVICE_TTL_S = 7 * 24 * 3600.0
SCRIPT_ITEMS = 500
PIPELINE_ITEMS = 5000
MGET_KEYS = 1000
T = TypeVar("T")
P = ParamSpec("P")


def outages(method: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """`method` (a coroutine function) with a Redis outage raised as the `Unavailable` it
    means (`core.redis.common.as_outage`), the Redis error chained; other errors as they are.
    Every public method of the registry's Redis classes wears it."""
    @functools.wraps(method)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except Exception as exc:
            outage = as_outage(exc)
            if outage is None:
                raise
            raise outage from exc
    return translated


class RedisRegistry(RedisStore):
    """`Registry` on a Redis server or Redis Cluster (see the module docstring for the layout).

    `client` is a redis-py asyncio `Redis` or `RedisCluster` with bytes replies; the registry
    closes it only if it made it (`from_url`). Registries with different `prefix`es share a
    server without touching each other's keys. Every method but `close` raises `Unavailable`
    for an outage (module docstring, "Errors").
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "zp",
        device_ttl_s: float = DEFAULT_DEVICE_TTL_S,
        clock_ms: ClockMs = wall_ms,
    ) -> None:
        encoder = client.get_encoder() if isinstance(client, RedisCluster) \
            else client.connection_pool.get_encoder()
        if encoder.decode_responses:
            raise ValueError("the registry reads bytes: the client must not decode responses")
        super().__init__(client, prefix=prefix)
        self._cluster = isinstance(client, RedisCluster)
        self._keys = Keys(prefix)
        self._device_ttl_ms = _ms(device_ttl_s)
        self._clock_ms = clock_ms
        self._decoder = Decoder()

    @property
    def keys(self) -> Keys:
        return self._keys

    # --- registrations --------------------------------------------------------------------------

    @outages
    async def register(self, registrations: Sequence[Registration], ttl_s: float) -> None:
        for chunk in _chunks(registrations, PIPELINE_ITEMS):
            await self._register(chunk, _ms(ttl_s))

    async def _register(self, regs: Sequence[Registration], ttl_ms: int) -> None:
        keys = self._keys
        now = int(self._clock_ms())
        device_until = now + self._device_ttl_ms
        px = max(self._device_ttl_ms, ttl_ms)
        renew_before = max(now + self._device_ttl_ms // 2, now + ttl_ms)
        pending = ms_field(now + (renew_before - now) // 2)
        head = [ms_field(now), ms_field(now + ttl_ms), pending, ms_field(renew_before), px]
        groups = self._groups(regs, lambda r: keys.client(r.client_id))
        calls: list[_Call] = [
            (lua.REGISTER, [keys.client(r.client_id) for r in group],
             [*head, *(encode_head(r) for r in group)])
            for group in groups]
        written = self._written(groups, await self._run(calls))
        if written:
            await self._index(written, now, device_until, px)
            await self._run([
                (lua.CONFIRM, [keys.client(r.client_id) for r in group],
                 [pending, ms_field(device_until), *(version_field(r.version) for r in group)])
                for group in self._groups([reg for reg, _ in written],
                                          lambda r: keys.client(r.client_id))])

    @staticmethod
    def _written(
        groups: list[Sequence[Registration]], results: list[Any]
    ) -> list[tuple[Registration, bytes | None]]:
        """REGISTER's answers for `groups` as (registration, previous user if it moved)."""
        written: list[tuple[Registration, bytes | None]] = []
        for group, result in zip(groups, results, strict=True):
            items = iter(result)
            for i in items:
                if i > 0:
                    written.append((group[i - 1], None))
                else:
                    written.append((group[-i - 1], next(items)))
        return written

    async def _index(self, written: list[tuple[Registration, bytes | None]], now: int,
                     device_until: int, px: int) -> None:
        """Add written devices to their users' indexes; drop moved ones from the old user's."""
        keys = self._keys
        regs = [reg for reg, _ in written]
        calls: list[_Call] = [
            (lua.INDEX_ADD, [keys.user(r.user_id) for r in group],
             [now, device_until, px, *(r.client_id for r in group)])
            for group in self._groups(regs, lambda r: keys.user(r.user_id))]
        moved: dict[str, list[str]] = {}
        for reg, old_user in written:
            if old_user is not None:
                moved.setdefault(keys.user(old_user.decode()), []).append(reg.client_id)
        results = await self._pipeline(calls, moved)
        await self._rerun_missing(calls, results)

    @outages
    async def refresh(self, node_id: str, client_ids: Sequence[str], ttl_s: float) -> int:
        keys, mark, ttl_ms = self._keys, node_mark(node_id), _ms(ttl_s)
        extended = 0
        for chunk in _chunks(client_ids, PIPELINE_ITEMS):
            now = int(self._clock_ms())
            calls: list[_Call] = [
                (lua.REFRESH, [keys.client(c) for c in group],
                 [ms_field(now), ms_field(now + ttl_ms), ttl_ms, mark])
                for group in self._groups(chunk, keys.client)]
            extended += sum(await self._run(calls))
        return extended

    @outages
    async def unregister(self, client_id: str, node_id: str, version: int) -> bool:
        key = self._keys.client(client_id)
        args = [ms_field(self._clock_ms()), version_field(version), node_mark(node_id)]
        return bool(await self._eval(lua.UNREGISTER, [key], args))

    @outages
    async def lookup(self, client_id: str) -> Registration | None:
        raw = await self._get(self._keys.client(client_id))
        return None if raw is None else \
            self._decoder.registration(client_id, raw, ms_field(self._clock_ms()))

    @outages
    async def lookup_many(self, client_ids: Iterable[str]) -> dict[str, Registration]:
        return await self._read_many(client_ids, self._decoder.registration)

    @outages
    async def locate_many(self, client_ids: Iterable[str]) -> dict[str, Location]:
        found = await self.lookup_many(client_ids)
        node_ids = sorted({reg.node_id for reg in found.values()})
        records = await self._mget([self._keys.node(n) for n in node_ids])
        nodes = {n: decode_node(raw) for n, raw in zip(node_ids, records, strict=True)
                 if raw is not None}
        return {c: Location(reg, nodes.get(reg.node_id)) for c, reg in found.items()}

    # --- devices --------------------------------------------------------------------------------

    @outages
    async def devices_many(self, client_ids: Iterable[str]) -> dict[str, Device]:
        return await self._read_many(client_ids, self._decoder.device)

    async def _read_many(self, client_ids: Iterable[str],
                         decode: Callable[[str, bytes, bytes], T | None]) -> dict[str, T]:
        """What `decode` makes of each client's record (MGET, chunked), for the clients whose
        record has it now (a live registration, a known device)."""
        ids = list(client_ids)
        values = await self._mget([self._keys.client(c) for c in ids])
        now = ms_field(self._clock_ms())
        found: dict[str, T] = {}
        for client_id, raw in zip(ids, values, strict=True):
            if raw is not None and (item := decode(client_id, raw, now)) is not None:
                found[client_id] = item
        return found

    @outages
    async def device(self, client_id: str) -> Device | None:
        raw = await self._get(self._keys.client(client_id))
        now = ms_field(self._clock_ms())
        return None if raw is None else self._decoder.device(client_id, raw, now)

    @outages
    async def devices_of_user(self, user_id: str) -> list[Device]:
        user_key = self._keys.user(user_id)
        members = await self._eval(lua.INDEX_READ, [user_key], [int(self._clock_ms())])
        client_ids = [member.decode() for member in members[::2]]
        records = await self._mget([self._keys.client(c) for c in client_ids])
        now, user = ms_field(self._clock_ms()), user_id.encode()
        devices: list[Device] = []
        stale: list[bytes] = []
        for i, raw in enumerate(records):
            device = None if raw is None else \
                self._decoder.device(client_ids[i], raw, now, user)
            if device is not None:
                devices.append(device)
            else:
                stale += (members[2 * i], members[2 * i + 1])
        if stale:
            await self._eval(lua.INDEX_PRUNE, [user_key], stale)
        return devices

    # --- nodes ----------------------------------------------------------------------------------

    @outages
    async def heartbeat_node(self, node: NodeInfo, ttl_s: float) -> bool:
        keys = [self._keys.node_set, self._keys.node(node.node_id)]
        return bool(await self._eval(lua.RECORD_PUT, keys,
                                     [node.node_id, encode_node(node), _ms(ttl_s)]))

    @outages
    async def remove_node(self, node_id: str) -> None:
        await self._eval(lua.RECORD_DELETE, [self._keys.node_set, self._keys.node(node_id)],
                         [node_id])

    @outages
    async def nodes(self) -> list[NodeInfo]:
        members = cast(set[bytes], await _awaited(self._client.smembers(self._keys.node_set)))
        node_ids = sorted(m.decode() for m in members)
        records = await self._mget([self._keys.node(n) for n in node_ids])
        gone = [n for n, raw in zip(node_ids, records, strict=True) if raw is None]
        if gone:
            await self._eval(lua.RECORD_PRUNE,
                             [self._keys.node_set, *(self._keys.node(n) for n in gone)], gone)
        return [decode_node(raw) for raw in records if raw is not None]

    @outages
    async def request_drain(self, node_id: str, ttl_s: float) -> None:
        await _awaited(self._client.set(self._keys.drain(node_id), b"1", px=_ms(ttl_s)))

    @outages
    async def take_drain_request(self, node_id: str) -> bool:
        return await _awaited(self._client.getdel(self._keys.drain(node_id))) is not None

    @outages
    async def drain_pending(self, node_id: str) -> bool:
        return bool(await _awaited(self._client.exists(self._keys.drain(node_id))))

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
        await self._rerun_missing(calls, results)
        return results

    async def _rerun_missing(self, calls: list[_Call], results: list[Any]) -> None:
        """Repeat (in place) the `calls` whose result is NOSCRIPT, after loading the scripts;
        raise any other error among `results` (which may go on past the calls)."""
        missing = [i for i, result in enumerate(results[:len(calls)])
                   if isinstance(result, NoScriptError)]
        if missing:
            await self._load_scripts()
            for i, result in zip(missing, await self._pipeline([calls[i] for i in missing]),
                                 strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result

    async def _pipeline(self, calls: list[_Call],
                        zrems: dict[str, list[str]] | None = None) -> list[Any]:
        """Script calls (then ZREMs: sorted set -> members) in one pipeline; errors returned."""
        if not calls and not zrems:
            return []
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        for key, members in (zrems or {}).items():
            pipe.zrem(key, *members)
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


__all__ = ["RedisRegistry", "connect", "outages"]
