"""A port that is already taken is a one-line start-up error with exit status 2, as every other
start-up error is, for every role that listens: `serve` (its edge port and its API port), `edge`,
`edge --workers N` and `api`. The port is held by a real listening socket of the test's (no
SO_REUSEPORT, so nobody may join it); the command runs for real in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.redis_servers import RedisServer

from .servers import BASE_ENV, ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def run(args: list[str], redis: RedisServer | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")} | BASE_ENV
    if redis is not None:
        env["ZUULPUSH_REDIS_URL"] = redis.url
    return subprocess.run([sys.executable, "-m", "zuulpush", *args, "--log-level", "warning"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=45)


def assert_one_line_naming(done: subprocess.CompletedProcess[str], port: int) -> None:
    assert done.returncode == 2, done.stderr
    assert "ready:" not in done.stdout
    [line] = done.stderr.splitlines()
    assert line.startswith("zuulpush: cannot listen on ") and f"127.0.0.1:{port}" in line, line
    assert "in use" in line


@pytest.mark.parametrize("which", ["--port", "--api-port"])
def test_serve(taken_port: int, which: str) -> None:
    ports = {"--port": "0", "--api-port": "0", which: str(taken_port)}
    done = run(["serve", *(word for pair in ports.items() for word in pair)])
    assert_one_line_naming(done, taken_port)
    assert ("API" if which == "--api-port" else "edge") in done.stderr


def test_edge(taken_port: int, redis_server: RedisServer) -> None:
    assert_one_line_naming(run(["edge", "--port", str(taken_port)], redis_server), taken_port)


def test_edge_workers(taken_port: int, redis_server: RedisServer) -> None:
    done = run(["edge", "--workers", "2", "--port", str(taken_port)], redis_server)
    assert_one_line_naming(done, taken_port)


def test_api(taken_port: int, redis_server: RedisServer) -> None:
    assert_one_line_naming(run(["api", "--api-port", str(taken_port)], redis_server), taken_port)


def test_router_metrics_port(taken_port: int, redis_server: RedisServer) -> None:
    done = run(["router", "--metrics-port", str(taken_port)], redis_server)
    assert_one_line_naming(done, taken_port)
    assert "metrics" in done.stderr
