"""Plain counts the hot paths keep, for `zuulpush.metrics` to read.

A Prometheus metric object costs a lock per update (about 1 µs; 2 µs writing to a
multi-process file). Paths that run per delivery keep plain Python numbers instead, and the
metrics exporter copies what changed into the Prometheus objects once a second.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

LATENCY_BOUNDS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000,
                     60_000)
"""Bucket upper bounds of delivery latency, in milliseconds (the edge counts whole ms: no
division on the delivery path; the metric is in seconds)."""

DEPTH_BOUNDS = (0.0, 1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0)
"""Bucket upper bounds of inbox depth, in messages."""


class Buckets:
    """A histogram as plain numbers: `counts[i]` observations at or below `bounds[i]` and above
    the bound before it, the last one past every bound; `total` their sum. `add` costs a
    bisect and two additions, no lock: one event loop updates it, the exporter reads it."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)
