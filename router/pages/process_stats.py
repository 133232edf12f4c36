"""Process stats: each fleet process's counter totals, published with a TTL, so that the
dashboard of any API process can sum the whole region's (`router.pages.dashboard_stats`).

A *record* is one process's counters since it started, as of its last publish: its id, its
kind (`router`: the sum of its workers' counters; `api`: the pushes it took), its region and
`(name, total)` pairs. Each process publishes its record every `PUBLISH_INTERVAL_S` for
`RECORD_TTL_S` (`router.pages.stats_publisher`); a process that stops publishing (killed, or cut
off from Redis) drops out of `live()` within one TTL, and a stopping one removes its record.
Counters of a restarted process start again at zero under a new id: readers take rates from
deltas per process id (`dashboard_stats.Rates`), so neither makes a rate negative.

Records live in each region's Redis, beside its queue: `live()` lists this region's processes.

This module holds the value, its encoding, the seam (`ProcessStatsStore`) and the in-memory
store; `router.stores.redis_process_stats` is the store on Redis (or Redis Cluster).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import orjson

PUBLISH_INTERVAL_S = 5.0
"""How often a process publishes its record: as often as an edge heartbeats its node."""

RECORD_TTL_S = 3 * PUBLISH_INTERVAL_S
"""How long a record lives unless published again: two publishes may fail before it goes."""

KINDS = ("router", "api")


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """One process's counters since it started: `totals` as sorted `(name, total)` pairs."""

    process_id: str
    kind: str
    region: str
    totals: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, process_id: str, kind: str, region: str,
           totals: Mapping[str, int]) -> ProcessStats:
        """A record with `totals` as given (a mapping), sorted by name."""
        return cls(process_id, kind, region, tuple(sorted(totals.items())))


def encode(record: ProcessStats) -> bytes:
    """A record as stored: a JSON array, new fields appended at its end (`decode`)."""
    return orjson.dumps([record.process_id, record.kind, record.region, record.totals])


def decode(raw: bytes) -> ProcessStats:
    """A stored record, of this version or a later one (fields past the fourth are ignored)."""
    process_id, kind, region, totals, *_ = orjson.loads(raw)
    return ProcessStats(str(process_id), str(kind), str(region),
                        tuple((str(name), int(total)) for name, total in totals))


def merge_processes(published: Iterable[ProcessStats],
                    local: Iterable[ProcessStats]) -> list[ProcessStats]:
    """The published records with this process's own current ones in place of theirs (added
    when not published yet), sorted by kind then process id."""
    records = {record.process_id: record for record in published}
    records.update((record.process_id, record) for record in local)
    return sorted(records.values(), key=lambda record: (record.kind, record.process_id))


class ProcessStatsStore(Protocol):
    """Where processes publish their counter records and dashboards list the live ones.

    Every method is safe to call concurrently, from any number of processes.
    """

    async def publish(self, record: ProcessStats, ttl_s: float) -> None:
        """Write the record for `ttl_s` seconds, replacing the process's previous one
        (idempotent: publishing the same record again only extends it)."""
        ...

    async def remove(self, process_id: str) -> None:
        """Delete the process's record at once (clean shutdown); nothing if there is none."""
        ...

    async def live(self) -> list[ProcessStats]:
        """Every record not expired nor removed, in no particular order. Expired records
        leave the store's index as they are found (no background task)."""
        ...

    async def close(self) -> None:
        """Release connections to the backing store. Idempotent."""
        ...


class MemoryProcessStats:
    """`ProcessStatsStore` in this process's memory, on `clock_s` (monotonic seconds)."""

    __slots__ = ("_clock_s", "_records")

    def __init__(self, clock_s: Callable[[], float] = time.monotonic) -> None:
        self._clock_s = clock_s
        self._records: dict[str, tuple[float, ProcessStats]] = {}

    async def publish(self, record: ProcessStats, ttl_s: float) -> None:
        self._records[record.process_id] = (self._clock_s() + ttl_s, record)

    async def remove(self, process_id: str) -> None:
        self._records.pop(process_id, None)

    async def live(self) -> list[ProcessStats]:
        now = self._clock_s()
        for process_id in [p for p, (until, _) in self._records.items() if until <= now]:
            del self._records[process_id]
        return [record for _, record in self._records.values()]

    def __len__(self) -> int:
        """Records held, expired ones not yet pruned included (for tests)."""
        return len(self._records)

    async def close(self) -> None:
        pass
