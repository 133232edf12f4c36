"""Shared pytest configuration for every tier.

Tests under `tests/integration/` start real processes and sockets on loopback; they are marked
`integration`, so `pytest -m "not integration"` runs only the fast tiers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.redis_servers import (
    RedisCluster,
    RedisServer,
    redis_available,
    start_cluster,
    start_redis,
)

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: real processes and sockets on loopback (tests/integration)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


# Real Redis servers, started by the tests on free ports and stopped by PID. Session-scoped ones
# are shared: tests on them use their own key prefix (the `redis_prefix` fixture) and never FLUSH.

@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if not redis_available():
        pytest.fail("redis-server is not installed: run `bash scripts/test`, which installs it")
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    if not redis_available():
        pytest.fail("redis-server is not installed: run `bash scripts/test`, which installs it")
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Servers for one test (to kill, restart or pause): `redis_factory()`."""
    servers: list[RedisServer] = []

    def start(*extra: str) -> RedisServer:
        server = start_redis(tmp_path / f"redis{len(servers)}", *extra)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix unique to this test, so tests can share one server."""
    return f"t{abs(hash(request.node.nodeid)) % 10**10}"
