"""Reconnect delays, sans I/O: exponential backoff with full jitter, and the server's hints.

Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): the n-th consecutive
failure sleeps `uniform(0, min(cap, base * 2**n))`. Spreading every client over the whole window,
rather than around its middle, is what breaks up a reconnect storm after a node dies.

A server's minimum (HTTP `Retry-After`, SSE `retry:`) is a floor: the delay is that floor plus a
full-jitter draw, so clients told "not before 5 s" do not all return at 5 s. A go-away hint
(`reconnect_after_ms` in a WebSocket 4000-4099 close or an SSE `reconnect` event) is already
jittered by the server and is used as it is. Every hint is capped at `hint_cap_s`, so a broken or
hostile server cannot park a client for a day.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """When to reconnect. `base_s * 2**attempt`, capped at `cap_s`, is the jitter window of the
    attempt-th consecutive failure; a connection that stayed up `reset_after_s` resets the count.
    """

    base_s: float = 1.0
    cap_s: float = 60.0
    reset_after_s: float = 30.0
    hint_cap_s: float = 600.0

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError("Backoff needs 0 < base_s <= cap_s")
        if self.reset_after_s < 0 or self.hint_cap_s < 0:
            raise ValueError("Backoff reset_after_s and hint_cap_s must be >= 0")

    def window_s(self, attempt: int) -> float:
        """The upper end of the full-jitter draw for this attempt (0 = first failure)."""
        # min() before the power would overflow: 2**1100 is a float overflow.
        return min(self.cap_s, self.base_s * 2 ** min(attempt, 64))

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, window_s(attempt)]."""
        return rng.uniform(0.0, self.window_s(attempt))

    def after_floor_s(self, floor_s: float, attempt: int, rng: random.Random) -> float:
        """At least the server's `floor_s` (capped at `hint_cap_s`), plus a full-jitter draw."""
        return min(max(floor_s, 0.0), self.hint_cap_s) + self.delay_s(attempt, rng)

    def hinted_s(self, hint_ms: int) -> float:
        """A go-away hint as a delay: as the server said, within [0, hint_cap_s]."""
        return min(max(hint_ms, 0) / 1000.0, self.hint_cap_s)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from an HTTP `Retry-After` value (delta-seconds or an HTTP-date, RFC 9110
    section 10.2.3) at wall-clock time `now`; None if absent or unreadable. Never negative."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; an obsolete format may parse naive
        return None
    return max(0.0, when.timestamp() - now)
