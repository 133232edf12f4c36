"""Fixtures for the client SDK's tests against real servers on loopback.

- `servers`: starts `EmbeddedApp` (what `zuulpush serve` runs) in the test's own event loop,
  on port 0 or on a given port (to stand in a new server where an old one stopped), with short
  timers; every one still running is stopped (with go-aways) at teardown.
- `tiny`: a tiny aiohttp server whose route handlers the test writes, for what the edge cannot
  be made to do on demand (503 with Retry-After, silence, a protocol close code).

Tests marked `both_loops` run twice, on plain asyncio and on uvloop: applications run the SDK on
either.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
import uvloop
from aiohttp import web

from core.tokens import issue_token
from zuulpush.app import EmbeddedApp, ServeConfig
from zuulpush.config import load_settings

SECRET = "client-sdk-test-secret-0123456789abcdef"
API_KEY = "client-sdk-test-api-key"
HEARTBEAT_S = 0.5
WAIT_S = 5.0
"""Bound on any single wait for something that should happen promptly."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_loops: run on asyncio and on uvloop")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.get_closest_marker("both_loops"):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


def token(client_id: str, *, ttl_s: int = 3600, user_id: str = "sdk-user") -> str:
    return issue_token(SECRET, client_id=client_id, user_id=user_id, device_type="phone",
                       ttl_s=ttl_s)


@pytest.fixture
def cid(request: pytest.FixtureRequest) -> str:
    """A client id of this test's own."""
    return f"{request.node.name[:40]}-{os.urandom(3).hex()}"


@dataclass
class Server:
    """One running EmbeddedApp: its edge base URL, and pushing to it through its real API."""

    app: EmbeddedApp
    edge: str
    api: str
    port: int

    async def push(self, client_id: str, data: Any) -> str:
        async with aiohttp.ClientSession() as session, session.post(
                self.api + "/v1/push", data=orjson.dumps({"to": {"clients": [client_id]},
                                                          "data": data}),
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=aiohttp.ClientTimeout(total=WAIT_S)) as response:
            body = await response.json()
            assert response.status == 202, body
            return str(body["id"])

    async def inbox_ids(self, client_id: str) -> list[str]:
        return [entry.id for entry in await self.app.inbox.after(client_id, None, 1000)]

    async def stop(self) -> None:
        await asyncio.wait_for(self.app.stop(grace_s=2.0), 10)


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def servers() -> AsyncIterator[ServerFactory]:
    started: list[Server] = []

    async def start(port: int = 0) -> Server:
        settings = load_settings(None, {
            "port": port, "api_port": 0, "secret": SECRET, "api_keys": API_KEY,
            "admin_key": "client-sdk-admin", "heartbeat_interval_s": HEARTBEAT_S,
            "handshake_timeout_s": 1.0}, environ={})
        app = EmbeddedApp(ServeConfig.from_settings(settings))
        await asyncio.wait_for(app.start(), 10)
        host = app.config.edge.host
        server = Server(app, f"http://{host}:{app.edge.port}",
                        f"http://{app.config.api.api_host}:{app.api_port}", app.edge.port)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.app.edge.listener.server is not None:  # not stopped by the test
            await server.stop()


@pytest.fixture
async def server(servers: ServerFactory) -> Server:
    return await servers()


@pytest.fixture
async def tiny() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    """`await tiny(app)` serves an aiohttp app on a free loopback port; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout_s: float = WAIT_S
                     ) -> None:
    """Poll `check` until it is true; fail after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout_s} s")
        await asyncio.sleep(0.02)
