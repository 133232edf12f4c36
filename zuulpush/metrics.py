"""Prometheus metrics of every zuulpush process: cheap on the hot paths, multi-process safe.

How values reach Prometheus. The hot paths (per connection, per frame, per delivery) never
touch a Prometheus object: they bump plain numbers (`EdgeStats`, `ApiStats`, `WorkerStats`,
`zuulpush.tally.Buckets`), about 0.1 µs each, where a prometheus_client update costs 0.3-1.3
µs in one process (a lock, a label lookup) and 1-2 µs writing to a multi-process file. One
`Exporter` per process copies what changed into the Prometheus metrics every `interval_s` (1 s)
and again before each scrape it answers itself: counters by their increase since the last
copy, gauges by their value, histograms bucket by bucket. The process answering a scrape is
exact; others (multi-process) are at most `interval_s` behind.

Why copy, rather than a custom collector that reads the stats at scrape time (free until
scraped): with `PROMETHEUS_MULTIPROC_DIR` set, prometheus_client's `MultiProcessCollector`
aggregates only what processes wrote to their files through real metric objects; a collector
would show the one process that happens to answer the scrape. Registry calls are few and
batched, so `TimedRegistry` (`zuulpush.timed_registry`) observes their latency directly; the
sampled values (event-loop lag, the queue's depth and lag) are read once per interval.

Multi-process mode. Set `PROMETHEUS_MULTIPROC_DIR` to an existing writable directory in the
environment before the process starts (prometheus_client reads it when first imported). Every
process started from that environment (the workers of one `zuulpush edge`, say) writes its
values there, and whichever answers a scrape reports them all: counters and histograms summed
(including processes that have exited, so totals never go back), gauges by mode: `livesum` for
open connections (the host's total over its live processes), `livemax` for event-loop lag and
for the queue's depth and lag (the worst live process; depth and lag are one shared queue seen
from each). An exporter that stops removes its process's live gauge files; one that starts
removes those of processes no longer running (killed). Empty the directory when the whole
service restarts, as prometheus_client advises. Without the variable, metrics go to
prometheus_client's default registry, beside its `process_*` and `python_*` metrics.

Every metric is named `zuulpush_...`; the README (Metrics) lists them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from core.outage import OutageLog
from core.tasks import cancel_and_wait
from router.api.app import ApiStats
from router.base import MessageQueue, Priority
from router.worker import RouterWorker, WorkerStats
from zuulpush.edge.shedding import LoopLag
from zuulpush.tally import DEPTH_BOUNDS, LATENCY_BOUNDS_MS, Buckets

if TYPE_CHECKING:
    from zuulpush.edge.server import EdgeServer

log = logging.getLogger("zuulpush.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SYNC_INTERVAL_S = 1.0
REGISTRY_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                     5.0)

Page = tuple[bytes, str]


class Metrics:
    """The metric objects of one process (one set per process: `process_metrics()`; tests make
    their own on a private registry)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        """On `registry`; None in multi-process mode (a scrape reads the files)."""
        self.registry = r = registry

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def gauge(name: str, doc: str, mode: Any, *labels: str) -> Gauge:
            return Gauge(name, doc, labels, registry=r, multiprocess_mode=mode)

        def histogram(name: str, doc: str, bounds: Sequence[float], *labels: str) -> Histogram:
            return Histogram(name, doc, labels, registry=r, buckets=bounds)

        # edge
        self.open_connections = gauge(
            "zuulpush_edge_open_connections", "Open device connections.", "livesum",
            "transport", "device_type")
        self.connects = counter("zuulpush_edge_connects", "Connections accepted (upgraded).")
        self.shed = counter("zuulpush_edge_shed", "New connections shed, by reason.", "reason")
        self.rejected = counter("zuulpush_edge_rejected",
                                "Requests answered with an HTTP error, by status.", "status")
        self.closes = counter("zuulpush_edge_closes", "Connections the edge closed, by reason.",
                              "reason")
        self.origin_refused = counter(
            "zuulpush_edge_origin_refused",
            "Browser requests refused (403) for an Origin not on the allow list.")
        self.edge_delivered = counter("zuulpush_edge_messages_delivered",
                                      "Messages written live to device connections.")
        self.edge_replayed = counter("zuulpush_edge_messages_replayed",
                                     "Messages replayed from inboxes to connecting devices.")
        self.acks = counter("zuulpush_edge_acks", "Message ids acknowledged by devices.")
        self.inbox_depth = histogram(
            "zuulpush_edge_inbox_depth", "Messages waiting in a device's inbox when it "
            "connects (replayed to it).", DEPTH_BOUNDS)
        self.edge_registry_errors = counter(
            "zuulpush_edge_registry_errors", "Failed registry or inbox rounds of an edge.")
        self.delivery_latency = histogram(
            "zuulpush_delivery_latency_seconds", "From the API accepting a message to an edge "
            "writing it live, once per message per edge node.",
            [bound / 1000 for bound in LATENCY_BOUNDS_MS])
        self.auth_failures = counter(
            "zuulpush_auth_failures", "Requests refused for a missing or wrong credential.",
            "credential")
        self.auth_throttled = counter(
            "zuulpush_auth_throttled", "Authentication attempts refused (429) unchecked: their "
            "source address is over its limit of failures, by role (api_key, dashboard, "
            "edge_admin).", "role")
        # API
        self.enqueued = counter("zuulpush_messages_enqueued", "Messages the API enqueued.",
                                "priority")
        self.deduped = counter("zuulpush_messages_deduped",
                               "Messages the API dropped as repeats of a dedup key.", "priority")
        self.api_rejected = counter("zuulpush_api_rejected",
                                    "API requests answered with an error, by status.", "status")
        self.api_rate_limited = counter(
            "zuulpush_api_rate_limited", "Push requests refused (429) for an API key over its "
            "rate, by the key's position in api_keys (never the key).", "key")
        self.batch_too_large = counter(
            "zuulpush_api_batch_too_large", "Batches refused for more than max_batch messages.")
        # router
        self.delivered = counter(
            "zuulpush_messages_delivered",
            "Deliveries routers handed to edge nodes (one per message per node).", "priority")
        self.expired = counter("zuulpush_messages_expired",
                               "Messages routers dropped because their TTL ran out.", "priority")
        self.taken = counter("zuulpush_router_messages_taken",
                             "Messages router workers took off the queue.")
        self.stored = counter("zuulpush_router_inbox_stored",
                              "Inbox entries routers stored (one per message per client).")
        self.held = counter("zuulpush_router_held", "Target clients neither reachable live "
                            "nor forwarded to another region: this region's inbox only.")
        self.forwarded = counter("zuulpush_router_forwarded",
                                 "Messages routers handed on to a peer region's queue.", "region")
        self.router_errors = counter("zuulpush_router_errors", "Router failures, by kind.",
                                     "kind")
        self.queue_depth = gauge("zuulpush_queue_depth", "Messages waiting in the queue.",
                                 "livemax", "priority")
        self.queue_lag = gauge(
            "zuulpush_queue_lag_seconds",
            "How long the oldest message waiting in the queue has waited.", "livemax",
            "priority")
        # registry and process
        self.registry_latency = histogram(
            "zuulpush_registry_op_seconds", "Registry call latency, by operation.",
            REGISTRY_BOUNDS_S, "op")
        self.registry_op_errors = counter("zuulpush_registry_op_errors",
                                          "Registry calls that raised, by operation.", "op")
        self.loop_lag = gauge(
            "zuulpush_event_loop_lag_seconds",
            "The event loop's worst lateness over the last second.", "livemax")


_process_metrics: Metrics | None = None


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def process_metrics() -> Metrics:
    """This process's metrics, made on first use. ValueError if `PROMETHEUS_MULTIPROC_DIR`
    names no directory."""
    global _process_metrics
    if _process_metrics is None:
        path = multiprocess_dir()
        if path is not None and not os.path.isdir(path):
            raise ValueError(f"{MULTIPROC_ENV}={path!r} is not a directory")
        # No `_created` series (a third of the page, rarely read). prometheus_client's switch
        # is process-wide: a program embedding zuulpush loses them on its own metrics too.
        disable_created_metrics()
        _process_metrics = Metrics(None if path is not None else REGISTRY)
    return _process_metrics


def exposition_registry(metrics: Metrics) -> CollectorRegistry:
    """What a scrape reads: every process's files in multi-process mode, else the metrics'
    own registry."""
    if metrics.registry is not None:
        return metrics.registry
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


def forget_dead_processes(path: str) -> None:
    """Remove the live-gauge files of processes that no longer run (killed, so they could not
    remove their own): their open connections must not count."""
    for name in os.listdir(path):
        found = re.fullmatch(r"gauge_live\w+?_(\d+)\.db", name)
        if found and not _alive(int(found[1])):
            mark_process_dead(int(found[1]), path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def add_buckets(child: Any, bounds: Sequence[float], deltas: Sequence[int],
                total: float) -> None:
    """Add plain bucket counts (`Buckets` layout: one per bound, then one past them) and their
    sum to a prometheus Histogram child with the same `bounds`, exactly as if each had been
    observed. Uses the child's per-bucket values (stable in prometheus_client for years,
    checked by a test); without them, observes each bucket's bound instead (counts exact, sum
    approximate)."""
    values = getattr(child, "_buckets", None)
    summed = getattr(child, "_sum", None)
    if values is None or summed is None or len(values) != len(deltas):
        for bound, n in zip((*bounds, float("inf")), deltas, strict=True):
            for _ in range(n):
                child.observe(bound if bound != float("inf") else bounds[-1])
        return
    for value, n in zip(values, deltas, strict=True):
        if n:
            value.inc(n)
    summed.inc(total)


def _child(metric: Any, labels: tuple[str, ...]) -> Any:
    return metric.labels(*labels) if labels else metric


def _priority_label(priority: Priority) -> str:
    return priority.label


class _Copier:
    """What one source last copied, per key, so that each copy adds only the change."""

    def __init__(self) -> None:
        self._seen: dict[Any, Any] = {}

    def count(self, key: Any, value: float, metric: Any, *labels: str) -> None:
        """Add the increase of a running total to a counter."""
        delta = value - self._seen.get(key, 0)
        if delta > 0:
            _child(metric, labels).inc(delta)
        self._seen[key] = value

    def count_each(self, name: str, totals: Iterable[tuple[Any, float]], metric: Any,
                   label: Callable[[Any], str] = str) -> None:
        """`count` for each `(what, total)`, keyed `(name, what)`, labelled `label(what)`."""
        for what, value in totals:
            self.count((name, what), value, metric, label(what))

    def buckets(self, key: Any, buckets: Buckets, metric: Any, scale: float = 1.0) -> None:
        """Add what a plain histogram gained to a prometheus one whose bounds are its bounds
        times `scale` (ms to seconds: 0.001)."""
        counts, total = list(buckets.counts), buckets.total
        before, before_total = self._seen.get(key, ([0] * len(counts), 0.0))
        deltas = [now - then for now, then in zip(counts, before, strict=True)]
        if any(deltas):
            add_buckets(metric, [bound * scale for bound in buckets.bounds], deltas,
                        (total - before_total) * scale)
        self._seen[key] = (counts, total)


class Exporter:
    """Copies one process's plain stats into its Prometheus metrics (module docstring).

    Tell it what to watch (`watch_edge`, `watch_api`, `watch_workers`, `watch_queue`), then
    `await start()` in the running loop and `await stop()` at the end. `page()` is a scrape:
    the exposition and its content type, after a copy."""

    def __init__(self, metrics: Metrics | None = None, *,
                 interval_s: float = SYNC_INTERVAL_S) -> None:
        self.metrics = process_metrics() if metrics is None else metrics
        self.interval_s = interval_s
        self._edges: list[tuple[EdgeServer, _Copier]] = []
        self._apis: list[tuple[ApiStats, _Copier]] = []
        self._workers: list[tuple[RouterWorker, _Copier]] = []
        self._queues: list[MessageQueue] = []
        self._lag = LoopLag()  # for a process without an edge (whose sampler it reads)
        self._lag_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue_outage = OutageLog(log)
        self._open_kinds: set[tuple[str, str]] = set()
        self._registry = exposition_registry(self.metrics)

    def watch_edge(self, edge: EdgeServer) -> None:
        self._edges.append((edge, _Copier()))
        edge.metrics_page = self.page

    def watch_api(self, stats: ApiStats) -> None:
        self._apis.append((stats, _Copier()))

    def watch_workers(self, workers: Iterable[RouterWorker]) -> None:
        self._workers.extend((worker, _Copier()) for worker in workers)

    def watch_queue(self, queue: MessageQueue) -> None:
        """Sample the queue's depth and lag once per interval (one call each)."""
        self._queues.append(queue)

    def page(self) -> Page:
        self.sync()
        return generate_latest(self._registry), CONTENT_TYPE

    async def start(self) -> None:
        path = multiprocess_dir()
        if path is not None:
            forget_dead_processes(path)
        if not self._edges:
            loop = asyncio.get_running_loop()
            self._lag.arm(time.monotonic())
            self._lag_timer = loop.call_later(self._lag.interval_s, self._sample_lag)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """A last copy; in multi-process mode, this process's live gauges go."""
        if self._task is not None:
            await cancel_and_wait([self._task], what="metrics sampler")
            self._task = None
        if self._lag_timer is not None:
            self._lag_timer.cancel()
            self._lag_timer = None
        self.sync()
        path = multiprocess_dir()
        if path is not None:
            mark_process_dead(os.getpid(), path)

    def sync(self) -> None:
        """Copy every watched stat that changed, and set the open-connections gauge."""
        opened: collections.Counter[tuple[str, str]] = collections.Counter()
        for edge, copier in self._edges:
            self._sync_edge(edge, copier)
            opened.update(edge.open_by_kind())
        # Set, not moved by changes: a process reusing a dead one's pid (a restarted
        # container) finds its values in the files, and a stale level must not stay.
        for kind in self._open_kinds | set(opened):
            self.metrics.open_connections.labels(*kind).set(opened[kind])
        self._open_kinds |= set(opened)
        for stats, copier in self._apis:
            self._sync_api(stats, copier)
        for worker, copier in self._workers:
            self._sync_worker(worker.stats, copier)

    async def sample(self) -> None:
        """Read what costs a call (the queue's depth and lag): once per interval."""
        m = self.metrics
        for queue in self._queues:
            try:
                depth, lag = await queue.depth(), await queue.lag()
            except Exception as exc:
                self._queue_outage.failed("cannot sample the queue for metrics (%s: %s)",
                                          type(exc).__name__, exc)
                continue
            self._queue_outage.recovered()
            for priority in Priority:
                m.queue_depth.labels(priority.label).set(depth.get(priority, 0))
                m.queue_lag.labels(priority.label).set(lag.get(priority, 0.0))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.sync()
                self._sync_loop_lag()
                await self.sample()
            except Exception:  # metrics never take the process down
                log.exception("copying metrics failed")

    def _sample_lag(self) -> None:
        self._lag.sampled(time.monotonic())
        self._lag_timer = asyncio.get_running_loop().call_later(self._lag.interval_s,
                                                                self._sample_lag)

    def _sync_loop_lag(self) -> None:
        if self._edges:
            edge = self._edges[0][0]
            lag = edge.lag.take_recent_peak(edge.clock())
        else:
            lag = self._lag.take_recent_peak(time.monotonic())
        self.metrics.loop_lag.set(lag)

    def _sync_edge(self, edge: EdgeServer, c: _Copier) -> None:
        m, st = self.metrics, edge.stats
        c.count("connects", st.connects, m.connects)
        c.count_each("shed", st.shed.items(), m.shed)
        c.count_each("rejected", st.rejects.items(), m.rejected)
        c.count_each("auth", st.auth_failures.items(), m.auth_failures)
        c.count_each("closes", (("lifetime", st.lifetime_closes), ("drain", st.drain_closes),
                                ("slow_consumer", st.slow_consumers),
                                ("heartbeat_timeout", st.heartbeat_timeouts),
                                ("violation", st.violations),
                                ("rate_limited", st.rate_limited), ("replaced", st.replaced)),
                     m.closes)
        c.count("origin_refused", st.origin_refused, m.origin_refused)
        c.count("auth_throttled", st.auth_throttled, m.auth_throttled, "edge_admin")
        c.count("delivered", st.delivered, m.edge_delivered)
        c.count("replayed", st.replayed, m.edge_replayed)
        c.count("acks", st.acks, m.acks)
        c.count("registry_errors", st.registry_errors, m.edge_registry_errors)
        c.buckets("latency", st.latency, m.delivery_latency, scale=0.001)
        c.buckets("inbox_depth", st.inbox_depth, m.inbox_depth)

    def _sync_api(self, st: ApiStats, c: _Copier) -> None:
        m = self.metrics
        c.count_each("enqueued", st.enqueued.items(), m.enqueued, _priority_label)
        c.count_each("deduped", st.deduped.items(), m.deduped, _priority_label)
        c.count_each("rejected", st.rejected.items(), m.api_rejected)
        c.count_each("auth", st.auth_failures.items(), m.auth_failures)
        c.count_each("rate_limited", st.rate_limited.items(), m.api_rate_limited)
        c.count_each("auth_throttled", st.auth_throttled.items(), m.auth_throttled)
        c.count("batch_too_large", st.batch_too_large, m.batch_too_large)

    def _sync_worker(self, st: WorkerStats, c: _Copier) -> None:
        m = self.metrics
        c.count_each("delivered", st.delivered_by.items(), m.delivered, _priority_label)
        c.count_each("expired", st.expired_by.items(), m.expired, _priority_label)
        c.count("taken", st.taken, m.taken)
        c.count("stored", st.stored, m.stored)
        c.count("held", st.held, m.held)
        c.count_each("forwarded", st.forwarded.items(), m.forwarded)
        c.count_each("errors", (("batch", st.errors), ("publish", st.publish_errors),
                                ("region", st.region_errors),
                                ("region_dropped", st.unsent_dropped)), m.router_errors)

