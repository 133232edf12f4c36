"""`zuulpush.metrics`: plain stats copied into Prometheus metrics (each change once), plain
histograms added bucket by bucket exactly as observations would be, queue sampling, registry
timing, the exposition page. On a private registry; multi-process mode is tested on real
processes (tests/integration/test_metrics.py)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from core.ids import IdGenerator
from registry.base import Registration
from registry.memory import MemoryRegistry
from router.api.app import ApiStats
from router.base import Message, Priority, Target
from router.config import RouterConfig
from router.stores.memory import MemoryInbox, MemoryNodeChannel, MemoryQueue
from router.worker import RouterWorker
from tests.edge.test_edge_protocol import NOW_MS, Edge
from zuulpush.metrics import CONTENT_TYPE, Exporter, Metrics, add_buckets
from zuulpush.tally import Buckets
from zuulpush.timed_registry import TimedRegistry

BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0)

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def samples(page: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition page by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(page.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(page: bytes, name: str, **labels: str) -> float:
    return samples(page).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def exporter() -> Exporter:
    return Exporter(Metrics(CollectorRegistry()))


def test_added_buckets_read_exactly_as_observations() -> None:
    observed = [0.0004, 0.003, 0.003, 0.07, 0.25, 1.0, 59.0, 75.0]
    direct = Histogram("direct_seconds", "d", buckets=BOUNDS_S,
                       registry=CollectorRegistry())
    copied = Histogram("direct_seconds", "d", buckets=BOUNDS_S,
                       registry=CollectorRegistry())
    plain = Buckets(BOUNDS_S)
    for x in observed:
        direct.observe(x)
        plain.add(x)
    add_buckets(copied, plain.bounds, plain.counts, plain.total)

    def collected(h: Histogram) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name, s.labels, s.value) for metric in h.collect() for s in metric.samples
                if not s.name.endswith("_created")]
    assert collected(copied) == collected(direct)


def test_added_buckets_without_internals_still_count_exactly() -> None:
    class Bare:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, x: float) -> None:
            self.seen.append(x)
    bare = Bare()
    add_buckets(bare, (1.0, 2.0), [1, 0, 2], 9.0)
    assert bare.seen == [1.0, 2.0, 2.0]


async def test_edge_stats_are_copied_once_each(exporter: Exporter) -> None:
    edge = Edge()
    exporter.watch_edge(edge.server)
    edge.server.wall_clock_ms = lambda: NOW_MS + 20
    edge.ws("c1", device_type="ios")
    edge.ws("c2", device_type="tv")
    edge.sse("c3")
    assert edge.device().upgrade("/ws?token=bad").status == 401
    await edge.flush()
    edge.deliver(IdGenerator().new(NOW_MS), "c1", "c2")
    page, content_type = exporter.page()
    assert content_type == CONTENT_TYPE
    open_ = "zuulpush_edge_open_connections"
    assert value(page, open_, transport="ws", device_type="ios") == 1
    assert value(page, open_, transport="ws", device_type="tv") == 1
    assert value(page, open_, transport="sse", device_type="android") == 1
    assert value(page, "zuulpush_edge_connects_total") == 3
    assert value(page, "zuulpush_edge_rejected_total", status="401") == 1
    assert value(page, "zuulpush_auth_failures_total", credential="device_token") == 1
    assert value(page, "zuulpush_edge_messages_delivered_total") == 2
    assert value(page, "zuulpush_delivery_latency_seconds_count") == 1
    assert value(page, "zuulpush_delivery_latency_seconds_bucket", le="0.025") == 1
    assert value(page, "zuulpush_delivery_latency_seconds_sum") == pytest.approx(0.02)
    assert value(page, "zuulpush_edge_inbox_depth_count") == 3
    edge.server.connections["c2"].abort()
    edge.server.connections["c2"].connection_lost(None)
    again, _ = exporter.page()  # nothing counted twice; the closed connection is gone
    assert value(again, "zuulpush_edge_connects_total") == 3
    assert value(again, "zuulpush_delivery_latency_seconds_count") == 1
    assert value(again, open_, transport="ws", device_type="tv") == 0
    assert value(again, open_, transport="ws", device_type="ios") == 1


async def test_two_edges_in_one_process_add_up(exporter: Exporter) -> None:
    one, two = Edge(), Edge()
    exporter.watch_edge(one.server)
    exporter.watch_edge(two.server)
    one.ws("a", device_type="tv")
    two.ws("b", device_type="tv")
    page, _ = exporter.page()
    assert value(page, "zuulpush_edge_open_connections", transport="ws", device_type="tv") == 2
    assert two.server.metrics_page == exporter.page


def test_api_stats_are_copied(exporter: Exporter) -> None:
    stats = ApiStats()
    exporter.watch_api(stats)
    stats.enqueued[Priority.HIGH] += 2
    stats.deduped[Priority.LOW] += 1
    stats.count_error(403, None)
    exporter.sync()
    stats.enqueued[Priority.HIGH] += 1
    page, _ = exporter.page()
    assert value(page, "zuulpush_messages_enqueued_total", priority="high") == 3
    assert value(page, "zuulpush_messages_deduped_total", priority="low") == 1
    assert value(page, "zuulpush_api_rejected_total", status="403") == 1


async def test_worker_stats_and_queue_samples_are_copied(exporter: Exporter) -> None:
    now = [100.0]
    queue = MemoryQueue(60.0, clock=lambda: now[0])
    registry = MemoryRegistry()
    worker = RouterWorker(queue, registry, MemoryInbox(10), MemoryNodeChannel(10),
                          consumer="w", config=RouterConfig(), clock_ms=lambda: NOW_MS)
    exporter.watch_workers([worker])
    exporter.watch_queue(queue)
    stale = Message.create(id="M1", topic="t", data=1, ts_ms=NOW_MS - 10_000, ttl_s=1,
                           priority=Priority.LOW, target=Target(clients=("c1",)))
    await queue.put(stale)
    await queue.put(Message.create(id="M2", topic="t", data=1, ts_ms=NOW_MS, ttl_s=60,
                                   priority=Priority.HIGH, target=Target(clients=("c1",))))
    now[0] += 2.5
    await exporter.sample()
    page, _ = exporter.page()
    assert value(page, "zuulpush_queue_depth", priority="high") == 1
    assert value(page, "zuulpush_queue_lag_seconds", priority="low") == 2.5
    await worker.handle(await queue.take("w", 10, 0))
    await exporter.sample()
    page, _ = exporter.page()
    assert value(page, "zuulpush_messages_expired_total", priority="low") == 1
    assert value(page, "zuulpush_router_messages_taken_total") == 2
    assert value(page, "zuulpush_router_held_total") == 1  # c1 is connected nowhere
    assert value(page, "zuulpush_queue_depth", priority="high") == 0
    assert value(page, "zuulpush_queue_lag_seconds", priority="low") == 0


async def test_timed_registry_times_each_call_and_counts_failures() -> None:
    class Down(MemoryRegistry):
        async def nodes(self) -> Any:
            raise ConnectionError("down")

    metrics = Metrics(CollectorRegistry())
    inner = Down()
    timed = TimedRegistry(inner, metrics)
    await timed.register([Registration("c1", "u1", "tv", "n1", 1)], 60)
    assert (await timed.lookup("c1")) == await inner.lookup("c1")
    with pytest.raises(ConnectionError):
        await timed.nodes()
    await timed.close()
    page = Exporter(metrics).page()[0]
    assert value(page, "zuulpush_registry_op_seconds_count", op="register") == 1
    assert value(page, "zuulpush_registry_op_seconds_count", op="lookup") == 1
    assert value(page, "zuulpush_registry_op_seconds_count", op="nodes") == 1
    assert value(page, "zuulpush_registry_op_errors_total", op="nodes") == 1
    assert value(page, "zuulpush_registry_op_errors_total", op="lookup") == 0


async def test_loop_lag_of_a_process_without_an_edge(exporter: Exporter) -> None:
    await exporter.start()
    try:
        exporter._sync_loop_lag()
    finally:
        await exporter.stop()
    page, _ = exporter.page()
    assert 0 <= value(page, "zuulpush_event_loop_lag_seconds") < 1


def test_every_metric_is_in_the_readme() -> None:
    metrics = Metrics(CollectorRegistry())
    names = {family.name for family in metrics.registry.collect()}  # type: ignore[union-attr]
    assert names and all(name.startswith("zuulpush_") for name in names)
    documented = set(re.findall(r"`(zuulpush_[a-z_]+)", README))
    missing = {n for n in names
               if n not in documented and n + "_total" not in documented}
    assert not missing


def test_nothing_is_lost_to_rounding_in_a_long_run() -> None:
    plain = Buckets((1.0,))
    for _ in range(1000):
        plain.add(0.1)
    assert plain.count == 1000 and math.isclose(plain.total, 100.0)
