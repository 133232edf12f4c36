"""The dashboard's numbers, without I/O: node records, process records and counters in, one
JSON-ready snapshot out (`router.pages.dashboard` reads the sources and streams the snapshots).

Where each number comes from, and how far it reaches:

- *Nodes* (state, connections in all, by transport and by device type) and the edge counters
  `delivered` (messages written to device connections) and `shed` (connects refused by the
  herd guards) come from the edge nodes' records in the registry: fleet-wide, every live node
  of every region the registry shows, as of each node's last heartbeat (every few seconds). A
  process that holds an edge itself (`zuulpush serve`) passes that node's record as it is now
  (`local`), which replaces the registry's older copy.
- Process counters: `deduped` (pushes dropped as repeats of a dedup key) and `enqueued`,
  counted by the API process that took the push, and the routers' `expired` (messages dropped
  because their TTL ran out), with `taken`, `stored` and `forwarded`.
  - In a fleet they come from the process records (`router.pages.process_stats`) that every
    `zuulpush api` and `zuulpush router` publishes every few seconds to its region's Redis:
    summed over every live process of *this* region (records are not replicated: another
    region's processes count on that region's dashboard), with the answering API's own
    counters as they are now in place of its published copy (as for nodes). Scope `fleet`.
  - In `serve` (and wherever no process records are passed) they are this process's own
    counters; in `serve` this process is the whole deployment. Scope `process`.
  Every counter in a snapshot says which: `"scope": "fleet"` or `"process"`.

Rates are per second over the last `RATE_WINDOW_S`, from counter deltas per source (one node,
one process record, or this process), so a node or process that leaves or restarts (its
counters start again at zero, a restarted process under a new id) never makes a rate negative
or a spike: only increases count.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from registry.base import NodeInfo
from router.pages.process_stats import ProcessStats

RATE_WINDOW_S = 5.0
"""Rates are averaged over this long: node records change only at each node's heartbeat."""

FLEET_COUNTERS = ("delivered", "shed")
"""Edge counters summed over the nodes' records (`NodeInfo.totals`)."""

PROCESS_COUNTERS = ("enqueued", "deduped", "expired")
"""Counters summed over the process records (always shown when records are read, 0 if none)."""

PROCESS = "process"
"""The source name of the answering process's own counters."""


@dataclass(frozen=True, slots=True)
class Sample:
    """Counters at one moment: `(source, counter name) -> total since that source started`."""

    at_s: float
    totals: Mapping[tuple[str, str], int]


class Rates:
    """Per-second rates of counters from successive samples (module docstring). One per
    dashboard stream: it holds the samples of the last `window_s` only."""

    __slots__ = ("_samples", "_window_s")

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._samples: deque[Sample] = deque()

    def update(self, sample: Sample) -> dict[str, float]:
        """Add `sample`; the rate of each counter name (summed over sources) since the oldest
        sample within the window, 0.0 until there are two samples."""
        self._samples.append(sample)
        while len(self._samples) > 2 and sample.at_s - self._samples[1].at_s >= self._window_s:
            self._samples.popleft()
        oldest = self._samples[0]
        elapsed = sample.at_s - oldest.at_s
        rates: dict[str, float] = {name: 0.0 for _, name in sample.totals}
        if elapsed <= 0:
            return rates
        for key, total in sample.totals.items():
            before = oldest.totals.get(key)
            if before is not None and total > before:  # lower: that source restarted
                rates[key[1]] += (total - before) / elapsed
        return {name: round(rate, 2) for name, rate in rates.items()}


def merge_nodes(registry: Iterable[NodeInfo], local: Iterable[NodeInfo]) -> list[NodeInfo]:
    """The registry's node records with this process's own nodes' current records in place of
    theirs (added when the registry lacks them), sorted by region then node id."""
    nodes = {node.node_id: node for node in registry}
    nodes.update((node.node_id, node) for node in local)
    return sorted(nodes.values(), key=lambda node: (node.region, node.node_id))


def sample(nodes: Sequence[NodeInfo], counters: Mapping[str, int], at_s: float,
           processes: Sequence[ProcessStats] = ()) -> Sample:
    """The counters of one snapshot, by source: each node's edge counters, each process
    record's counters (by process id), this process's."""
    totals: dict[tuple[str, str], int] = {}
    for node in nodes:
        named = dict(node.totals)
        for name in FLEET_COUNTERS:
            totals[(node.node_id, name)] = named.get(name, 0)
    for record in processes:
        for name, value in record.totals:
            totals[(record.process_id, name)] = value
    for name, value in counters.items():
        totals[(PROCESS, name)] = value
    return Sample(at_s, totals)


def snapshot(nodes: Sequence[NodeInfo], counters: Mapping[str, int], *, mode: str,
             at_s: float, rates: Rates,
             processes: Sequence[ProcessStats] | None = None) -> dict[str, object]:
    """One dashboard snapshot (JSON-ready). `nodes` as `merge_nodes` gives them, `counters`
    this process's own (scope `process`), `processes` the live process records with this
    process's current one (`process_stats.merge_processes`; scope `fleet`), or None where
    there are none (`serve`); `mode` `serve` or `fleet`; `rates` is updated with it."""
    current = sample(nodes, counters, at_s, processes or ())
    per_second = rates.update(current)
    fleet = set(FLEET_COUNTERS)
    if processes is not None:
        fleet.update(PROCESS_COUNTERS, (name for r in processes for name, _ in r.totals))
    sums: dict[str, int] = dict.fromkeys(sorted(fleet), 0)
    for (_, name), value in current.totals.items():
        sums[name] = sums.get(name, 0) + value
    totals = {name: {"total": total, "per_s": per_second.get(name, 0.0),
                     "scope": "fleet" if name in fleet else PROCESS}
              for name, total in sums.items()}
    return {
        "ts": round(at_s, 3),
        "mode": mode,
        "nodes": [_node(node) for node in nodes],
        "connections": _connections(nodes),
        "counters": totals,
    }


def _node(node: NodeInfo) -> dict[str, object]:
    return {
        "node_id": node.node_id, "address": node.address, "region": node.region,
        "state": node.state.value, "connections": node.connections,
        "by_transport": dict(node.by_transport), "by_device_type": dict(node.by_device_type),
        "totals": dict(node.totals),
    }


def _connections(nodes: Sequence[NodeInfo]) -> dict[str, object]:
    by_transport: dict[str, int] = {}
    by_device_type: dict[str, int] = {}
    for node in nodes:
        for name, n in node.by_transport:
            by_transport[name] = by_transport.get(name, 0) + n
        for name, n in node.by_device_type:
            by_device_type[name] = by_device_type.get(name, 0) + n
    return {
        "total": sum(node.connections for node in nodes),
        "active_nodes": sum(1 for node in nodes if node.state.value == "active"),
        "by_transport": dict(sorted(by_transport.items())),
        "by_device_type": dict(sorted(by_device_type.items())),
    }
