"""The edge's admin API and `zuulpush admin` on real processes, with `websockets` devices:
status, a client's connection and closing it, with and without the admin key; on a fleet of two
edges on Redis, `zuulpush admin close --redis` finds the node holding the client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.support.redis_servers import RedisServer

from .clients import ws_connect, ws_url
from .conftest import ServeFactory
from .servers import ADMIN_KEY, EDGE, ROOT, start_many, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def call(base: str, method: str, path: str, headers: dict[str, str] | None = None
               ) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, \
            http.request(method, base + path, headers=headers or {},
                         timeout=aiohttp.ClientTimeout(total=10)) as response:
        return response.status, orjson.loads(await response.read())


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`zuulpush ARGS` with no ZUULPUSH_* settings or proxies but `env`."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("ZUULPUSH_") and not k.lower().endswith("_proxy")}
    return subprocess.run([sys.executable, "-m", "zuulpush", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, env={**clean, **env})


async def closed_with(ws: ClientConnection, timeout_s: float = 5.0) -> tuple[int, Any]:
    """The close code and JSON reason (None when not JSON) the device got."""
    async def until_closed() -> None:
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass
    await asyncio.wait_for(until_closed(), timeout_s)
    assert ws.close_code is not None
    try:
        return ws.close_code, orjson.loads(ws.close_reason or "null")
    except orjson.JSONDecodeError:
        return ws.close_code, None


async def test_admin_routes_need_the_key_and_answer_about_the_node_and_its_clients(
        serve_factory: ServeFactory) -> None:
    server = serve_factory()
    for path, method in [("/admin/status", "GET"), ("/admin/clients/x", "GET"),
                         ("/admin/clients/x/close", "POST")]:
        status, body = await call(server.edge, method, path)
        assert (status, body["error"]["code"]) == (401, "unauthorized"), path
        status, _ = await call(server.edge, method, path, {"Authorization": "Bearer wrong"})
        assert status == 403, path
    async with ws_connect(ws_url(server.edge, token=server.token("a/1", device_type="tv"))) \
            as ws:
        status, body = await call(server.edge, "GET", "/admin/status", AUTH)
        assert (status, body["node_id"], body["state"]) == (200, server.node_id, "active")
        assert body["open"] == {"ws": {"tv": 1}} and body["connections"] == 1
        assert body["auth_failures"] == {"admin_key": 6}
        assert "loop_lag_ms" in body and body["shed"]["rate"] == 0
        status, body = await call(server.edge, "GET", "/admin/clients/a%2F1", AUTH)
        assert status == 200
        assert (body["client_id"], body["transport"], body["device_type"], body["state"]) == \
            ("a/1", "ws", "tv", "open")
        status, body = await call(server.edge, "GET", "/admin/clients/nobody", AUTH)
        assert (status, body["node_id"]) == (404, server.node_id)
        status, body = await call(server.edge, "POST", "/admin/clients/a%2F1/close", AUTH)
        assert (status, body["closed"], body["code"]) == (200, True, 4000)
        code, hint = await closed_with(ws)
        assert code == 4000 and hint["reason"] == "admin"
        assert 500 <= hint["reconnect_after_ms"] <= 1500


async def test_zuulpush_admin_against_one_edge(serve_factory: ServeFactory) -> None:
    server = serve_factory()
    key = {"ZUULPUSH_ADMIN_KEY": ADMIN_KEY}
    async with ws_connect(ws_url(server.edge, token=server.token("c1"))) as one, \
            ws_connect(ws_url(server.edge, token=server.token("c2"))) as two:
        done = await asyncio.to_thread(cli, "admin", "status", "--edge", server.edge, **key)
        assert done.returncode == 0, done.stderr
        assert orjson.loads(done.stdout)["open"] == {"ws": {"phone": 2}}
        done = await asyncio.to_thread(cli, "admin", "client", "c1", "--edge", server.edge,
                                       **key)
        assert done.returncode == 0 and orjson.loads(done.stdout)["transport"] == "ws"
        done = await asyncio.to_thread(cli, "admin", "close", "c1", "--edge", server.edge,
                                       "--code", "1000", **key)
        assert done.returncode == 0, done.stderr
        assert (await closed_with(one))[0] == 1000
        done = await asyncio.to_thread(cli, "admin", "close", "c1", "--edge", server.edge,
                                       **key)
        assert done.returncode == 1 and "no connection on node" in done.stderr
        wrong = await asyncio.to_thread(cli, "admin", "status", "--edge", server.edge,
                                        "--admin-key", "wrong")
        assert wrong.returncode == 1 and "admin key not accepted" in wrong.stderr
        none = await asyncio.to_thread(cli, "admin", "status", "--edge", server.edge)
        assert none.returncode == 2 and "no admin key" in none.stderr
        assert two.close_code is None  # the other device is untouched


async def test_zuulpush_admin_close_finds_the_node_through_the_registry(
        tmp_path: Path, redis_server: RedisServer, redis_prefix: str) -> None:
    env = {"ZUULPUSH_REDIS_URL": redis_server.url, "ZUULPUSH_REGISTRY_PREFIX": redis_prefix}
    a, b = start_many(tmp_path, [(EDGE, env, ("--node-id", f"{redis_prefix}-a")),
                                 (EDGE, env, ("--node-id", f"{redis_prefix}-b"))])
    run_env = {"ZUULPUSH_ADMIN_KEY": ADMIN_KEY, "ZUULPUSH_REGISTRY_PREFIX": redis_prefix}
    try:
        async with ws_connect(ws_url(a.edge, token=a.token("on-a"))) as on_a, \
                ws_connect(ws_url(b.edge, token=b.token("on-b"))) as on_b:
            await asyncio.sleep(0.3)  # registered (one batched round)
            done = await asyncio.to_thread(cli, "admin", "client", "on-b", "--redis",
                                           redis_server.url, **run_env)
            assert done.returncode == 0, done.stderr
            assert orjson.loads(done.stdout)["node_id"] == f"{redis_prefix}-b"
            done = await asyncio.to_thread(cli, "admin", "close", "on-b", "--redis",
                                           redis_server.url, **run_env)
            assert done.returncode == 0, done.stderr
            assert orjson.loads(done.stdout)["node_id"] == f"{redis_prefix}-b"
            code, hint = await closed_with(on_b)
            assert code == 4000 and hint["reason"] == "admin"
            assert on_a.close_code is None
            done = await asyncio.to_thread(cli, "admin", "close", "nobody", "--redis",
                                           redis_server.url, **run_env)
            assert done.returncode == 1 and "not connected anywhere" in done.stderr
    finally:
        stop_all([a, b])
