"""The dashboard's numbers, without I/O: node records and process counters in, one JSON-ready
snapshot out (`router.dashboard` reads the sources and streams the snapshots).

Where each number comes from, and how far it reaches:

- *Nodes* (state, connections in all, by transport and by device type) and the edge counters
  `delivered` (messages written to device connections) and `shed` (connects refused by the
  herd guards) come from the edge nodes' records in the registry: fleet-wide, every live node
  of every region the registry shows, as of each node's last heartbeat (every few seconds). A
  process that holds an edge itself (`zuulpush serve`) passes that node's record as it is now
  (`local`), which replaces the registry's older copy.
- Process counters (`deduped`: pushes dropped as repeats of a dedup key, `enqueued`; in
  `serve` also the router's `expired`: messages dropped because their TTL ran out) are this
  process's own. In `serve` this process is the whole deployment; in a fleet they are the API
  process answering the dashboard only, and `expired` is absent (each router exports it on its
  own `/metrics`). Every counter in a snapshot says which: `"scope": "fleet"` or `"process"`.

Rates are per second over the last `RATE_WINDOW_S`, from counter deltas per source (one node,
or this process), so a node that leaves or restarts (its counters start again at zero) never
makes a rate negative or a spike: only increases count.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from registry.base import NodeInfo

RATE_WINDOW_S = 5.0
"""Rates are averaged over this long: node records change only at each node's heartbeat."""

FLEET_COUNTERS = ("delivered", "shed")
"""Edge counters summed over the nodes' records (`NodeInfo.totals`)."""

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


def sample(nodes: Sequence[NodeInfo], counters: Mapping[str, int], at_s: float) -> Sample:
    """The counters of one snapshot, by source: each node's edge counters, this process's."""
    totals: dict[tuple[str, str], int] = {}
    for node in nodes:
        named = dict(node.totals)
        for name in FLEET_COUNTERS:
            totals[(node.node_id, name)] = named.get(name, 0)
    for name, value in counters.items():
        totals[(PROCESS, name)] = value
    return Sample(at_s, totals)


def snapshot(nodes: Sequence[NodeInfo], counters: Mapping[str, int], *, mode: str,
             at_s: float, rates: Rates) -> dict[str, object]:
    """One dashboard snapshot (JSON-ready). `nodes` as `merge_nodes` gives them, `counters`
    this process's own, `mode` `serve` or `fleet`; `rates` is updated with it."""
    current = sample(nodes, counters, at_s)
    per_second = rates.update(current)
    sums: dict[str, int] = dict.fromkeys(FLEET_COUNTERS, 0)
    for (_, name), value in current.totals.items():
        sums[name] = sums.get(name, 0) + value
    totals = {name: {"total": total, "per_s": per_second.get(name, 0.0),
                     "scope": "fleet" if name in FLEET_COUNTERS else PROCESS}
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
