"""The router's seams in one process's memory: the embedded default of `zuulpush serve`.

Nothing here is shared between processes, and nothing survives a restart. Every wait is on an
`asyncio.Event` (no polling); every time comparison uses an injected clock, so tests advance time
by hand. Memory is bounded: dedup keys expire, each node's channel and each client's inbox are
capped, and expired inbox entries and empty inboxes are pruned.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from core.clock import ClockMs, wall_ms
from core.errors import Unavailable
from router.base import Broadcast, Delivery, Message, Priority, PutResult, Taken
from router.stores.memory_box import SortedBox
from router.stores.memory_inbox import (
    MemoryInbox as MemoryInbox,  # re-exported: one module of memory seams
)

DEFAULT_WEIGHTS: Mapping[Priority, int] = {Priority.HIGH: 8, Priority.NORMAL: 3, Priority.LOW: 1}
"""Messages served per priority in one round while all priorities have messages waiting."""


async def _idle(timeout_s: float) -> None:
    """What a wait on a closed seam does: nothing can arrive, so sit out the timeout (a caller
    that loops on take/receive must not spin)."""
    if timeout_s > 0:
        await asyncio.sleep(timeout_s)


async def _wait_until(
    ready: asyncio.Event, condition: Callable[[], bool], timeout_s: float
) -> bool:
    """Wait on `ready` until `condition()` holds; False if `timeout_s` passes first.

    Whoever makes the condition true sets `ready`; a waiter that wakes to find it false again
    (another waiter got there first) clears it and waits for the next set.
    """
    if condition():
        return True
    if timeout_s <= 0:
        return False
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():
                ready.clear()
                await ready.wait()
    except TimeoutError:
        return False
    return True


class MemoryQueue:
    """`MessageQueue` in memory: one FIFO per priority, served in weighted rounds.

    A round serves up to `weights[p]` messages of each priority `p`, higher priorities first; the
    round's credit carries across `take` calls, so even one message per call never starves a lower
    priority. A taken message is handled as far as this queue is concerned: receipts are message
    ids and `done` does nothing. `max_depth`, when set, bounds the messages waiting; past it `put`
    raises `Unavailable` (503, retry later) rather than grow without limit.

    After `close`, `put` raises `Unavailable`, waiting takes return [] at once and later ones
    return [] after their timeout.
    """

    def __init__(
        self,
        dedup_window_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        weights: Mapping[Priority, int] = DEFAULT_WEIGHTS,
        max_depth: int | None = None,
    ) -> None:
        if any(weights.get(p, 0) < 1 for p in Priority):
            raise ValueError("every priority needs a weight of at least 1")
        self._window_s = dedup_window_s
        self._clock = clock
        self._weights = {p: weights[p] for p in Priority}
        self._credits = dict(self._weights)
        self._max_depth = max_depth
        self._fifos: dict[Priority, deque[Message]] = {p: deque() for p in Priority}
        self._put_at: dict[Priority, deque[float]] = {p: deque() for p in Priority}  # clock()
        # dedup key -> (expiry, id of the message put under it); the deque holds the keys with
        # their expiries in expiry order, for sweeping
        self._seen: dict[str, tuple[float, str]] = {}
        self._expiries: deque[tuple[float, str]] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    async def put(self, message: Message) -> PutResult:
        if self._closed:
            raise Unavailable("message queue is closed")
        key = message.dedup_key
        original = None if key is None else self._seen_recently(key)
        if original is not None:
            return PutResult(original, duplicate=True)
        if self._max_depth is not None and self._waiting() >= self._max_depth:
            raise Unavailable("message queue is full", retry_after_s=1.0)
        if key is not None:
            self._remember(key, message.id)
        self._fifos[message.priority].append(message)
        self._put_at[message.priority].append(self._clock())
        self._ready.set()
        return PutResult(message.id)

    async def put_many(self, messages: Sequence[Message]) -> list[PutResult]:
        results: list[PutResult] = []
        for message in messages:
            try:
                results.append(await self.put(message))
            except Unavailable:
                if not results:
                    raise
                break
        return results

    async def take(self, consumer: str, max_n: int, timeout_s: float,
                   done: Sequence[str] = ()) -> list[Taken]:
        if done:
            await self.done(consumer, done)
        if self._closed:
            await _idle(timeout_s)
            return []
        if max_n <= 0 or not await _wait_until(self._ready, self._has_work, timeout_s):
            return []
        if self._closed:  # closed while we waited
            return []
        return [Taken(m, m.id) for m in self._pick(max_n)]

    async def done(self, consumer: str, receipts: Sequence[str]) -> None:
        return None

    async def depth(self) -> dict[Priority, int]:
        return {p: len(fifo) for p, fifo in self._fifos.items()}

    async def lag(self) -> dict[Priority, float]:
        now = self._clock()
        return {p: max(0.0, now - put_at[0]) if put_at else 0.0
                for p, put_at in self._put_at.items()}

    async def close(self) -> None:
        self._closed = True
        self._ready.set()

    def _has_work(self) -> bool:
        return self._closed or self._waiting() > 0

    def _waiting(self) -> int:
        return sum(len(fifo) for fifo in self._fifos.values())

    def _pick(self, max_n: int) -> list[Message]:
        picked: list[Message] = []
        while len(picked) < max_n:
            priority = self._next_priority()
            if priority is None:
                break
            self._credits[priority] -= 1
            picked.append(self._fifos[priority].popleft())
            self._put_at[priority].popleft()
        return picked

    def _next_priority(self) -> Priority | None:
        """The highest priority with messages and credit left in this round; a new round starts
        when every priority with messages has spent its credit."""
        for _ in range(2):
            for priority in Priority:
                if self._fifos[priority] and self._credits[priority] > 0:
                    return priority
            if not self._waiting():
                return None
            self._credits = dict(self._weights)
        return None

    def _seen_recently(self, key: str) -> str | None:
        """The id of the message put under `key` within the window, if any."""
        now = self._clock()
        # Expiries are appended in clock order, so the expired ones are all at the left.
        while self._expiries and self._expiries[0][0] <= now:
            expiry, old = self._expiries.popleft()
            if self._seen.get(old, (None,))[0] == expiry:
                del self._seen[old]
        seen = self._seen.get(key)
        return None if seen is None else seen[1]

    def _remember(self, key: str, message_id: str) -> None:
        expiry = self._clock() + self._window_s
        self._seen[key] = (expiry, message_id)
        self._expiries.append((expiry, key))


class _Mailbox:
    """One node's undelivered batches (oldest dropped past the cap) and its wake-up event."""

    __slots__ = ("dropped", "pending", "ready")

    def __init__(self, max_pending: int) -> None:
        self.pending: deque[Delivery] = deque(maxlen=max_pending)
        self.ready = asyncio.Event()
        self.dropped = 0


class MemoryNodeChannel:
    """`NodeChannel` in memory: one bounded mailbox per node id.

    A node that falls more than `max_pending` deliveries behind loses the oldest ones; they are in
    the clients' inboxes, so a device gets them on its next resume or pull. After `close`,
    publishes are dropped, waiting receives return [] at once and later ones after their timeout.
    """

    def __init__(self, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._max_pending = max_pending
        self._mailboxes: dict[str, _Mailbox] = {}
        self._closed = False

    async def publish(self, node_id: str, deliveries: Sequence[Delivery]) -> None:
        if self._closed or not deliveries:
            return
        box = self._mailbox(node_id)
        box.dropped += max(0, len(box.pending) + len(deliveries) - self._max_pending)
        box.pending.extend(deliveries)
        box.ready.set()

    async def receive(self, node_id: str, max_n: int, timeout_s: float) -> list[Delivery]:
        if self._closed:
            await _idle(timeout_s)
            return []
        if max_n <= 0:
            return []
        box = self._mailbox(node_id)
        ready = await _wait_until(box.ready, lambda: self._closed or bool(box.pending), timeout_s)
        if not ready or self._closed:
            return []
        return [box.pending.popleft() for _ in range(min(max_n, len(box.pending)))]

    async def close(self) -> None:
        self._closed = True
        for box in self._mailboxes.values():
            box.ready.set()

    def pending(self, node_id: str) -> int:
        """Deliveries waiting for `node_id`."""
        box = self._mailboxes.get(node_id)
        return 0 if box is None else len(box.pending)

    def dropped(self, node_id: str) -> int:
        """Deliveries `node_id` lost by falling more than `max_pending` behind."""
        box = self._mailboxes.get(node_id)
        return 0 if box is None else box.dropped

    def _mailbox(self, node_id: str) -> _Mailbox:
        box = self._mailboxes.get(node_id)
        if box is None:
            box = self._mailboxes[node_id] = _Mailbox(self._max_pending)
        return box


class MemoryBroadcastLog:
    """`BroadcastLog` in memory: broadcasts sorted by id, at most `max_entries`, each dropped
    once its `expires_at_ms` has passed on the `clock_ms` wall clock (reads prune what they pass;
    the cap bounds the rest)."""

    def __init__(self, max_entries: int, *, clock_ms: ClockMs = wall_ms) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._cap = max_entries
        self._clock_ms = clock_ms
        self._box = SortedBox[Broadcast]()

    async def add(self, broadcast: Broadcast) -> None:
        if self._clock_ms() < broadcast.expires_at_ms:
            self._box.add(broadcast, self._cap)

    async def after(self, last_id: str, limit: int) -> list[Broadcast]:
        if limit <= 0:
            return []
        return self._box.after(last_id, limit, self._clock_ms())

    async def close(self) -> None:
        self._box = SortedBox[Broadcast]()

    def __len__(self) -> int:
        return len(self._box.ids)
