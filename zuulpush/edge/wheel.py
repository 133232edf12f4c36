"""A timer wheel: visit every member once per period, spread evenly over the period.

Used for heartbeats (and later connection lifetimes): instead of one timer handle per connection,
members sit in one of `slots` buckets and each tick visits one bucket. A member added now is first
visited about one period later. Sans I/O: the caller passes `now` and does the scheduling.

A bucket is a list (8 bytes a member, where a set takes 30-60: at 400,000 idle connections that
is most of what the wheel costs). A discarded member is only noted in its bucket's `gone` set and
dropped from the list at the bucket's next visit, so what discards cost is bounded by the churn
of one period.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class TimerWheel(Generic[T]):
    """Buckets of members; `due(now)` yields the members of every bucket whose tick has come."""

    __slots__ = ("_buckets", "_count", "_cursor", "_gone", "_next_tick", "tick_s")

    def __init__(self, period_s: float, *, now: float, min_tick_s: float = 0.05,
                 max_slots: int = 256) -> None:
        slots = max(1, min(max_slots, int(period_s / min_tick_s)))
        self.tick_s = period_s / slots
        self._buckets: list[list[T]] = [[] for _ in range(slots)]
        self._gone: list[set[T]] = [set() for _ in range(slots)]
        self._count = 0
        self._cursor = 0
        self._next_tick = now + self.tick_s

    def add(self, member: T) -> int:
        """Place `member` in the bucket visited last; returns the slot to pass to `discard`.
        A member must be in one bucket at most: discard it before adding it again."""
        slot = (self._cursor - 1) % len(self._buckets)
        self._count += 1
        gone = self._gone[slot]
        if member in gone:  # discarded from this very bucket and not dropped yet: keep it
            gone.discard(member)
        else:
            self._buckets[slot].append(member)
        return slot

    def discard(self, member: T, slot: int) -> None:
        """Remove `member`, added at `slot` (idempotent)."""
        gone = self._gone[slot]
        if member not in gone:
            gone.add(member)
            self._count -= 1

    def due(self, now: float) -> Iterator[T]:
        """Members of each bucket whose tick is at or before `now`, bucket by bucket. Members may
        be discarded while this runs; a member discarded before its turn is not yielded."""
        while self._next_tick <= now:
            slot = self._cursor
            self._cursor = (self._cursor + 1) % len(self._buckets)
            self._next_tick += self.tick_s
            bucket, gone = self._buckets[slot], self._gone[slot]
            if gone:
                bucket[:] = [member for member in bucket if member not in gone]
                gone.clear()
            for member in tuple(bucket):
                if member not in gone:
                    yield member

    def __len__(self) -> int:
        return self._count

    def members(self) -> Iterator[T]:
        """Every member, in no particular order (a snapshot: safe to discard meanwhile)."""
        for bucket, gone in zip(self._buckets, self._gone, strict=True):
            yield from [member for member in bucket if member not in gone]
