"""What a replicator keeps: its position in a peer's stream, its lease, its counters.

The position and the lease live in THIS region's Redis (`position_key_of`, `lease_key_of`); the
lease is taken and renewed by `HOLD_LUA` and given up by `RELEASE_LUA`. Stream ids order by
`id_key`; `entries_of` reads an XREAD reply of any shape. `registry.replicator` says what each
is for. Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Position:
    """The last entry applied: its stream id and sequence number (`0-0`, 0 before the first)."""

    entry_id: str
    seq: int

    def encode(self) -> str:
        return f"{self.entry_id} {self.seq}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Position | None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        entry_id, _, seq = text.partition(" ")
        try:
            id_key(entry_id)
            return cls(entry_id, int(seq))
        except ValueError:
            return None


START = Position("0-0", 0)


@dataclass(slots=True)
class ReplicatorStats:
    """Counters of one replicator (for logs and metrics); they only grow."""

    entries: int = 0  # entries read from the peer's stream
    applied: int = 0
    expired: int = 0  # skipped: their records had expired before we applied them
    own: int = 0  # skipped: written by this region (misconfiguration)
    malformed: int = 0  # skipped: not a change this version understands
    resyncs: int = 0  # times entries were trimmed before we read them
    missed: int = 0  # how many entries those resyncs lost
    peer_resets: int = 0
    local_resets: int = 0
    outages: int = 0
    leases: int = 0  # times this replicator took the lease (became the active one)


def position_key_of(prefix: str, peer_region: str) -> str:
    """Where a region stores how far it has applied `peer_region`'s stream."""
    return f"{prefix}:repl:pos:{peer_region}"


def lease_key_of(prefix: str, peer_region: str) -> str:
    """Where a region records which of its processes applies `peer_region`'s stream."""
    return f"{prefix}:repl:lease:{peer_region}"


# Take the lease if free, renew it if ours: 1 if we hold it now.
HOLD_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

# Give the lease up if it is still ours.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def entries_of(reply: Any) -> Sequence[tuple[Any, Mapping[Any, Any]]]:
    """The entries of a one-stream XREAD reply, whichever shape redis-py gives it: RESP2
    `[[key, entries]]`, RESP3 `{key: [entries]}` or unified `{key: entries}`."""
    if not reply:
        return []
    value = next(iter(reply.values())) if isinstance(reply, Mapping) else reply[0][1]
    if value and isinstance(value[0], list):
        value = value[0]
    return value or []


def id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
