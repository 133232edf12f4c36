"""Edge nodes of a fleet on real Redis: `zuulpush edge` and `zuulpush status` as real processes.

Registrations live for 3 s here, so each edge refreshes (and heartbeats its node record) every
second, and a restarted Redis is repopulated within about that.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from registry.base import Registration
from registry.redis import RedisRegistry
from tests.support.redis_servers import RedisServer

from .clients import ws_connect, ws_url
from .servers import EDGE, ROOT, SECRET, ServerProcess, start_server, stop_all

EDGE_ENV = {"ZUULPUSH_REGISTRY_TTL_S": "3"}
EdgeFactory = Callable[..., ServerProcess]


@pytest.fixture
def edge_factory(tmp_path: Path) -> Iterator[EdgeFactory]:
    """`edge_factory(redis_url, "--node-id", "a", ZUULPUSH_X="...")` starts `zuulpush edge`."""
    servers: list[ServerProcess] = []

    def start(redis_url: str, *args: str, **env: str) -> ServerProcess:
        server = start_server(tmp_path, {"ZUULPUSH_REDIS_URL": redis_url, **EDGE_ENV, **env},
                              args, command=EDGE)
        servers.append(server)
        return server

    yield start
    stop_all(servers)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float) -> float:
    """Poll `check` until it holds; the seconds it took. Fails after `timeout_s`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def located(registry: RedisRegistry, expected: dict[str, str]) -> bool:
    try:
        found = await registry.lookup_many(list(expected))
    except RedisConnectionError:  # our own client's stale connection after a restart
        return False
    return {cid: reg.node_id for cid, reg in found.items()} == expected


def zuulpush(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with no ZUULPUSH_* settings but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")}
    return subprocess.run([sys.executable, "-m", "zuulpush", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=30, env={**clean, **env})


async def test_two_edges_on_one_redis_see_each_others_clients_within_a_second(
        redis_factory: Callable[..., RedisServer], edge_factory: EdgeFactory) -> None:
    redis = redis_factory()
    a = edge_factory(redis.url, "--node-id", "edge-a")
    b = edge_factory(redis.url, "--node-id", "edge-b")
    registry = RedisRegistry.from_url(redis.url)
    try:
        async with ws_connect(ws_url(a.edge, token=a.token("ca", "u1", "phone"))), \
                ws_connect(ws_url(b.edge, token=b.token("cb", "u1", "tv"))):
            took = await eventually(lambda: located(registry, {"ca": "edge-a", "cb": "edge-b"}),
                                    1.0)
            assert took < 1.0
            devices = {d.client_id: d.device_type for d in await registry.devices_of_user("u1")}
            assert devices == {"ca": "phone", "cb": "tv"}
        # Closed: both records are deleted (compare-and-delete by their own node), not left to
        # expire; the devices stay known to their user.
        await eventually(lambda: located(registry, {}), 1.0)
        assert len(await registry.devices_of_user("u1")) == 2
    finally:
        await registry.close()


async def test_status_lists_the_nodes_their_state_and_counts(
        redis_factory: Callable[..., RedisServer], edge_factory: EdgeFactory) -> None:
    redis = redis_factory()
    a = edge_factory(redis.url, "--node-id", "edge-a")
    b = edge_factory(redis.url, "--node-id", "edge-b")

    async def counts() -> dict[str, int]:
        done = await asyncio.to_thread(zuulpush, "status", "--redis", redis.url, "--json")
        assert done.returncode == 0, done.stderr
        return {n["node_id"]: n["connections"] for n in orjson.loads(done.stdout)}

    async with ws_connect(ws_url(a.edge, token=a.token("c1", device_type="tv"))), \
            ws_connect(ws_url(a.edge, token=a.token("c2"))), \
            ws_connect(ws_url(b.edge, token=b.token("c3"))):
        async def both_counted() -> bool:
            return await counts() == {"edge-a": 2, "edge-b": 1}
        await eventually(both_counted, 5.0)
        table = await asyncio.to_thread(zuulpush, "status", "--redis", redis.url)
        assert table.returncode == 0
        assert "edge-a" in table.stdout and "phone=1 tv=1" in table.stdout
        assert "2 node(s), 3 connection(s)" in table.stdout
    b.stop()  # a clean shutdown removes its node record at once

    async def only_a() -> bool:
        return set(await counts()) == {"edge-a"}
    await eventually(only_a, 5.0)


async def test_redis_restarted_under_a_live_edge_gets_its_records_back(
        redis_factory: Callable[..., RedisServer], edge_factory: EdgeFactory) -> None:
    redis = redis_factory()
    a = edge_factory(redis.url, "--node-id", "edge-a")
    registry = RedisRegistry.from_url(redis.url)
    try:
        async with ws_connect(ws_url(a.edge, token=a.token("c1"))) as ws:
            await eventually(lambda: located(registry, {"c1": "edge-a"}), 1.0)
            redis.stop()  # no persistence: it comes back empty
            await asyncio.sleep(1.5)  # the edge's refreshes fail meanwhile
            await asyncio.wait_for(await ws.ping(), 2.0)  # the device is still served
            redis.start()
            await eventually(lambda: located(registry, {"c1": "edge-a"}), 5.0)
            await asyncio.wait_for(await ws.ping(), 2.0)
            nodes = await registry.nodes()
            assert [n.node_id for n in nodes] == ["edge-a"]
    finally:
        await registry.close()
    assert "Traceback" not in a.stderr_text()


async def test_two_regions_show_each_others_clients_within_a_second(
        redis_factory: Callable[..., RedisServer], edge_factory: EdgeFactory) -> None:
    east, west = redis_factory(), redis_factory()
    a = edge_factory(east.url, "--node-id", "edge-east", "--region", "east",
                     "--peer-region", f"west={west.url}")
    b = edge_factory(west.url, "--node-id", "edge-west", "--region", "west",
                     "--peer-region", f"east={east.url}")
    in_east, in_west = RedisRegistry.from_url(east.url), RedisRegistry.from_url(west.url)
    both = {"ce": "edge-east", "cw": "edge-west"}
    try:
        async with ws_connect(ws_url(a.edge, token=a.token("ce"))), \
                ws_connect(ws_url(b.edge, token=b.token("cw"))):
            took = await eventually(
                lambda: _all(located(in_east, both), located(in_west, both)), 1.0)
            assert took < 1.0
            found = await in_west.lookup("ce")
            assert isinstance(found, Registration) and found.node_id == "edge-east"
            nodes = {n.node_id: n.region for n in await in_west.nodes()}
            assert nodes == {"edge-east": "east", "edge-west": "west"}
    finally:
        await in_east.close()
        await in_west.close()


async def _all(*checks: Awaitable[bool]) -> bool:
    return all(await asyncio.gather(*checks))


def test_edge_without_redis_and_status_without_a_server_explain_themselves(
        redis_factory: Callable[..., RedisServer]) -> None:
    no_redis = zuulpush("edge", "--port", "0")
    assert no_redis.returncode == 2 and "--redis" in no_redis.stderr
    gone = redis_factory()
    url = gone.url
    gone.stop()
    unreachable = zuulpush("status", "--redis", url)
    assert unreachable.returncode == 1 and "cannot reach the registry" in unreachable.stderr
    edge = zuulpush("edge", "--port", "0", "--redis", url, ZUULPUSH_SECRET=SECRET)
    assert edge.returncode == 1 and "cannot start: Redis unreachable" in edge.stderr, edge.stderr
    assert "Traceback" not in edge.stderr and len(edge.stderr.strip().splitlines()) == 1
    bad_peer = zuulpush("edge", "--port", "0", "--redis", url, "--peer-region", "nonsense",
                        ZUULPUSH_SECRET=SECRET)
    assert bad_peer.returncode == 2 and "NAME=URL" in bad_peer.stderr
