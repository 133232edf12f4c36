"""Fixtures of the integration tier: `zuulpush serve` as a real process, and EmbeddedApp in-process.

- `serve_factory(**env)` starts `python -m zuulpush serve --port 0 --api-port 0` with test
  secrets and short timers (plus any extra `ZUULPUSH_*` env), waits for the banner's `ready:`
  line (read by a thread, with a deadline), and at teardown sends SIGTERM to that PID only,
  waits, SIGKILLs that PID if it must, and asserts the process exited 0 without logging a
  traceback. The process plumbing lives in `servers.py`, the clients in `clients.py`.
- `server` is one such process shared by the whole session (with the `/echo` endpoint on); tests
  on it use their own client and user ids, so they do not see each other's messages.
- `embedded` runs `zuulpush.app.EmbeddedApp` on port 0 in the test's own event loop.

Event loops: the product runs on uvloop, and EmbeddedApp must also work on a plain asyncio loop
(someone embedding it in their own asyncio program). So every test that uses `embedded` runs
twice, once per loop, through pytest-asyncio's `pytest_asyncio_loop_factories` hook (below);
the subprocess tests only need a client loop and run on plain asyncio.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop
from playwright.async_api import Browser

from zuulpush.app import EmbeddedApp, ServeConfig
from zuulpush.config import load_settings

from .browser import chromium
from .servers import (
    ADMIN_KEY,
    API_KEY,
    HANDSHAKE_TIMEOUT_S,
    HEARTBEAT_S,
    SECRET,
    Embedded,
    ServerProcess,
    start_server,
    stop_all,
)

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> Mapping[str, LoopFactory]:
    if "embedded" in getattr(item, "fixturenames", ()):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


ServeFactory = Callable[..., ServerProcess]


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[ServeFactory]:
    """`serve_factory(ZUULPUSH_X="1", args=(...))` starts a server for this test only."""
    servers: list[ServerProcess] = []

    def start(args: tuple[str, ...] = (), **extra_env: str) -> ServerProcess:
        server = start_server(tmp_path, extra_env, args)
        servers.append(server)
        return server

    yield start
    stop_all(servers)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `zuulpush serve` (echo on) for the tests that need nothing special."""
    process = start_server(tmp_path_factory.mktemp("server"), {"ZUULPUSH_ECHO": "1"})
    yield process
    stop_all([process])


@pytest.fixture
def ids(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Client / user ids unique to this test: `ids("phone")` -> "test_x-3f2a-phone"."""
    prefix = f"{request.node.name[:40]}-{os.urandom(3).hex()}"
    return lambda name: f"{prefix}-{name}"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium for this test (`browser.chromium`)."""
    async with chromium() as instance:
        yield instance


@pytest.fixture
async def embedded() -> AsyncIterator[Embedded]:
    """EmbeddedApp on port 0 in this test's loop, stopped (with go-aways) at teardown."""
    settings = load_settings(None, {
        "port": 0, "api_port": 0, "secret": SECRET, "api_keys": API_KEY,
        "admin_key": ADMIN_KEY, "heartbeat_interval_s": HEARTBEAT_S,
        "handshake_timeout_s": HANDSHAKE_TIMEOUT_S,
        # The app shares this test's loop, so the loop lag it would shed on is the test's own
        # clients' (a busy CI machine shed an SSE connect once); shedding has tests of its own.
        "shed_loop_lag_ms": 0}, environ={})
    app = EmbeddedApp(ServeConfig.from_settings(settings))
    await asyncio.wait_for(app.start(), 10)
    host = app.config.edge.host
    try:
        yield Embedded(app, f"http://{host}:{app.edge.port}",
                       f"http://{app.config.api.api_host}:{app.api_port}")
    finally:
        await asyncio.wait_for(app.stop(grace_s=2.0), 10)
