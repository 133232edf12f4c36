"""Running out of file descriptors, for real: `zuulpush serve` started with a low RLIMIT_NOFILE
and more connections opened to it than it has descriptors for.

- With the default ceilings (derived from the limit), the node sheds itself: 503s, then sockets
  closed at accept, all counted; the kernel never has to refuse an accept.
- With ceilings set above the limit, accepts do fail with EMFILE: libuv closes the pending
  connections and the node logs the episode once. Either way the node stays up, does not spin
  (its CPU time under pressure stays small) and serves again once connections close.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import pytest

from .clients import WAIT_S, host_port, ws_connect, ws_request, ws_url
from .servers import ServerProcess, start_server, stop_all

NOFILE = 200
CONNECTIONS = 320  # well past NOFILE
LIMITED = ("import resource, runpy, sys; n = int(sys.argv[1]); "
           "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
           "sys.argv = ['zuulpush', *sys.argv[2:]]; "
           "runpy.run_module('zuulpush', run_name='__main__', alter_sys=True)")


def start_limited(tmp_dir: Path, nofile: int, extra_env: Mapping[str, str]) -> ServerProcess:
    """`zuulpush serve` with RLIMIT_NOFILE at `nofile`, once its ready line is out."""
    env = {
        "ZUULPUSH_HANDSHAKE_TIMEOUT_S": "5",
        # the raw connections held open never answer pings: with the suite's 0.5 s heartbeats
        # they would be closed (freeing descriptors) while the test still counts on them
        "ZUULPUSH_HEARTBEAT_INTERVAL_S": "30",
        **extra_env,
    }
    return start_server(tmp_dir, env, launcher=("-c", LIMITED, str(nofile)))


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Any]:
    servers: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        server = start_limited(tmp_path, NOFILE, env)
        servers.append(server)
        return server

    yield start
    stop_all(servers)


async def open_many(server: ServerProcess, n: int) -> tuple[list[Any], dict[str, int]]:
    """Open `n` raw connections, each sending a WebSocket upgrade with its own token; what each
    got: "101", "503" or "closed" (no answer). Returns the open streams too."""
    host, port = host_port(server.edge)
    outcomes = {"101": 0, "503": 0, "closed": 0}
    streams = []
    for i in range(n):
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), WAIT_S)
        except (ConnectionError, TimeoutError):
            outcomes["closed"] += 1
            continue
        streams.append(writer)
        writer.write(ws_request(f"/ws?token={server.token(f'fd-{i}')}"))
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
        except (asyncio.IncompleteReadError, ConnectionError):
            outcomes["closed"] += 1
            continue
        outcomes[head[9:12].decode()] += 1
    return streams, outcomes


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def healthz(server: ServerProcess) -> dict[str, Any]:
    """GET /healthz, retried while the node is still shedding."""
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(server.edge + "/healthz",
                                       timeout=aiohttp.ClientTimeout(total=WAIT_S)) as response:
                    if response.status == 200:
                        return orjson.loads(await response.read())  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, "no healthz answer"
            await asyncio.sleep(0.2)


async def serves_again(server: ServerProcess) -> None:
    """A websockets client connects (retrying while lingering answers drain)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            async with ws_connect(ws_url(server.edge, token=server.token("after"))) as ws:
                await ws.ping()
                return
        except Exception:
            assert time.monotonic() < deadline, "the node did not serve again"
            await asyncio.sleep(0.2)


def close_all(writers: list[Any]) -> None:
    for writer in writers:
        writer.close()


async def test_derived_ceilings_shed_before_the_descriptors_run_out(limited: Any) -> None:
    server = limited()
    health = await healthz(server)
    assert health["hard_max_connections"] == NOFILE - 64
    assert health["max_connections"] == (NOFILE - 64) * 9 // 10
    writers, outcomes = await open_many(server, CONNECTIONS)
    try:
        assert outcomes["101"] == health["max_connections"]  # served up to the soft ceiling
        assert outcomes["503"] >= 1 and outcomes["closed"] >= 1
        assert sum(outcomes.values()) == CONNECTIONS
        before = cpu_s(server.pid)
        await asyncio.sleep(2.0)  # held: every new connection would be shed
        assert cpu_s(server.pid) - before < 0.3  # not spinning
    finally:
        close_all(writers)
    await serves_again(server)
    health = await healthz(server)
    assert health["shed"]["max_connections"] >= 1 and health["shed"]["hard_limit"] >= 1
    assert health["fd_exhaustion_episodes"] == 0
    assert "out of file descriptors" not in server.stderr_text()


async def test_accepts_failing_with_emfile_are_shed_and_logged_once(limited: Any) -> None:
    server = limited(ZUULPUSH_MAX_CONNECTIONS="100000", ZUULPUSH_HARD_MAX_CONNECTIONS="100000")
    assert "file-descriptor limit" in server.stderr_text()  # warned at start
    writers, outcomes = await open_many(server, CONNECTIONS)
    try:
        assert 100 < outcomes["101"] < NOFILE  # as many as the descriptors allow
        assert outcomes["closed"] >= CONNECTIONS - NOFILE  # libuv accepted and closed them
        before = cpu_s(server.pid)
        more, extra = await open_many(server, 50)  # still arriving, still shed
        writers += more
        assert extra["closed"] == 50
        await asyncio.sleep(2.0)
        assert cpu_s(server.pid) - before < 0.3  # not spinning
    finally:
        close_all(writers)
    await serves_again(server)
    health = await healthz(server)
    for _ in range(50):  # the node looks once a second: the episode ends at its next look
        if not health["fds_exhausted"]:
            break
        await asyncio.sleep(0.1)
        health = await healthz(server)
    assert health["fd_exhaustion_episodes"] == 1 and health["fds_exhausted"] is False
    stderr = server.stderr_text()
    assert stderr.count("out of file descriptors") == 1
    assert stderr.count("file descriptors available again") == 1
