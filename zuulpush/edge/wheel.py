"""A timer wheel: visit every member once per period, spread evenly over the period.

Used for heartbeats (and later connection lifetimes): instead of one timer handle per connection,
members sit in one of `slots` buckets and each tick visits one bucket. A member added now is first
visited about one period later. Sans I/O: the caller passes `now` and does the scheduling.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class TimerWheel(Generic[T]):
    """Buckets of members; `due(now)` yields the members of every bucket whose tick has come."""

    __slots__ = ("_buckets", "_cursor", "_next_tick", "tick_s")

    def __init__(self, period_s: float, *, now: float, min_tick_s: float = 0.05,
                 max_slots: int = 256) -> None:
        slots = max(1, min(max_slots, int(period_s / min_tick_s)))
        self.tick_s = period_s / slots
        self._buckets: list[set[T]] = [set() for _ in range(slots)]
        self._cursor = 0
        self._next_tick = now + self.tick_s

    def add(self, member: T) -> int:
        """Place `member` in the bucket visited last; returns the slot to pass to `discard`."""
        slot = (self._cursor - 1) % len(self._buckets)
        self._buckets[slot].add(member)
        return slot

    def discard(self, member: T, slot: int) -> None:
        self._buckets[slot].discard(member)

    def due(self, now: float) -> Iterator[T]:
        """Members of each bucket whose tick is at or before `now`, bucket by bucket. Members may
        be discarded while this runs; a member discarded before its turn is not yielded."""
        while self._next_tick <= now:
            bucket = self._buckets[self._cursor]
            self._cursor = (self._cursor + 1) % len(self._buckets)
            self._next_tick += self.tick_s
            for member in tuple(bucket):
                if member in bucket:
                    yield member

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets)

    def members(self) -> Iterator[T]:
        """Every member, in no particular order (a snapshot: safe to discard meanwhile)."""
        for bucket in self._buckets:
            yield from tuple(bucket)
