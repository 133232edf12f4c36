"""Load shedding at the edge, sans I/O: whether to serve a new connection, decided at accept.

Checked in this order, cheapest first, for every accepted socket before a byte is read:

1. `hard_max_connections`: sockets held (served or still being shed) at or past it are closed at
   once, nothing read or written (`Shed.HARD_LIMIT`). It keeps the node below its file-descriptor
   limit, so that running out of descriptors (EMFILE) stays an accident, not the way we shed.
2. `max_connections`: served sockets at or past it get a canned `503` (`Shed.MAX_CONNECTIONS`).
3. Event-loop lag: while the loop runs later than `shed_loop_lag_s`, `503` (`Shed.LOOP_LAG`).
   The lag is the lateness of a cheap periodic sampler (`LoopLag`); between samples, the time
   since a sample was due counts too, so one long loop iteration that accepts a burst sheds the
   rest of the burst as soon as it has run late enough. The same check (`late`) is made again
   when a served connection's request arrives, before it is parsed: admitted sockets whose
   clients send their requests late would otherwise all be handshaken in one long iteration.
4. A token bucket of `accept_rate_per_s` with `accept_burst` tokens: none left, `503`
   (`Shed.RATE`).

A shed `503` carries `Retry-After: N` (whole seconds, RFC 9110), N uniform in 1..W where
W = max(`retry_after_s`, sheds in this and the previous second / `accept_rate_per_s`), at most
`MAX_RETRY_AFTER_S`: the clients shed in a storm come back spread out at about the rate the node
accepts, instead of all together after the same delay.

Ceilings left at 0 are derived from the file-descriptor limit (`derive_ceilings`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum

from core.ratelimit import TokenBucket

MAX_RETRY_AFTER_S = 60
LAG_SAMPLE_S = 0.05
"""How often the loop-lag sampler runs (and so how stale a lag reading can be)."""


class Shed(StrEnum):
    """Why a new connection was not served (the key of the `shed` counters)."""

    HARD_LIMIT = "hard_limit"
    MAX_CONNECTIONS = "max_connections"
    LOOP_LAG = "loop_lag"
    RATE = "rate"


def derive_ceilings(fd_limit: int | None, max_connections: int,
                    hard_max_connections: int) -> tuple[int, int]:
    """(soft, hard) ceilings. A 0 hard ceiling is the fd limit less a reserve for the node's own
    files (a twentieth, at least 64); a 0 soft ceiling is 90% of the hard one. `fd_limit` None
    means unlimited."""
    hard = hard_max_connections
    if hard <= 0:
        hard = 1 << 20 if fd_limit is None else max(1, fd_limit - max(64, fd_limit // 20))
    soft = max_connections if max_connections > 0 else max(1, hard * 9 // 10)
    return soft, hard


class LoopLag:
    """How late the event loop runs, from a periodic sampler's lateness.

    The I/O layer arms it (`arm(now)`), then calls `sampled(now)` each time its timer fires and
    schedules the next one `interval_s` later. Unarmed (no loop running), the lag is 0."""

    __slots__ = ("_due", "interval_s", "last_s", "peak_s", "recent_peak_s")

    def __init__(self, interval_s: float = LAG_SAMPLE_S) -> None:
        self.interval_s = interval_s
        self._due: float | None = None
        self.last_s = 0.0
        self.peak_s = 0.0
        self.recent_peak_s = 0.0  # since the last `take_recent_peak`

    def arm(self, now: float) -> None:
        self._due = now + self.interval_s

    def disarm(self) -> None:
        self._due = None

    def sampled(self, now: float) -> float:
        """Record one sample (the timer fired at `now`); returns its lag."""
        lag = 0.0 if self._due is None else max(0.0, now - self._due)
        self.last_s = lag
        self.peak_s = max(self.peak_s, lag)
        self.recent_peak_s = max(self.recent_peak_s, lag)
        self._due = now + self.interval_s
        return lag

    def take_recent_peak(self, now: float) -> float:
        """The worst lag since the previous call (the current one included), for a gauge read
        once per interval; starts the next interval."""
        peak = max(self.recent_peak_s, self.current(now))
        self.recent_peak_s = 0.0
        return peak

    def current(self, now: float) -> float:
        """The last sample's lag, or longer if the next sample is overdue by more than that."""
        if self._due is None:
            return 0.0
        return max(self.last_s, now - self._due)


@dataclass(frozen=True, slots=True)
class Limits:
    """The shedding settings, resolved (ceilings derived, lag in seconds)."""

    max_connections: int
    hard_max_connections: int
    accept_rate_per_s: float
    accept_burst: int
    shed_loop_lag_s: float  # 0: never shed for lag
    retry_after_s: int


class Admission:
    """The per-node policy (module docstring). The caller counts sockets: `served` are those it
    serves (any state, until closed), `shedding` those it is still shedding (lingering 503s)."""

    __slots__ = ("_bucket", "_prev_sheds", "_rng", "_second", "_sheds", "lag", "limits")

    def __init__(self, limits: Limits, *, now: float, lag: LoopLag | None = None,
                 rng: random.Random | None = None) -> None:
        self.limits = limits
        self.lag = lag or LoopLag()
        self._bucket = TokenBucket(limits.accept_rate_per_s, limits.accept_burst, now=now)
        self._rng = rng or random.Random()
        self._second = int(now)
        self._sheds = 0
        self._prev_sheds = 0

    def decide(self, now: float, *, served: int, shedding: int) -> Shed | None:
        """None to serve the new connection, else why to shed it."""
        limits = self.limits
        if served + shedding >= limits.hard_max_connections:
            reason = Shed.HARD_LIMIT
        elif served >= limits.max_connections:
            reason = Shed.MAX_CONNECTIONS
        elif limits.shed_loop_lag_s > 0 and self.lag.current(now) > limits.shed_loop_lag_s:
            reason = Shed.LOOP_LAG
        elif not self._bucket.take(now):
            reason = Shed.RATE
        else:
            return None
        self._count_shed(now)
        return reason

    def late(self, now: float) -> bool:
        """Whether the loop runs too late to take on a handshake now (counted as a shed)."""
        threshold = self.limits.shed_loop_lag_s
        if threshold <= 0 or self.lag.current(now) <= threshold:
            return False
        self._count_shed(now)
        return True

    def retry_after_s(self, now: float) -> int:
        """A jittered `Retry-After` for a shed request, in whole seconds (>= 1)."""
        self._roll(now)
        window = self.limits.retry_after_s
        rate = self.limits.accept_rate_per_s
        if rate > 0:
            window = max(window, math.ceil((self._sheds + self._prev_sheds) / rate))
        window = max(1, min(MAX_RETRY_AFTER_S, window))
        return 1 + int(self._rng.random() * window)

    def _count_shed(self, now: float) -> None:
        self._roll(now)
        self._sheds += 1

    def _roll(self, now: float) -> None:
        second = int(now)
        if second != self._second:
            self._prev_sheds = self._sheds if second == self._second + 1 else 0
            self._sheds = 0
            self._second = second
