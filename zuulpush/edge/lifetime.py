"""Connection lifetimes, sans I/O: when to close a connection so that load rebalances.

Each device connection lives a random time L, uniform in [min_s, max_s], and is then closed
with a reconnect hint. Closes are spread, never in lockstep: connections accepted together in a
storm close at independent, uniformly spread moments of the window.

No timer and no deadline is kept per connection. The heartbeat wheel visits every connection
once per interval I (the first visit one interval after accept); the connection keeps only how
many visits it has had, a small int (n). At accept (n = 0) and at each visit, `Lifetime.due_in`
decides, from fresh random numbers, whether L ends within the coming interval, with the
probability that it does given that it did not end before: P(L < (n+1)I | L >= nI). If so it
returns the moment within the interval, drawn from L's distribution there, and the caller closes
the connection then (from a small heap holding only the connections in their last interval).
Drawn this way, step by step, L is exactly uniform in [min_s, max_s], as if drawn at accept.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Lifetimes uniform in [min_s, max_s], checked every `interval_s`. max_s 0: no lifetime."""

    min_s: float
    max_s: float
    interval_s: float

    def __post_init__(self) -> None:
        if not 0 <= self.min_s <= self.max_s:
            raise ValueError("lifetime_min_s must be at least 0 and at most lifetime_max_s")
        if self.interval_s <= 0:
            raise ValueError("the lifetime check interval must be positive")

    @property
    def enabled(self) -> bool:
        return self.max_s > 0

    def due_in(self, visits: int, r1: float, r2: float) -> float | None:
        """At a connection's visit number `visits` (0 at accept), with `r1`, `r2` uniform in
        [0, 1): None if it lives through the next interval, else the delay in [0, interval_s)
        after which to close it."""
        if not self.enabled:
            return None
        start = visits * self.interval_s  # the connection's age now
        end = start + self.interval_s
        if self.min_s >= end:
            return None  # too young to end in this interval
        if self.max_s <= start:
            return 0.0  # past the window (a late visit): close now
        low, high = max(start, self.min_s), min(end, self.max_s)
        ends_here = 1.0 if self.max_s <= low else (high - low) / (self.max_s - low)
        if r1 >= ends_here:
            return None
        return low + r2 * (high - low) - start
