"""Metrics and logs on real processes: `GET /metrics` of `zuulpush serve` moving as a device
connects and a message is pushed to it, multi-process aggregation over two processes sharing
`PROMETHEUS_MULTIPROC_DIR`, the router's metrics port on a fleet on Redis, and JSON log lines.
The pages are parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.redis_servers import RedisServer

from .clients import push_api, ws_connect, ws_recv_json, ws_url
from .conftest import ServeFactory
from .servers import API, EDGE, ROUTER, ServerProcess, start_many, start_server, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(base: str) -> Samples:
    async with aiohttp.ClientSession() as http, \
            http.get(base + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        await asyncio.sleep(0.1)


async def test_serve_metrics_move_as_a_device_connects_and_gets_a_push(
        serve_factory: ServeFactory) -> None:
    server = serve_factory()
    before = await scrape(server.edge)
    open_ws = ("zuulpush_edge_open_connections", {"transport": "ws", "device_type": "tv"})
    assert get(before, open_ws[0], **open_ws[1]) == 0
    async with ws_connect(ws_url(server.edge, token=server.token("m1", device_type="tv"))) as ws, \
            push_api(server.api, server.api_key) as api:
        status, _ = await api.push({"to": {"clients": ["m1"]}, "data": 1, "priority": "high"})
        assert status == 202
        assert (await ws_recv_json(ws))["data"] == 1
        after = await scrape(server.edge)
        assert get(after, open_ws[0], **open_ws[1]) == 1
        assert get(after, "zuulpush_edge_connects_total") == \
            get(before, "zuulpush_edge_connects_total") + 1
        for name, labels in [("zuulpush_messages_enqueued_total", {"priority": "high"}),
                             ("zuulpush_messages_delivered_total", {"priority": "high"}),
                             ("zuulpush_edge_messages_delivered_total", {}),
                             ("zuulpush_delivery_latency_seconds_count", {}),
                             ("zuulpush_router_messages_taken_total", {})]:
            assert get(after, name, **labels) == get(before, name, **labels) + 1, name
        latency = get(after, "zuulpush_delivery_latency_seconds_sum") - \
            get(before, "zuulpush_delivery_latency_seconds_sum")
        assert 0 <= latency < 5
        assert get(after, "zuulpush_registry_op_seconds_count", op="register") >= 1
        assert get(after, "zuulpush_queue_depth", priority="high") == 0
        assert get(after, "process_resident_memory_bytes") > 0  # the default registry's
        api_page = await scrape(server.api)  # the same process: the same page
        assert get(api_page, "zuulpush_messages_enqueued_total", priority="high") >= 1
        # no key for the page; a bad key on the API is an auth failure
        assert (await api.push({"to": {"clients": ["m1"]}, "data": 2}, key="wrong"))[0] == 403
    assert get(await scrape(server.edge), "zuulpush_auth_failures_total",
               credential="api_key") == 1

    async def closed() -> bool:
        return get(await scrape(server.edge), open_ws[0], **open_ws[1]) == 0
    await eventually(closed)


async def test_processes_sharing_a_multiproc_dir_answer_for_all_of_them(
        tmp_path: Path, serve_factory: ServeFactory) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    a, b = serve_factory(**env), serve_factory(**env)
    name, labels = "zuulpush_edge_open_connections", {"transport": "ws", "device_type": "phone"}

    def connect(server: ServerProcess, client: str) -> object:
        return ws_connect(ws_url(server.edge, token=server.token(client)))

    # (Blocking calls run in threads: this loop must keep answering the servers' pings.)
    async with connect(a, "a1"), connect(b, "b1"), connect(b, "b2"):
        async def all_three() -> bool:  # b copies its stats within a second
            page = await scrape(a.edge)
            return get(page, name, **labels) == 3 and \
                get(page, "zuulpush_edge_connects_total") == 3
        await eventually(all_three)
        assert get(await scrape(b.edge), name, **labels) == 3  # any process answers for all
        assert not any(k[0].startswith("process_") for k in await scrape(a.edge))
        assert await asyncio.to_thread(b.stop) == 0  # its live gauge goes; its counters stay
        page = await scrape(a.edge)
        assert get(page, name, **labels) == 1
        assert get(page, "zuulpush_edge_connects_total") == 3
        c = await asyncio.to_thread(start_server, tmp_path, env)
        try:
            async with connect(c, "c1"):
                async def with_c() -> bool:
                    return get(await scrape(a.edge), name, **labels) == 2
                await eventually(with_c)
            c.kill()  # SIGKILL: it cannot remove its own live gauge file
            assert get(await scrape(a.edge), name, **labels) == 2
            # a new process forgets dead processes' live gauges
            d = await asyncio.to_thread(serve_factory, **env)
            assert get(await scrape(d.edge), name, **labels) == 1
        finally:
            await asyncio.to_thread(c.stop)


async def test_a_fleet_on_redis_exports_on_every_process(
        tmp_path: Path, redis_server: RedisServer, redis_prefix: str) -> None:
    env = {"ZUULPUSH_REDIS_URL": redis_server.url, "ZUULPUSH_REGISTRY_PREFIX": redis_prefix,
           "ZUULPUSH_ROUTER_PREFIX": redis_prefix}
    edge, api, router = start_many(tmp_path, [
        (EDGE, env, ("--node-id", f"{redis_prefix}-edge")), (API, env, ()),
        (ROUTER, env, ("--metrics-port", "0"))])
    try:
        [metrics_line] = [line for line in router.lines if line.strip().startswith("metrics:")]
        router_page = metrics_line.split("metrics:", 1)[1].strip().removesuffix("/metrics")
        async with ws_connect(ws_url(edge.edge, token=edge.token("f1"))) as ws, \
                push_api(api.api, api.api_key) as push:
            await asyncio.sleep(0.3)  # registered
            assert (await push.push({"to": {"clients": ["f1"]}, "data": "x"}))[0] == 202
            assert (await ws_recv_json(ws))["data"] == "x"

            async def counted() -> bool:  # the queue is sampled each second
                routed = await scrape(router_page)
                return get(routed, "zuulpush_messages_delivered_total", priority="normal") == 1 \
                    and ("zuulpush_queue_lag_seconds", (("priority", "low"),)) in routed
            await eventually(counted)
            routed = await scrape(router_page)
            assert get(routed, "zuulpush_router_inbox_stored_total") == 1
            assert get(routed, "zuulpush_queue_depth", priority="normal") == 0
            assert get(routed, "zuulpush_registry_op_seconds_count", op="lookup_many") >= 1
            assert get(await scrape(api.api), "zuulpush_messages_enqueued_total",
                       priority="normal") == 1
            page = await scrape(edge.edge)
            assert get(page, "zuulpush_delivery_latency_seconds_count") == 1
            assert get(page, "zuulpush_edge_open_connections", transport="ws",
                       device_type="phone") == 1
    finally:
        stop_all([edge, api, router])


async def test_json_logs_are_one_object_per_line(serve_factory: ServeFactory) -> None:
    server = serve_factory(("--log-level", "info", "--log-format", "json"))
    async with aiohttp.ClientSession() as http, \
            http.get(server.edge + "/admin/status") as response:
        assert response.status == 401
    assert server.stop() == 0
    lines = server.stderr_text().splitlines()
    assert len(lines) >= 3
    records = [orjson.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    assert all(r["node_id"] == server.node_id for r in records)
    assert any(r["level"] == "info" and "listening" in r["message"] for r in records)
    assert records[0]["ts"].endswith("Z")


async def test_a_bad_log_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="log_format must be one of"):
        start_server(tmp_path, {"ZUULPUSH_LOG_FORMAT": "xml"})
