"""`FakeClock`: monotonic seconds and wall-clock milliseconds that move only when told."""

from __future__ import annotations


class FakeClock:
    """A clock for tests. Calling it (or `monotonic()`) gives `now`, monotonic seconds;
    `wall_ms()` gives `now_ms`, wall-clock milliseconds. Both are settable, and `advance(s)`
    moves both by `s` seconds (returning the new `now`)."""

    def __init__(self, now: float = 1000.0, now_ms: int = 1_700_000_000_000) -> None:
        self.now = now
        self.now_ms = now_ms

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> float:
        self.now += seconds
        self.now_ms += int(seconds * 1000)
        return self.now
