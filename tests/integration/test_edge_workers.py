"""`zuulpush edge --workers N` on real processes and a real Redis: N worker nodes share one port
through SO_REUSEPORT, each registered under `<base>-<i>`; a killed worker is forked again; a
worker drained through the registry is forked again; SIGTERM or SIGINT drains them all and the
supervisor exits 0; a supervisor that is killed leaves no worker behind; workers that cannot
start fail the start; workers serve TLS. Devices are the `websockets` library. Every process
is checked by PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from registry.redis import RedisRegistry
from tests.support.certs import make_certificate
from tests.support.redis_servers import RedisServer, free_port

from .clients import ws_connect, ws_url
from .servers import EDGE, ROOT, ServerProcess, start_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DEVICES = 50
WORKER = re.compile(r"^\s*worker: node=(?P<node>\S+) pid=(?P<pid>\d+)\s*$")
RESTARTED = re.compile(r"^\s*restarted: node=(?P<node>\S+) pid=(?P<pid>\d+) after=(?P<how>\S+)$")


def fleet_env(redis: RedisServer, prefix: str, **extra: str) -> dict[str, str]:
    return {"ZUULPUSH_REDIS_URL": redis.url, "ZUULPUSH_REGISTRY_PREFIX": prefix,
            "ZUULPUSH_ROUTER_PREFIX": prefix, **extra}


def start_workers(tmp_path: Path, env: dict[str, str], n: int = 2,
                  base: str = "w") -> tuple[ServerProcess, dict[str, int]]:
    """The supervisor and its workers' PIDs by node id, read from its banner."""
    server = start_server(tmp_path, env, ("--workers", str(n), "--node-id", base), command=EDGE)
    workers = {m["node"]: int(m["pid"]) for line in server.lines if (m := WORKER.match(line))}
    assert sorted(workers) == [f"{base}-{i}" for i in range(1, n + 1)], server.stdout_text()
    assert server.node_id == base
    for pid in workers.values():  # each a child of the supervisor, in a group of its own
        assert psutil.Process(pid).ppid() == server.pid
        assert os.getpgid(pid) == pid
    return server, workers


async def open_devices(server: ServerProcess, n: int, prefix: str) -> list[ClientConnection]:
    return [await ws_connect(ws_url(server.edge, token=server.token(f"{prefix}{i}")))
            for i in range(n)]


async def nodes_holding(registry: RedisRegistry, clients: list[str]) -> dict[str, int]:
    """How many of `clients` each node holds, by the registry (once all are registered)."""
    for _ in range(100):
        found = await registry.lookup_many(clients)
        if len(found) == len(clients):
            counts: dict[str, int] = {}
            for reg in found.values():
                counts[reg.node_id] = counts.get(reg.node_id, 0) + 1
            return counts
        await asyncio.sleep(0.1)
    raise AssertionError(f"only {len(found)} of {len(clients)} registered")


async def wait_line(server: ServerProcess, pattern: re.Pattern[str], timeout_s: float
                    ) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in list(server.lines):
            if match := pattern.match(line):
                return match
        await asyncio.sleep(0.05)
    raise AssertionError(f"no line matching {pattern.pattern}:\n{server.stdout_text()}\n"
                         f"{server.stderr_text()}")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert all(gone(pid) for pid in pids), [pid for pid in pids if not gone(pid)]


async def close_codes(devices: list[ClientConnection], timeout_s: float
                      ) -> set[tuple[int | None, Any]]:
    async def one(ws: ClientConnection) -> tuple[int | None, Any]:
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass
        reason = orjson.loads(ws.close_reason) if ws.close_reason else None
        return ws.close_code, reason and reason["reason"]
    return set(await asyncio.wait_for(asyncio.gather(*(one(ws) for ws in devices)), timeout_s))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")} | env
    return subprocess.run([sys.executable, "-m", "zuulpush", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)


async def status(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    done = await asyncio.to_thread(cli, env, "status", "--json")
    assert done.returncode == 0, done.stderr
    return {n["node_id"]: n for n in json.loads(done.stdout)}


async def test_workers_share_the_port_a_killed_one_comes_back_and_sigterm_drains_all(
        tmp_path: Path, redis_server: RedisServer, redis_prefix: str) -> None:
    env = fleet_env(redis_server, redis_prefix, ZUULPUSH_DRAIN_WINDOW_S="1")
    server, workers = start_workers(tmp_path, env)
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix)
    devices: list[ClientConnection] = []
    try:
        assert set(await status(env)) == {"w-1", "w-2"}
        devices = await open_devices(server, DEVICES, "d")
        spread = await nodes_holding(registry, [f"d{i}" for i in range(DEVICES)])
        assert set(spread) == {"w-1", "w-2"}, spread  # the kernel spread them over both

        os.kill(workers["w-1"], signal.SIGKILL)
        restarted = await wait_line(server, RESTARTED, 15)
        assert restarted["node"] == "w-1" and restarted["how"] == "signal:SIGKILL"
        new_pid = int(restarted["pid"])
        assert new_pid != workers["w-1"] and psutil.Process(new_pid).ppid() == server.pid
        assert gone(workers["w-1"]) and not gone(workers["w-2"])
        await asyncio.sleep(0.5)
        lost = [ws for ws in devices if ws.state is not State.OPEN]
        assert len(lost) == spread["w-1"]  # w-1's devices, and only those, lost their socket
        devices = [ws for ws in devices if ws.state is State.OPEN]
        devices += await open_devices(server, DEVICES, "again")
        again = await nodes_holding(registry, [f"again{i}" for i in range(DEVICES)])
        assert set(again) == {"w-1", "w-2"}, again  # the new w-1 takes its share
        for _ in range(120):  # its node record says so at its next heartbeat (every 5 s)
            if (await status(env))["w-1"]["connections"] == again["w-1"]:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(await status(env))

        closing = asyncio.ensure_future(close_codes(devices, 20))
        server.terminate()
        assert await closing == {(4000, "drain")}
        assert server.wait(20) == 0
        await wait_gone([server.pid, new_pid, workers["w-2"]], 5)
        assert await registry.nodes() == []
        assert "Traceback" not in server.stderr_text()
    finally:
        server.stop()
        for ws in devices:
            await ws.close()
        await registry.close()


async def test_sigint_drains_once_and_a_worker_drained_through_the_registry_comes_back(
        tmp_path: Path, redis_server: RedisServer, redis_prefix: str) -> None:
    env = fleet_env(redis_server, redis_prefix, ZUULPUSH_DRAIN_WINDOW_S="1.5")
    server, workers = start_workers(tmp_path, env, base="d")
    try:
        drain = await asyncio.to_thread(cli, env, "drain", "--node", "d-2", "--wait",
                                        "--timeout", "30")
        assert drain.returncode == 0, drain.stdout + drain.stderr
        # Gone (between the old process and the new one) or active again (the new one).
        assert "drained: node=d-2" in drain.stdout
        restarted = await wait_line(server, RESTARTED, 15)
        assert (restarted["node"], restarted["how"]) == ("d-2", "status:0")
        assert set(await status(env)) == {"d-1", "d-2"}

        devices = await open_devices(server, 20, "s")
        closing = asyncio.ensure_future(close_codes(devices, 20))
        os.kill(server.pid, signal.SIGINT)  # as a terminal's Ctrl-C: one drain, not cut short
        assert await closing == {(4000, "drain")}
        assert server.wait(20) == 0
        await wait_gone([workers["d-1"], int(restarted["pid"])], 5)
    finally:
        server.stop()


async def test_a_killed_supervisor_leaves_no_worker_behind(
        tmp_path: Path, redis_server: RedisServer, redis_prefix: str) -> None:
    server, workers = start_workers(tmp_path, fleet_env(redis_server, redis_prefix), n=3)
    try:
        server.kill()  # SIGKILL: the workers' lifelines end, and they drain and exit
        await wait_gone(list(workers.values()), 15)
    finally:
        server.stop()
        for pid in workers.values():  # never leave one behind, even on failure
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_that_cannot_start_fail_the_start(tmp_path: Path, redis_prefix: str) -> None:
    # Their Redis is not up: each worker says so in one line and exits 1. (A port that another
    # process holds fails before any fork: tests/integration/test_busy_port.py.)
    nobody = RedisServer(free_port(), tmp_path)  # never started: nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")}
    env |= fleet_env(nobody, redis_prefix, ZUULPUSH_SECRET="s" * 32)
    done = subprocess.run(
        [sys.executable, "-m", "zuulpush", "edge", "--workers", "2", "--port", "0",
         "--log-level", "info"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60)
    assert done.returncode == 1, done.stderr
    assert "ready:" not in done.stdout
    assert "before all workers were ready" in done.stderr
    assert "Traceback" not in done.stderr
    assert re.search(r"zuulpush: worker \S+: cannot start: Redis unreachable", done.stderr)
    pids = [int(pid) for pid in re.findall(r"worker \S+ forked: pid (\d+)", done.stderr)]
    assert all(gone(pid) for pid in pids)


async def test_workers_serve_tls_each_with_the_certificate(
        tmp_path: Path, redis_server: RedisServer, redis_prefix: str) -> None:
    cert = make_certificate(tmp_path)
    env = fleet_env(redis_server, redis_prefix, ZUULPUSH_TLS_CERT_FILE=str(cert.cert_file),
                    ZUULPUSH_TLS_KEY_FILE=str(cert.key_file))
    server, _ = start_workers(tmp_path, env, base="t")
    registry = RedisRegistry.from_url(redis_server.url, prefix=redis_prefix)
    try:
        assert server.edge.startswith("https://") and "edge: wss://" in server.stdout_text()
        base = server.edge.replace("https://", "wss://")
        devices = [await ws_connect(f"{base}/ws?token={server.token(f't{i}')}",
                                    ssl=cert.client_context()) for i in range(DEVICES)]
        spread = await nodes_holding(registry, [f"t{i}" for i in range(DEVICES)])
        assert set(spread) == {"t-1", "t-2"}, spread
        closing = asyncio.ensure_future(close_codes(devices, 20))
        server.terminate()
        assert await closing == {(4000, "drain")}
        assert server.wait(20) == 0
    finally:
        server.stop()
        await registry.close()
