"""A registry replicated across regions: local writes, a change stream, and appliers.

Each region has its own Redis (or Redis Cluster) holding its own full registry. A
`ReplicatedRegistry` wraps that local registry:

- **Writes go local first, then to the change stream.** Each write (register, refresh,
  unregister, heartbeat_node, remove_node) is made on the local registry, and only once that
  succeeded is it appended, as one entry per call, to the local region's change stream
  (`registry.changes`). Local first, because the stream must only carry what the local region
  accepted: a refresh appends exactly the records it extended, an unregister the answer it got.
  Writes never wait for, or touch, another region, so they succeed while other regions are down.
- **Both steps raise.** If the local write fails (the region's Redis is down: `Unavailable`)
  nothing is appended and the error propagates. If the append fails after the local write
  succeeded (Redis died in between), the error propagates too: the write may be visible
  locally but not yet announced. Retrying the call is safe (every write is idempotent) and
  announces it; an edge re-registers its connections after an outage anyway, and its refreshes
  carry full registrations, so other regions also converge within a third of a TTL without a
  retry.
- **The stream's order is the local order.** Two writes that touch one record (a client, or a
  node) are made and appended one after the other, never interleaved: a write holds a lock
  stripe per client (or node) it touches, from its local write to its append. Otherwise an
  unregister racing a re-register or a refresh of the same client (the edge's refresh loop runs
  beside its flushes) could be appended in the opposite order to the one the local registry saw
  and leave a stale record in other regions for a TTL. Writes to different clients run
  concurrently; stripes are taken in a fixed order, so batches cannot deadlock. (This orders the
  writes of one process; a client's record is only ever written by the one node process
  holding its connection, and writes from different nodes are ordered by version.)
- **Reads are local** (`LOCAL_OPS`: the local registry's own methods), so they see other
  regions' clients only as fast as the replicators apply their streams (`registry.replicator`):
  typically well under a second. Drain requests are local too: regional, never replicated.

Applying another region's change (`apply_change`) goes to the *wrapped* local registry, never
to a `ReplicatedRegistry`, so applied changes are not appended again (no ping-pong between
regions). The rules that make every region converge to the same state, in whatever order the
streams are applied:

- a registration replaces another for the same client only if `(version, node_id)` is higher
  (last writer wins; the registry's own rule), so concurrent registrations of one client in two
  regions end with the same winner everywhere;
- an unregister is a compare-and-delete of exactly `(client, node, version)`, so a late or
  replayed one never deletes a newer record;
- a record lives until its origin's absolute expiry: what is left of the TTL carries over, and
  a change whose records already expired is skipped;
- a refresh re-registers the full records before extending them, so it recreates a record the
  receiving region missed (its register entry was trimmed, or the region's Redis restarted);
- each record originates in exactly one region's stream (the region of the node holding the
  connection), in which its register precedes its refreshes and its unregister; a replay is
  always a suffix of a stream, applied in order, so a record a replay recreates is deleted
  again by its unregister later in the same suffix: replaying ends where applying once did.

Device records (user -> devices, kept for days) are written in the receiving region with that
region's own device TTL, counted from when it applies the registration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Protocol

from core.clock import ClockMs, wall_ms
from registry.base import Connections, NodeInfo, Nodes, Registration, Registry
from registry.changes import (
    Change,
    ChangeLog,
    NodeBeat,
    NodeRemoved,
    Refreshed,
    Registered,
    Unregistered,
)

LOCK_STRIPES = 256

LOCAL_OPS = frozenset({
    "lookup", "lookup_many", "locate_many", "devices_many", "devices_of_user", "device", "nodes",
    "request_drain", "take_drain_request", "drain_pending"})
"""What a `ReplicatedRegistry` leaves to its local registry as it is: the reads and the drain
requests (module docstring, "Reads are local")."""


class ReplicaTarget(Connections, Nodes, Protocol):
    """What applying another region's change writes to: a region's own connections and nodes."""


class ReplicatedRegistry:
    """`Registry` for one region of several: local reads, local writes announced to the others.

    `local` is this region's registry (e.g. `RedisRegistry`), `changes` the change log on the
    same region's Redis, `region` this region's name (the origin of its changes). `wall_ms` is
    the wall clock expiries are written in (injected for tests).

    The writes are methods here; the operations in `LOCAL_OPS` (reads, drain requests) are the
    local registry's own. Every method raises `Unavailable` when this region's Redis is
    unreachable, from the local write or from the append after it (module docstring).

    A refresh costs one extra local read: it looks up the records it extended, to carry them in
    full in its change entry.
    """

    def __init__(
        self,
        local: Registry,
        changes: ChangeLog,
        region: str,
        *,
        wall_ms: ClockMs = wall_ms,
    ) -> None:
        if isinstance(local, ReplicatedRegistry):
            raise TypeError("wrap a region's own registry, not a ReplicatedRegistry")
        self.local = local
        self.changes = changes
        self.region = region
        self._wall_ms = wall_ms
        self._stripes = [asyncio.Lock() for _ in range(LOCK_STRIPES)]

    def __getattr__(self, name: str) -> Any:
        """The operations of `LOCAL_OPS`: the local registry's own methods."""
        if name in LOCAL_OPS:
            return getattr(self.local, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @contextlib.asynccontextmanager
    async def _ordered(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Hold the lock stripes of these record keys (in a fixed order: no deadlock)."""
        held: list[asyncio.Lock] = []
        try:
            for stripe in sorted({hash(key) % LOCK_STRIPES for key in keys}):
                lock = self._stripes[stripe]
                await lock.acquire()
                held.append(lock)
            yield
        finally:
            for lock in reversed(held):
                lock.release()

    async def _announce(self, change: Change) -> None:
        await self.changes.append(change, self.region)

    def _expiry(self, ttl_s: float) -> int:
        return self._wall_ms() + round(ttl_s * 1000)

    async def register(self, registrations: Sequence[Registration], ttl_s: float) -> None:
        if not registrations:
            return
        async with self._ordered(reg.client_id for reg in registrations):
            expires_at_ms = self._expiry(ttl_s)
            await self.local.register(registrations, ttl_s)
            await self._announce(Registered(tuple(registrations), expires_at_ms))

    async def refresh(self, node_id: str, client_ids: Sequence[str], ttl_s: float) -> int:
        """As `Registry.refresh`; announces the full records it extended, if any."""
        if not client_ids:
            return 0
        async with self._ordered(client_ids):
            expires_at_ms = self._expiry(ttl_s)
            extended = await self.local.refresh(node_id, client_ids, ttl_s)
            if not extended:
                return 0
            found = await self.local.lookup_many(client_ids)
            mine = tuple(reg for reg in found.values() if reg.node_id == node_id)
            if mine:
                await self._announce(Refreshed(node_id, mine, expires_at_ms))
            return extended

    async def unregister(self, client_id: str, node_id: str, version: int) -> bool:
        """As `Registry.unregister`; announced even when nothing was deleted here, since another
        region may still hold that exact record (compare-and-delete makes this harmless)."""
        async with self._ordered((client_id,)):
            deleted = await self.local.unregister(client_id, node_id, version)
            await self._announce(Unregistered(client_id, node_id, version))
            return deleted

    async def heartbeat_node(self, node: NodeInfo, ttl_s: float) -> bool:
        async with self._ordered((_node_key(node.node_id),)):
            expires_at_ms = self._expiry(ttl_s)
            had = await self.local.heartbeat_node(node, ttl_s)
            await self._announce(NodeBeat(node, expires_at_ms))
            return had

    async def remove_node(self, node_id: str) -> None:
        async with self._ordered((_node_key(node_id),)):
            await self.local.remove_node(node_id)
            await self._announce(NodeRemoved(node_id))

    async def close(self) -> None:
        """Close the local registry (the change log's client belongs to whoever made it)."""
        await self.local.close()


async def apply_change(change: Change, local: ReplicaTarget, now_ms: int) -> bool:
    """Apply another region's `change` to this region's own registry `local`.

    `local` must be the wrapped registry, not a `ReplicatedRegistry` (that would append the
    change again). Idempotent: applying a change twice leaves the registry as applying it once.
    Returns False if the change was skipped because its records had already expired at
    `now_ms` (wall-clock milliseconds). Raises what `local` raises (`Unavailable` for an
    outage of this region's Redis).
    """
    match change:
        case Registered(regs, expires_at_ms):
            ttl_s = _remaining_s(expires_at_ms, now_ms)
            if ttl_s is None:
                return False
            await local.register(regs, ttl_s)
        case Refreshed(node_id, regs, expires_at_ms):
            ttl_s = _remaining_s(expires_at_ms, now_ms)
            if ttl_s is None:
                return False
            # Recreate what this region lacks (no-op for a record it has at this version or
            # newer), then extend what node_id holds.
            await local.register(regs, ttl_s)
            await local.refresh(node_id, [reg.client_id for reg in regs], ttl_s)
        case Unregistered(client_id, node_id, version):
            await local.unregister(client_id, node_id, version)
        case NodeBeat(node, expires_at_ms):
            ttl_s = _remaining_s(expires_at_ms, now_ms)
            if ttl_s is None:
                return False
            await local.heartbeat_node(node, ttl_s)
        case NodeRemoved(node_id):
            await local.remove_node(node_id)
    return True


def records_of(change: Change) -> frozenset[str]:
    """The records a change touches (client ids, and node ids in a space of their own): two
    changes that touch none in common may be applied in either order, or at once."""
    match change:
        case Registered(regs) | Refreshed(_, regs):
            return frozenset(reg.client_id for reg in regs)
        case Unregistered(client_id):
            return frozenset((client_id,))
        case NodeBeat(node):
            return frozenset((_node_key(node.node_id),))
        case NodeRemoved(node_id):
            return frozenset((_node_key(node_id),))
    raise TypeError(f"not a change: {change!r}")


def _node_key(node_id: str) -> str:
    return "\x00node:" + node_id  # its own key space: sharing a client's stripe costs concurrency


def _remaining_s(expires_at_ms: int, now_ms: int) -> float | None:
    left_ms = expires_at_ms - now_ms
    return left_ms / 1000 if left_ms > 0 else None
