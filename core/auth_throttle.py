"""Failed authentications per source address, sans I/O: the brute-force brake on API keys
(`router.api.app`), the dashboard's admin key (`router.api.throttle`) and the edge's admin key
(`zuulpush.edge.request`). The clock is passed in, in seconds.

How a caller uses it, per attempt: `check(source, now)` first, which raises `AuthThrottled`
(429 with `Retry-After`) while the source is over its limit, so that the credential is then
not looked at (a brute force learns nothing, right or wrong, until it may try again); then the
credential check, and `failed(source, now)` only if the credential was wrong. A success
touches nothing: correct requests never use the budget and, from a source not over its limit,
are never slowed.

Decisions:
- The limit is a leaky bucket per source: each failure adds 1 to the source's level, which
  drains at `failures_max / window_s` per second. A source may fail `failures_max` times in a
  row; then it is over its limit until one failure has drained (`window_s / failures_max`
  seconds), and a sustained brute force gets `failures_max` tries per `window_s`. After a whole
  `window_s` without failures the whole budget is back. Failures that race past the check (a
  dashboard login reads its body between check and failure) still count and lengthen the wait.
- A source is the peer address (`source_of`): an IPv4 address, or an IPv6 address's /64,
  since one host or customer commonly has a whole /64 and could otherwise try from as many
  addresses as it likes. The caller decides which address is the peer's; behind a proxy or a
  load balancer that does not pass the client's address on, every client is that one source.
- Bounded in memory: at most `max_sources` sources are remembered (10,000 by default, about
  2.5 MB); past it the source whose last failure is oldest (its level the most drained) is
  forgotten. A drained source is forgotten when next looked at. So many addresses can cost
  memory up to the cap and no more; an attacker with more than `max_sources` sources can get
  its oldest forgotten early, and still gets no more than `failures_max` tries in a row from
  each.
- `failures_max` 0: no limit (nothing is remembered).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from core.errors import AuthThrottled

MAX_SOURCES = 10_000
"""Sources one limiter remembers at most."""

_SLACK = 1e-9  # float rounding: a level of exactly failures_max - 1 is not over


def source_of(address: str | None) -> str:
    """The source an attempt is counted under: an IPv4 address as is (also when it comes as
    an IPv4-mapped IPv6 address), an IPv6 address's /64 (`2001:db8:1:2::/64`), anything else
    (a Unix socket's empty name, None) as its text."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # no IPv6 zone index
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureLimiter:
    """Failed authentications of one `role` (the name `AuthThrottled` carries), per source
    (module docstring)."""

    __slots__ = ("_levels", "_rate_per_s", "failures_max", "max_sources", "role", "window_s")

    def __init__(self, role: str, failures_max: int, window_s: float, *,
                 max_sources: int = MAX_SOURCES) -> None:
        if failures_max < 0 or window_s <= 0 or max_sources < 1:
            raise ValueError(f"{role}: failures_max must not be negative, window_s and "
                             "max_sources must be positive")
        self.role = role
        self.failures_max = failures_max
        self.window_s = window_s
        self.max_sources = max_sources
        self._rate_per_s = failures_max / window_s
        # source -> (level at stamp, stamp), the stalest last failure first
        self._levels: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        """Sources remembered now."""
        return len(self._levels)

    def check(self, source: str, now: float) -> None:
        """Raise `AuthThrottled` if `source` is over its limit at `now`; else nothing."""
        wait_s = self.wait_s(source, now)
        if wait_s > 0:
            raise AuthThrottled(self.role, retry_after_s=wait_s)

    def wait_s(self, source: str, now: float) -> float:
        """Seconds until `source` may try again; 0.0: it may now."""
        if source not in self._levels:
            return 0.0
        level = self._level(source, now)
        if level <= 0:
            del self._levels[source]
            return 0.0
        over = level - (self.failures_max - 1)
        return over / self._rate_per_s if over > _SLACK else 0.0

    def failed(self, source: str, now: float) -> None:
        """Count a failed attempt of `source` at `now`."""
        if not self.failures_max:
            return
        levels = self._levels
        previous = levels.get(source)
        if previous is None:
            level, stamp = 0.0, now
        else:  # drained up to now (a clock that stepped back drains nothing)
            level, stamp = self._level(source, now), max(now, previous[1])
        levels[source] = (level + 1.0, stamp)
        levels.move_to_end(source)
        while len(levels) > self.max_sources:
            levels.popitem(last=False)

    def _level(self, source: str, now: float) -> float:
        level, stamp = self._levels[source]
        return max(0.0, level - max(0.0, now - stamp) * self._rate_per_s)
