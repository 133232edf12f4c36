"""A region's change stream: what one region's registry writes, for other regions to apply.

Every write to a `ReplicatedRegistry` (register, refresh, unregister, heartbeat_node,
remove_node) appends ONE entry to the local region's Redis Stream `{prefix}:changes`, whatever
the size of the batch. An entry has two fields:

- `n`: its sequence number in this stream, 1, 2, 3, ... (one more than the previous entry's,
  assigned atomically with the XADD by a Lua script). A reader that remembers the `n` it applied
  last knows exactly whether entries were trimmed before it read them (the next `n` it sees is
  higher than expected) or the stream was recreated, e.g. by a Redis restart without
  persistence (the next `n` is lower).
- `d`: the change, compact JSON (orjson), an object with `op` and `o` (origin region):

  ```
  {"op":"reg","o":"eu","x":EXP,"r":[[client,user,device_type,node,version],...]}
  {"op":"ref","o":"eu","x":EXP,"node":node,"r":[[client,user,device_type,version],...]}
  {"op":"unreg","o":"eu","c":client,"node":node,"v":version}
  {"op":"node","o":"eu","x":EXP,"n":[node,address,region,state,connections,[[dt,count],...]]}
  {"op":"node_rm","o":"eu","node":node}
  ```

  `x` is the absolute expiry in wall-clock milliseconds since the epoch (`core.clock.wall_ms`,
  or the clock injected into the writer), so a TTL carries over
  to the region that applies the change: it keeps the record for what is left of it, not for a
  fresh TTL (regions' clocks are assumed NTP-synchronized; skew shifts expiry by as much).
  A refresh carries the full registrations it extended, so that a region that lacks one (it
  missed the register: trimmed, or its Redis restarted) recreates it from the refresh.

The stream is capped with `XADD MAXLEN ~ maxlen`: approximate trimming, so Redis trims whole
radix-tree nodes cheaply. `maxlen` bounds how long a peer can be away and still catch up entry
by entry; past that it resyncs (see `registry.replicator`). The stream is one key, so on a Redis
Cluster all of a region's appends go to one shard: one XADD per batch keeps that affordable.

Decoding is pure (no I/O): `decode_entry` turns a stream entry into a `ChangeEntry` or raises
`ChangeFormatError`, which a reader counts and skips (an entry it cannot read must never stop
replication).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from registry.base import NodeInfo, NodeState, Registration
from registry.redis import outages

DEFAULT_MAXLEN = 100_000


def stream_key(prefix: str) -> str:
    """The key of a region's change stream."""
    return f"{prefix}:changes"


class ChangeFormatError(ValueError):
    """A stream entry that is not a change this version understands (skipped by readers)."""


@dataclass(frozen=True, slots=True)
class Registered:
    """`register(registrations, ttl)` at the origin; the records live until `expires_at_ms`."""

    registrations: tuple[Registration, ...]
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class Refreshed:
    """`refresh(node_id, ...)` at the origin extended these registrations (all `node_id`'s) until
    `expires_at_ms`. Full records, so that a region missing one can recreate it."""

    node_id: str
    registrations: tuple[Registration, ...]
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class Unregistered:
    """`unregister(client_id, node_id, version)` at the origin: compare-and-delete everywhere."""

    client_id: str
    node_id: str
    version: int


@dataclass(frozen=True, slots=True)
class NodeBeat:
    """`heartbeat_node(node, ttl)` at the origin; the record lives until `expires_at_ms`."""

    node: NodeInfo
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class NodeRemoved:
    """`remove_node(node_id)` at the origin."""

    node_id: str


Change = Registered | Refreshed | Unregistered | NodeBeat | NodeRemoved


@dataclass(frozen=True, slots=True)
class ChangeEntry:
    """One entry read from a change stream: its stream id, sequence number, origin and change."""

    entry_id: str
    seq: int
    origin: str
    change: Change


def encode(change: Change, origin: str) -> bytes:
    """The `d` field of a stream entry for `change` written in region `origin`."""
    return orjson.dumps(_to_json(change, origin))


def _to_json(change: Change, origin: str) -> dict[str, Any]:
    match change:
        case Registered(regs, exp):
            return {"op": "reg", "o": origin, "x": exp,
                    "r": [[r.client_id, r.user_id, r.device_type, r.node_id, r.version]
                          for r in regs]}
        case Refreshed(node_id, regs, exp):
            return {"op": "ref", "o": origin, "x": exp, "node": node_id,
                    "r": [[r.client_id, r.user_id, r.device_type, r.version] for r in regs]}
        case Unregistered(client_id, node_id, version):
            return {"op": "unreg", "o": origin, "c": client_id, "node": node_id, "v": version}
        case NodeBeat(node, exp):
            return {"op": "node", "o": origin, "x": exp,
                    "n": [node.node_id, node.address, node.region, node.state.value,
                          node.connections, [list(pair) for pair in node.by_device_type],
                          [list(pair) for pair in node.by_transport],
                          [list(pair) for pair in node.totals]]}
        case NodeRemoved(node_id):
            return {"op": "node_rm", "o": origin, "node": node_id}
    raise TypeError(f"not a change: {change!r}")


def decode(data: bytes | str) -> tuple[str, Change]:
    """`(origin, change)` from an entry's `d` field; ChangeFormatError if it is not one."""
    try:
        obj = orjson.loads(data)
        return str(obj["o"]), _from_json(obj)
    except ChangeFormatError:
        raise
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ChangeFormatError(f"malformed change: {exc!r}") from exc


def _from_json(obj: dict[str, Any]) -> Change:
    op = obj["op"]
    if op == "reg":
        regs = tuple(Registration(_s(c), _s(u), _s(dt), _s(n), _i(v))
                     for c, u, dt, n, v in obj["r"])
        return Registered(regs, _i(obj["x"]))
    if op == "ref":
        node_id = _s(obj["node"])
        regs = tuple(Registration(_s(c), _s(u), _s(dt), node_id, _i(v)) for c, u, dt, v in obj["r"])
        return Refreshed(node_id, regs, _i(obj["x"]))
    if op == "unreg":
        return Unregistered(_s(obj["c"]), _s(obj["node"]), _i(obj["v"]))
    if op == "node":
        # Changes from nodes of an older version have six fields: no transports nor totals.
        node_id, address, region, state, connections, by_type, *more = obj["n"]
        by_transport, totals = [*more, [], []][:2]
        info = NodeInfo(_s(node_id), _s(address), _s(region), NodeState(state), _i(connections),
                        _named(by_type), _named(by_transport), _named(totals))
        return NodeBeat(info, _i(obj["x"]))
    if op == "node_rm":
        return NodeRemoved(_s(obj["node"]))
    raise ChangeFormatError(f"unknown change op {op!r}")


def _named(pairs: list[list[object]]) -> tuple[tuple[str, int], ...]:
    return tuple((_s(name), _i(n)) for name, n in pairs)


def _s(value: object) -> str:
    if not isinstance(value, str):
        raise ChangeFormatError(f"expected a string, got {value!r}")
    return value


def _i(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ChangeFormatError(f"expected an integer, got {value!r}")
    return value


def decode_entry(entry_id: bytes | str, fields: Mapping[Any, Any]) -> ChangeEntry:
    """A `ChangeEntry` from one XREAD entry (bytes or str keys and values alike)."""
    eid = _text(entry_id)
    seq_raw = fields.get(b"n", fields.get("n"))
    data = fields.get(b"d", fields.get("d"))
    if seq_raw is None or data is None:
        raise ChangeFormatError(f"entry {eid} lacks its n or d field")
    try:
        seq = int(seq_raw)
    except ValueError as exc:
        raise ChangeFormatError(f"entry {eid}: bad sequence number {seq_raw!r}") from exc
    origin, change = decode(data)
    return ChangeEntry(eid, seq, origin, change)


def entry_seq(fields: Mapping[Any, Any]) -> int | None:
    """An entry's sequence number, or None if it has none (a reader still advances past it)."""
    raw = fields.get(b"n", fields.get("n"))
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# Appends atomically: the new entry's `n` is one more than the last entry's (1 for a new stream).
# The stream is never trimmed to empty (MAXLEN ~ keeps at least `maxlen` entries), so the last
# entry always holds the count.
_APPEND_LUA = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local n = 1
if #last > 0 then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then n = tonumber(fields[i + 1]) + 1 end
  end
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'n', n, 'd', ARGV[2])
"""


class ChangeLog:
    """Appends this region's changes to its change stream, on this region's Redis (or Cluster).

    `redis` is a `redis.asyncio.Redis` or `RedisCluster`, bytes or decoded responses alike;
    usually the local registry's own client (`RedisRegistry.client`). The log does not close
    it: whoever made the client does.

    One `append` is one round trip (EVALSHA) and one entry. It raises `Unavailable` while the
    region's Redis is unreachable (`registry.redis.outages`; other Redis errors as they
    are): an append that raised may or may not have been written, and appending the same change
    again is harmless, since applying a change is idempotent.
    """

    def __init__(self, redis: Any, *, prefix: str = "zp", maxlen: int = DEFAULT_MAXLEN) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.redis = redis
        self.key = stream_key(prefix)
        self._maxlen = maxlen
        self._script = redis.register_script(_APPEND_LUA)

    @outages
    async def append(self, change: Change, origin: str) -> str:
        """Append `change` written in region `origin`; returns the new entry's stream id.
        Raises `Unavailable` when the region's Redis is unreachable."""
        entry_id = await self._script(keys=[self.key], args=[self._maxlen, encode(change, origin)])
        return _text(entry_id)
