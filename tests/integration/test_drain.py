"""Drain for deploys, on real processes: SIGTERM, `POST /admin/drain` and `zuulpush drain`.

A drain marks the node draining in the registry (routers stop targeting it), stops accepting,
closes the connections with `4000` and a JSON reconnect hint in batches spread over the drain
window, and the process exits 0 once they are gone. Devices are the `websockets` library.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from registry.base import NodeState
from registry.redis import RedisRegistry
from tests.support.redis_servers import RedisServer

from .servers import EDGE, ROOT, ServerProcess, start_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DEVICES = 60


async def open_devices(server: ServerProcess, n: int, prefix: str = "d") -> list[ClientConnection]:
    base = server.edge.replace("http://", "ws://")
    return list(await asyncio.gather(*(
        connect(f"{base}/ws?token={server.token(f'{prefix}{i}')}", proxy=None, open_timeout=10)
        for i in range(n))))


async def closes(devices: list[ClientConnection], within_s: float) -> list[tuple[float, int, Any]]:
    """(seconds from now, code, JSON reason) of each device's close, as it comes."""
    start = time.monotonic()

    async def one(ws: ClientConnection) -> tuple[float, int, Any]:
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass
        assert ws.close_code is not None, "no close frame"
        return time.monotonic() - start, ws.close_code, orjson.loads(ws.close_reason or "null")

    return list(await asyncio.wait_for(asyncio.gather(*(one(ws) for ws in devices)), within_s))


def assert_spread(got: list[tuple[float, int, Any]], window_s: float) -> None:
    """Every device got 4000 with a `drain` hint, and the closes came spread over the window:
    no fifth of it took more than a third of them."""
    assert {(code, hint["reason"]) for _, code, hint in got} == {(4000, "drain")}
    assert all(500 <= hint["reconnect_after_ms"] <= 1500 for _, _, hint in got)
    times = sorted(t for t, _, _ in got)
    assert times[-1] - times[0] >= window_s * 0.6, times
    fifths = [sum(1 for t in times if times[0] + k * window_s / 5 <= t
                  < times[0] + (k + 1) * window_s / 5) for k in range(5)]
    assert max(fifths) <= len(times) / 3, fifths


async def test_sigterm_drains_the_connections_over_the_window_then_exits_0(
        tmp_path: Path) -> None:
    server = start_server(tmp_path, {"ZUULPUSH_DRAIN_WINDOW_S": "2"})
    try:
        devices = await open_devices(server, DEVICES)
        closing = asyncio.ensure_future(closes(devices, 10.0))
        await asyncio.sleep(0.2)
        server.terminate()
        assert_spread(await closing, 2.0)
        assert server.wait(10.0) == 0
        assert "Traceback" not in server.stderr_text()
    finally:
        server.stop()


async def test_admin_drain_needs_the_admin_key_then_drains_and_the_node_exits(
        tmp_path: Path, redis_server: RedisServer, redis_prefix: str) -> None:
    env = {"ZUULPUSH_REDIS_URL": redis_server.url, "ZUULPUSH_REGISTRY_PREFIX": redis_prefix,
           "ZUULPUSH_DRAIN_WINDOW_S": "2"}
    server = start_server(tmp_path, env, ("--node-id", "edge-admin"), command=EDGE)
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix)
    try:
        devices = await open_devices(server, DEVICES)
        url = f"{server.edge}/admin/drain"
        async with aiohttp.ClientSession() as http:
            async with http.post(url) as response:
                assert response.status == 401
                assert (await response.json())["error"]["code"] == "unauthorized"
            async with http.post(url, headers={"Authorization": "Bearer wrong"}) as response:
                assert response.status == 403
            async with http.get(url) as response:
                assert response.status == 405 and response.headers["Allow"] == "POST"
            assert all(ws.close_code is None for ws in devices)  # refused: nothing drained
            headers = {"Authorization": f"Bearer {server.admin_key}"}
            closing = asyncio.ensure_future(closes(devices, 10.0))
            async with http.post(url, headers=headers) as response:
                assert response.status == 202
                body = await response.json()
        assert (body["status"], body["node_id"], body["began"]) == ("draining", "edge-admin", True)
        assert body["connections"] == DEVICES and body["drain_window_s"] == 2.0
        # Routers stop targeting it at once: the drain writes the node's record first thing,
        # right after the 202 is answered (within milliseconds; bounded here for a busy machine).
        deadline = time.monotonic() + 1.0
        while (node := (await registry.nodes())[0]).state is not NodeState.DRAINING \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert node.state is NodeState.DRAINING
        assert_spread(await closing, 2.0)
        assert server.wait(15.0) == 0  # empty: the node exits by itself
        assert await registry.nodes() == []
        assert await registry.lookup_many([f"d{i}" for i in range(DEVICES)]) == {}
    finally:
        server.stop()
        await registry.close()


async def test_zuulpush_drain_through_the_registry_drains_only_that_node(
        tmp_path: Path, redis_server: RedisServer, redis_prefix: str) -> None:
    env = {"ZUULPUSH_REDIS_URL": redis_server.url, "ZUULPUSH_REGISTRY_PREFIX": redis_prefix,
           "ZUULPUSH_DRAIN_WINDOW_S": "1"}
    a = start_server(tmp_path, env, ("--node-id", "edge-a"), command=EDGE)
    b = start_server(tmp_path, env, ("--node-id", "edge-b"), command=EDGE)
    try:
        on_a, on_b = await open_devices(a, 20, "a"), await open_devices(b, 20, "b")
        closing = asyncio.ensure_future(closes(on_a, 20.0))
        drain = await asyncio.to_thread(_cli, env, "drain", "--node", "edge-a", "--wait",
                                        "--timeout", "30")
        assert drain.returncode == 0, drain.stderr
        assert "drain requested: node=edge-a" in drain.stdout
        assert "drained: node=edge-a" in drain.stdout
        assert {(code, hint["reason"]) for _, code, hint in await closing} == {(4000, "drain")}
        assert a.wait(15.0) == 0
        assert all(ws.close_code is None for ws in on_b)  # the other node keeps its devices
        status = await asyncio.to_thread(_cli, env, "status", "--json")
        assert [n["node_id"] for n in json.loads(status.stdout)] == ["edge-b"]
        again = await asyncio.to_thread(_cli, env, "drain", "--node", "edge-a")
        assert again.returncode == 1 and "no live edge node 'edge-a'" in again.stderr
        for ws in on_b:
            await ws.close()
    finally:
        a.stop()
        b.stop()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")} | env
    return subprocess.run([sys.executable, "-m", "zuulpush", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)

