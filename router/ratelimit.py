"""A token bucket, sans I/O: the edge's accept rate (`zuulpush.edge.shedding`), the demo page's
token and push rates (`router.demo`). The clock is passed in, in seconds."""

from __future__ import annotations


class TokenBucket:
    """`burst` tokens, refilled at `rate_per_s`; `take(now)` spends one if there is one, and
    `wait_s(now)` says how long until there is. A rate of 0 means unlimited. A clock that steps
    back refills nothing."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, *, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._stamp = now

    def take(self, now: float) -> bool:
        if self.rate_per_s <= 0:
            return True
        self._refill(now)
        if self._tokens >= 1.0 - 1e-9:  # a whole token, to within float rounding
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self, now: float) -> float:
        """Seconds until `take` would succeed (0.0 if it would now)."""
        if self.rate_per_s <= 0:
            return 0.0
        self._refill(now)
        return max(0.0, (1.0 - 1e-9 - self._tokens) / self.rate_per_s)

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(float(self.burst),
                               self._tokens + (now - self._stamp) * self.rate_per_s)
            self._stamp = now
