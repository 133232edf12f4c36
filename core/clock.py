"""Clocks the router injects, so that logic takes time as an argument and tests fake it; the
functions here are the defaults that read the system clock."""

from __future__ import annotations

import time
from collections.abc import Callable

ClockMs = Callable[[], int]
"""Wall-clock milliseconds since the epoch: message timestamps and expiries."""


def wall_ms() -> int:
    """Milliseconds since the epoch, from the system clock."""
    return int(time.time() * 1000)


def wall_s() -> float:
    """Seconds since the epoch, from the system clock."""
    return time.time()
