"""A token bucket, sans I/O: the edge's accept rate (`zuulpush.edge.shedding`), the demo page's
token and push rates (`router.pages.demo`), each API key's push rate (`KeyRates`,
`router.api.app`). The clock is passed in, in seconds."""

from __future__ import annotations


class TokenBucket:
    """`burst` tokens, refilled at `rate_per_s`; `take(now)` spends one if there is one (or
    `cost` of them, all or none), and `wait_s(now)` says how long until there are. A rate of 0
    means unlimited. A clock that steps back refills nothing. A cost over `burst` is never
    met."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, *, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._stamp = now

    def take(self, now: float, cost: int = 1) -> bool:
        if self.rate_per_s <= 0:
            return True
        self._refill(now)
        if self._tokens >= cost - 1e-9:  # whole tokens, to within float rounding
            self._tokens -= cost
            return True
        return False

    def wait_s(self, now: float, cost: int = 1) -> float:
        """Seconds until `take(cost=cost)` would succeed (0.0 if it would now)."""
        if self.rate_per_s <= 0:
            return 0.0
        self._refill(now)
        return max(0.0, (cost - 1e-9 - self._tokens) / self.rate_per_s)

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(float(self.burst),
                               self._tokens + (now - self._stamp) * self.rate_per_s)
            self._stamp = now


class KeyRates:
    """One `TokenBucket` per API key, by the key's position in the configured list (the key
    itself is never kept here): `charge(key, cost, now)` spends `cost` tokens of that key's
    bucket, or returns the seconds to wait before it could (nothing spent); `wait_s` only
    looks. `rate_per_s` 0: unlimited, and no bucket is made. Keys are few (the configured
    ones), so buckets are never dropped."""

    __slots__ = ("_buckets", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[int, TokenBucket] = {}

    def charge(self, key: int, cost: int, now: float) -> float:
        """0.0 when `cost` tokens were spent, else how long until they could be (> 0)."""
        if self.rate_per_s <= 0:
            return 0.0
        bucket = self._bucket(key, now)
        if bucket.take(now, cost):
            return 0.0
        return max(bucket.wait_s(now, cost), 1e-3)

    def wait_s(self, key: int, cost: int, now: float) -> float:
        """How long until `cost` tokens could be spent; 0.0: now. Spends nothing."""
        if self.rate_per_s <= 0:
            return 0.0
        wait_s = self._bucket(key, now).wait_s(now, cost)
        return max(wait_s, 1e-3) if wait_s > 0 else 0.0

    def _bucket(self, key: int, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst, now=now)
        return bucket
