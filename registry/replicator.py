"""The replicator: applies one peer region's change stream to this region's registry.

A region runs a `Replicator` per peer region, in any long-lived process (a lease makes one of
them the active one, see below). It reads the peer's change stream (`registry.changes`) with
`XREAD BLOCK` in batches, applies each entry to this region's own registry with
`apply_change` (last writer wins by `(version, node_id)`, TTL carried over, compare-and-delete
unregisters; see `registry.replicated`), and only then persists its position. What it keeps
(its position, its lease's keys and scripts, its counters) is spelled in
`registry.replicator_state`.

Contracts:

- **Order and idempotency.** Entries are applied as if one at a time, in stream order: an entry
  waits for every earlier entry of its batch that touches one of its records (a client or a
  node); entries with no record in common are applied concurrently (`apply_concurrency`), since
  their order cannot matter. Applying an entry twice changes nothing, so a replicator that
  restarts, or fails mid-batch, replays from its last persisted position without harm.
- **Position.** The id and sequence number of the last entry applied are stored in THIS
  region's Redis at `{prefix}:repl:pos:{peer}` after each batch, so they live and die with the
  records they describe. A new replicator resumes from there and skips nothing. With no stored
  position (a new region, or this region's Redis restarted empty and lost its records with its
  position) it starts from the beginning of the peer's stream: everything the peer still
  retains is applied again, which recreates this region's copy of the peer's live records.
  A position that disappears while the replicator runs (this region's Redis restarted) is
  noticed when it next persists or revalidates (every `revalidate_s`), with the same result.
- **Trimmed past our position (resync).** If entries we had not applied were trimmed (we were
  away too long), the next entry's sequence number shows the gap: the replicator logs it,
  counts it (`stats.resyncs`) and goes on from the oldest entry left. What was lost comes again
  within one registry TTL (edges refresh each third of it, and a replicated refresh carries full
  records, recreating what we lack); records whose unregister we lost expire here. Device
  records of clients that did not reconnect meanwhile are not recovered until they do.
- **Peer reset.** A sequence number lower than expected, or a peer stream that ends before our
  position: the peer's stream was recreated (its Redis restarted empty), and the replicator
  starts over from its beginning (`stats.peer_resets`).
- **Partitions and outages.** When the peer (or this region's Redis) is unreachable, `run()`
  retries with capped exponential backoff and never raises; it logs once when an outage starts
  and once when it ends, never per attempt (`core.outage.OutageLog`). Local writes are
  unaffected meanwhile (they never wait for a peer); when the link heals, the replicator
  catches up from its position.
- **No loops.** Changes go to the wrapped registry, never to this region's stream; entries
  whose origin is this region are skipped.
- **Arrivals.** `on_arrivals` gets each batch's registrations (clients that connected in the
  peer region) after the batch is applied, before its position is persisted: at least once
  (if it raises, the batch is applied again). `router.handoff` sends them what waits here.
- **One active replicator per peer.** `run()` applies only while it holds a lease in this
  region's Redis (`{prefix}:repl:lease:{peer}`, `lease_s`, renewed every third of it): the
  others stand by and take over within `lease_s` and a third after it dies (a third of
  `lease_s` after a clean `stop()`). A paused leader that resumes after losing its lease may
  apply one more batch beside the new one: harmless, applying is idempotent. `step()` ignores
  the lease (for tests and tools).

Run Redis with `noeviction` or a `volatile-*` policy (the position key has no TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.clock import ClockMs, wall_ms
from core.errors import Unavailable
from core.outage import OutageLog
from registry.base import Registration
from registry.changes import (
    Change,
    ChangeFormatError,
    Registered,
    decode_entry,
    entry_seq,
    stream_key,
)
from registry.replicated import ReplicaTarget, ReplicatedRegistry, apply_change, records_of
from registry.replicator_state import (
    HOLD_LUA,
    RELEASE_LUA,
    START,
    Position,
    ReplicatorStats,
    entries_of,
    id_key,
    lease_key_of,
    position_key_of,
)

log = logging.getLogger(__name__)

Arrivals = Callable[[str, Sequence[Registration]], Awaitable[None]]
"""`on_arrivals(peer_region, registrations)`: clients that connected in `peer_region`."""

DEFAULT_BATCH = 500
DEFAULT_BLOCK_MS = 100
DEFAULT_APPLY_CONCURRENCY = 16
_TRANSIENT = (Unavailable, RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
"""Failures logged without a traceback: outages (the registry's, translated, and the raw ones
of the replicator's own Redis calls)."""


class Replicator:
    """Applies `peer_region`'s change stream (on `peer_redis`) to `local`, this region's own
    registry, persisting its position in `local_redis` (this region's Redis).

    `local` must be the wrapped registry, not the `ReplicatedRegistry` (TypeError otherwise).
    `region` names this region, to skip entries it wrote itself. `prefix` is the fleet's key
    prefix, the same in every region: the peer's stream is `{prefix}:changes`, and the position
    and lease keys in this region's Redis are derived from it unless `position_key` and
    `lease_key` are given. `batch` entries at most are
    read per step, waiting up to `block_ms` for the first. Backoff after a failure starts at
    `backoff_initial_s`, doubles, and is capped at `backoff_max_s`.
    """

    def __init__(
        self,
        local: ReplicaTarget,
        local_redis: Any,
        peer_region: str,
        peer_redis: Any,
        *,
        region: str = "",
        prefix: str = "zp",
        position_key: str | None = None,
        lease_key: str | None = None,
        batch: int = DEFAULT_BATCH,
        apply_concurrency: int = DEFAULT_APPLY_CONCURRENCY,
        block_ms: int = DEFAULT_BLOCK_MS,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        revalidate_s: float = 5.0,
        lease_s: float = 10.0,
        wall_ms: ClockMs = wall_ms,
        monotonic: Callable[[], float] = time.monotonic,
        on_arrivals: Arrivals | None = None,
    ) -> None:
        if isinstance(local, ReplicatedRegistry):
            raise TypeError("apply to the wrapped registry (ReplicatedRegistry.local), "
                            "or every applied change would be appended again")
        if min(block_ms, batch, apply_concurrency) < 1:
            raise ValueError("block_ms, batch and apply_concurrency must be at least 1")
        self._local = local
        self._local_redis = local_redis
        self.peer_region = peer_region
        self._peer = peer_redis
        self._region = region
        self._stream = stream_key(prefix)
        self._pos_key = position_key or position_key_of(prefix, peer_region)
        self._batch = batch
        self._apply_concurrency = apply_concurrency
        self._block_ms = block_ms
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._revalidate_s = revalidate_s
        self._lease_key = lease_key or lease_key_of(prefix, peer_region)
        self._lease_ms = max(1, round(lease_s * 1000))
        self._lease_token = uuid.uuid4().hex
        self._hold = local_redis.register_script(HOLD_LUA)
        self._release = local_redis.register_script(RELEASE_LUA)
        self.leader = False
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        self._on_arrivals = on_arrivals
        self.stats = ReplicatorStats()
        self._pos: Position | None = None  # None: (re)load the persisted one first
        self._pos_stored = False  # the position key exists in local Redis, as far as we know
        self._phase = "starting"
        self._outage = OutageLog(log)
        self._outage_since = 0.0  # when the outage under way began (monotonic clock)
        self._stop = asyncio.Event()

    @property
    def position(self) -> Position | None:
        """The last entry applied, or None until the persisted position is loaded."""
        return self._pos

    # --- one batch ------------------------------------------------------------------------------

    async def step(self) -> int:
        """Read one batch (waiting up to `block_ms` for it), apply it, persist the position.

        Returns how many entries were read (0 if none came). Raises what the two Redis clients
        raise (redis-py's errors) or the local registry raises (`Unavailable` for an outage);
        after an error the in-memory position is dropped, so the next step resumes from the
        persisted one and replays the failed batch (harmless).
        """
        try:
            return await self._step()
        except BaseException:
            self._pos = None
            raise

    async def _step(self) -> int:
        if self._pos is None:
            self._pos = await self._load_position()
        self._phase = f"reading {self.peer_region}'s stream"
        reply = await self._peer.xread({self._stream: self._pos.entry_id},
                                       count=self._batch, block=self._block_ms)
        entries = entries_of(reply)
        if not entries:
            return 0
        changes, last = self._read(entries)
        self._phase = "applying changes locally"
        await self._apply(changes)
        arrived = [reg for change in changes if isinstance(change, Registered)
                   for reg in change.registrations]
        if arrived and self._on_arrivals is not None:
            self._phase = "handing over what waits for arrivals"
            await self._on_arrivals(self.peer_region, arrived)
        self._pos = last
        await self._persist()
        return len(entries)

    def _read(self, entries: Sequence[tuple[Any, Mapping[Any, Any]]],
              ) -> tuple[list[Change], Position]:
        """The changes to apply among `entries`, and the position after them; checks that
        sequence numbers follow on (a gap: resync; going back: the peer's stream was recreated,
        so what follows is read again from its start)."""
        assert self._pos is not None
        pos, changes = self._pos, list[Change]()
        for entry_id, fields in entries:
            seq = entry_seq(fields)
            if seq is None:
                seq = pos.seq + 1
            elif seq <= pos.seq:
                self._peer_reset(f"sequence went back from {pos.seq} to {seq}")
                return changes, START
            elif seq > pos.seq + 1:
                self._resync(seq - pos.seq - 1)
            self.stats.entries += 1
            pos = Position(_text(entry_id), seq)
            try:
                entry = decode_entry(entry_id, fields)
            except ChangeFormatError as exc:
                self._malformed(exc)
                continue
            if entry.origin == self._region:
                self.stats.own += 1
            else:
                changes.append(entry.change)
        return changes, pos

    async def _apply(self, changes: list[Change]) -> None:
        """Apply `changes` as if one after the other: a change waits for the earlier ones that
        touch one of its records; the others run at once, up to `apply_concurrency`."""
        if len(changes) == 1:
            self._count(await apply_change(changes[0], self._local, self._wall_ms()))
            return
        limit = asyncio.Semaphore(self._apply_concurrency)
        last: dict[str, asyncio.Task[bool]] = {}
        try:
            async with asyncio.TaskGroup() as group:
                for change in changes:
                    records = records_of(change)
                    after = {last[r] for r in records if r in last}
                    task = group.create_task(self._apply_after(after, change, limit))
                    last.update(dict.fromkeys(records, task))
        except ExceptionGroup as failed:  # report the first cause, as a plain step would
            raise failed.exceptions[0] from None

    async def _apply_after(self, after: set[asyncio.Task[bool]], change: Change,
                           limit: asyncio.Semaphore) -> bool:
        for task in after:
            await task
        async with limit:
            applied = await apply_change(change, self._local, self._wall_ms())
        self._count(applied)
        return applied

    def _count(self, applied: bool) -> None:
        if applied:
            self.stats.applied += 1
        else:
            self.stats.expired += 1

    # --- position -------------------------------------------------------------------------------

    async def _load_position(self) -> Position:
        self._phase = "loading the position"
        raw = await self._local_redis.get(self._pos_key)
        pos = Position.decode(raw) if raw is not None else None
        if pos is None:
            if self._pos_stored:
                self._local_reset()
            self._pos_stored = False
            return START
        self._pos_stored = True
        self._phase = f"checking {self.peer_region}'s stream"
        last_id = await self._peer_last_id()
        if last_id is not None and id_key(last_id) < id_key(pos.entry_id):
            self._peer_reset(f"its stream ends at {last_id}, before our position {pos.entry_id}")
            return START
        return pos

    async def _peer_last_id(self) -> str | None:
        try:
            info = await self._peer.xinfo_stream(self._stream)
        except ResponseError:  # no such key: nothing written since the peer's Redis started
            return None
        last = info.get("last-generated-id", info.get(b"last-generated-id"))
        return None if last is None else _text(last)

    async def _persist(self) -> None:
        assert self._pos is not None
        self._phase = "persisting the position"
        if not self._pos_stored:
            await self._local_redis.set(self._pos_key, self._pos.encode())
            self._pos_stored = True
        elif not await self._local_redis.set(self._pos_key, self._pos.encode(), xx=True):
            self._local_reset()
            self._pos_stored = False
            self._pos = START

    # --- the loop -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Apply the peer's stream until `stop()`, while holding the lease; never raises
        (cancellation aside).

        Failures are retried with capped exponential backoff (with jitter), logged once per
        outage. The position is revalidated every `revalidate_s` (this region's Redis may have
        restarted under us). On the way out the lease is released, if this region's Redis
        answers.
        """
        backoff_s = self._backoff_initial_s
        revalidate_at = renew_at = self._monotonic()
        renew_s = self._lease_ms / 3000
        try:
            while not self._stop.is_set():
                now = self._monotonic()
                if now >= revalidate_at:
                    self._pos = None
                    revalidate_at = now + self._revalidate_s
                try:
                    if now >= renew_at:
                        await self._take_lease()
                        renew_at = now + renew_s
                    if self.leader:
                        await self.step()
                except Exception as exc:
                    self._failed(exc)
                    renew_at = self._monotonic()  # the lease may have lapsed meanwhile
                    await self._sleep(backoff_s * random.uniform(0.5, 1.0))
                    backoff_s = min(backoff_s * 2, self._backoff_max_s)
                    continue
                self._recovered()
                backoff_s = self._backoff_initial_s
                if not self.leader:
                    await self._sleep(renew_s)
        finally:
            self._stop.clear()
            await self._give_up_lease()

    async def _take_lease(self) -> None:
        self._phase = "taking the lease"
        held = bool(await self._hold(keys=[self._lease_key],
                                     args=[self._lease_token, self._lease_ms]))
        if held and not self.leader:
            self.stats.leases += 1
            self._pos = None  # another replicator may have moved it on: load it
            log.info("replication from %s: applying it in this process", self.peer_region)
        elif not held and self.leader:
            log.warning("replication from %s: lost the lease; standing by", self.peer_region)
        self.leader = held

    async def _give_up_lease(self) -> None:
        if not self.leader:
            return
        self.leader = False
        with contextlib.suppress(Exception):  # down: the lease lapses by itself
            async with asyncio.timeout(1.0):
                await self._release(keys=[self._lease_key], args=[self._lease_token])

    def stop(self) -> None:
        """Make `run()` return after the batch in hand (within about `block_ms`)."""
        self._stop.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    # --- what we log and count ------------------------------------------------------------------

    def _failed(self, exc: Exception) -> None:
        if self._outage.failed("replication from %s paused while %s: %r; retrying with backoff "
                               "up to %.1f s (logged once per outage)", self.peer_region,
                               self._phase, exc, self._backoff_max_s,
                               exc_info=None if isinstance(exc, _TRANSIENT) else exc):
            self._outage_since = self._monotonic()
            self.stats.outages += 1

    def _recovered(self) -> None:
        self._outage.recovered("replication from %s resumed after %.1f s", self.peer_region,
                               self._monotonic() - self._outage_since)

    def _resync(self, missed: int) -> None:
        self.stats.resyncs += 1
        self.stats.missed += missed
        log.warning("replication from %s: %d changes were trimmed before we applied them; "
                    "continuing from the oldest retained one (records converge through "
                    "refreshes within one registry TTL)", self.peer_region, missed)

    def _peer_reset(self, why: str) -> None:
        self.stats.peer_resets += 1
        log.warning("replication from %s: its change stream was recreated (%s); applying it "
                    "again from the beginning", self.peer_region, why)
        self._pos = START

    def _local_reset(self) -> None:
        self.stats.local_resets += 1
        log.warning("replication from %s: our position is gone (this region's Redis restarted "
                    "empty?); applying %s's stream again from the beginning",
                    self.peer_region, self.peer_region)

    def _malformed(self, exc: ChangeFormatError) -> None:
        self.stats.malformed += 1
        if self.stats.malformed & (self.stats.malformed - 1) == 0:  # 1st, 2nd, 4th, 8th...
            log.error("replication from %s: skipped %d unreadable entries; last: %s",
                      self.peer_region, self.stats.malformed, exc)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
