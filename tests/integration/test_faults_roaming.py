"""Devices that roam between two regions, their old network vanishing under them.

Two regions, each with its Redis, an edge, a router and an API. 20 devices stay in region a,
10 in region b, and 10 roam: they reach the edges through a balancer standing for their
network, first to region a's edge; mid-stream the network vanishes (`BalancerProcess.vanish`:
no close, no FIN either way, like a phone leaving a cell) and the devices come back in region b
once their idle timeout fires; later the same again, back to region a. Pushers send through both
regions' APIs all along. Every message accepted by either API must reach its device, or wait in
an inbox of the region it is in.

What made this lose messages: the old region's router went on finding the device on its old
node (whose connection had not died yet) and delivered there, to nobody, forwarding nothing; the
copy waited in the old region's inbox, which the device, elsewhere now, never read, or which
its resume there removed later (`router.handoff` and `router.base.Inbox.resume_many`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.balancer import BalancerProcess
from tests.support.redis_servers import RedisServer
from tests.support.sdk_devices import DeviceProcess, stop_devices

from .clients import host_port
from .faults_kit import (
    DURABLE,
    HEARTBEAT_S,
    LOAD_AFTER_S,
    LOAD_BEFORE_S,
    PUSH_TIMEOUT_S,
    Pusher,
    Row,
    account,
    all_connected,
    table,
)
from .servers import SECRET, ServerProcess, start_many, two_region_jobs

__all__ = ["table"]  # a fixture, used by name

STAY_A, STAY_B, ROAMING = 20, 10, 10
AWAY_S = 5.0
"""How long the roaming devices stay in region b before their network vanishes again."""


@pytest.fixture
def regions(tmp_path: Path, redis_factory: Callable[..., RedisServer]
            ) -> Iterator[tuple[RedisServer, RedisServer, list[ServerProcess]]]:
    a, b = redis_factory(*DURABLE), redis_factory(*DURABLE)
    started = start_many(tmp_path, two_region_jobs(
        a.url, b.url, {"ZUULPUSH_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S)}, api_in_b=True))
    try:
        yield a, b, started
    finally:
        failures = []
        edge_a, edge_b, api_a, router_a, router_b, api_b = started
        for server in (router_a, router_b, api_a, api_b, edge_a, edge_b):
            if (code := server.stop()) != 0:
                failures.append(f"pid {server.pid} exited {code}:\n{server.stderr_text()}")
        assert not failures, "unclean shutdown: " + "\n".join(failures)


async def roam(network: BalancerProcess, to: ServerProcess) -> int:
    """The roaming devices' network vanishes; their next connections reach `to`."""
    await network.set_backends([host_port(to.edge)])
    return await network.vanish()


@pytest.mark.timeout(180)
async def test_devices_roaming_between_regions_lose_nothing(
        regions: tuple[RedisServer, RedisServer, list[ServerProcess]], tmp_path: Path,
        table: list[Row]) -> None:
    redis_a, redis_b, (edge_a, edge_b, api_a, _, _, api_b) = regions
    network = await BalancerProcess.start([host_port(edge_a.edge)], tmp_path / "network.err")
    idle_s = 2.5 * HEARTBEAT_S
    devices: list[DeviceProcess] = []
    try:
        devices = [
            await DeviceProcess.start(edge_a.edge, SECRET, "a-", STAY_A, tmp_path / "a.err",
                                      idle_timeout_s=idle_s),
            await DeviceProcess.start(edge_b.edge, SECRET, "b-", STAY_B, tmp_path / "b.err",
                                      idle_timeout_s=idle_s),
            await DeviceProcess.start(network.url, SECRET, "roam-", ROAMING,
                                      tmp_path / "roam.err", idle_timeout_s=idle_s)]
        await all_connected(devices)
        clients = [c for d in devices for c in d.client_ids]
        pushers = [Pusher(api_a, clients), Pusher(api_b, clients)]
        loads = [asyncio.create_task(p.run()) for p in pushers]
        try:
            await asyncio.sleep(LOAD_BEFORE_S)
            vanished = await roam(network, edge_b)
            await asyncio.sleep(AWAY_S)
            vanished += await roam(network, edge_a)
            await asyncio.sleep(AWAY_S)
            await all_connected(devices, 15.0)
            await asyncio.sleep(LOAD_AFTER_S)
        finally:
            for pusher in pushers:
                pusher.stop()
            await asyncio.wait_for(asyncio.gather(*loads), PUSH_TIMEOUT_S * 2)
        assert vanished >= 2 * ROAMING, vanished
        row = await account(f"{ROAMING} devices roam a -> b -> a, their network vanishing",
                            vanished, pushers, devices, [redis_a.url, redis_b.url])
        table.append(row)
        print(row)
        # Every device is connected at the end: what it is sent must reach it, not wait.
        assert row.sent > 0 and row.lost == row.waiting == row.duplicates == 0, row
    finally:
        await stop_devices(devices)
        await network.stop()
