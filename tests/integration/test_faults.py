"""Faults injected into a real fleet under load, with message accounting.

Each test starts its own fleet: `redis-server` (append-only file, `appendfsync always`, so a
SIGKILLed Redis comes back with every write it acknowledged), `zuulpush edge` `edge-a` and
`edge-b` behind `tests.support.balancer`, `zuulpush api`, two `zuulpush router`s, and devices on
the real client SDK (`tests.support.sdk_devices`: `PushClient`, auto-ack, dedup by id, resume
after the last id it saw). A pusher sends steadily through the API while the fault is injected
and healed. Then every id the API accepted (202) must have been handed to its device's
application, or still be waiting in its inbox; none may be lost, and none handed on twice (the
SDK drops repeats by id; at-least-once repeats it dropped are counted apart).

Faults: an edge SIGKILLed (its devices come back through the balancer to the other edge and
resume from their inboxes); a router SIGKILLed (the other claims what it held); Redis SIGKILLed
and restarted on the same port (everyone reconnects by themselves); Redis paused with SIGSTOP
(latency bounded by the pause, then everything flows); region b's Redis cut off (SIGSTOP) and
healed in a two-region fleet (both registries converge to where the devices are).

`pytest -s` prints the table (also written to `faults.json` and `faults.md` in pytest's base
temp directory). Every process is stopped by its PID, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from registry.redis import RedisRegistry
from tests.support.redis_servers import RedisServer
from tests.support.sdk_devices import DeviceProcess, stop_devices

from .faults_kit import (
    DEVICES,
    DURABLE,
    HEARTBEAT_S,
    LOAD_AFTER_S,
    LOAD_BEFORE_S,
    PUSH_TIMEOUT_S,
    FaultFleet,
    FleetFactory,
    Pusher,
    Row,
    account,
    all_connected,
    eventually,
    fault_fleet,
    table,
)
from .servers import SECRET, ServerProcess, start_many, two_region_jobs

__all__ = ["fault_fleet", "table"]  # fixtures, used by name

# one region

async def kill_edge(fleet: FaultFleet) -> None:
    await asyncio.to_thread(fleet.kill, fleet.edges["edge-a"])


async def kill_router(fleet: FaultFleet) -> None:
    await asyncio.to_thread(fleet.kill, fleet.routers[0])


async def kill_and_restart_redis(fleet: FaultFleet) -> None:
    fleet.redis.kill()
    await asyncio.sleep(2.0)
    await asyncio.to_thread(fleet.redis.start)


async def pause_redis(fleet: FaultFleet) -> None:
    fleet.redis.pause()
    try:
        await asyncio.sleep(PAUSE_S)
    finally:
        fleet.redis.resume()


PAUSE_S = 4.0
FAULTS: dict[str, Callable[[FaultFleet], Awaitable[None]]] = {
    "edge SIGKILL": kill_edge,
    "router SIGKILL": kill_router,
    "redis SIGKILL + restart": kill_and_restart_redis,
    "redis SIGSTOP 4 s": pause_redis,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_fault_under_load_loses_nothing(fault: str, fault_fleet: FleetFactory,
                                                table: list[Row]) -> None:
    fleet = await fault_fleet()
    pusher = Pusher(fleet.api, fleet.clients)
    load = asyncio.create_task(pusher.run())
    try:
        await asyncio.sleep(LOAD_BEFORE_S)
        await FAULTS[fault](fleet)
        await asyncio.sleep(LOAD_AFTER_S)
    finally:
        pusher.stop()
        await asyncio.wait_for(load, PUSH_TIMEOUT_S * 2)
    row = await account(fault, 1, pusher, fleet.devices, [fleet.redis.url])
    table.append(row)
    print(row)
    assert row.sent > 0 and row.lost == 0 and row.duplicates == 0, row
    if fault.startswith("redis SIGSTOP"):  # bounded: the pause, and a little
        assert row.max_push_s < PAUSE_S + 3.0, row
    await all_connected(fleet.devices, 15.0)  # everyone came back by themselves


# two regions

@pytest.fixture
def two_regions(tmp_path: Path, redis_factory: Callable[..., RedisServer]
                ) -> Iterator[tuple[RedisServer, RedisServer, list[ServerProcess]]]:
    a, b = redis_factory(*DURABLE), redis_factory(*DURABLE)
    started = start_many(tmp_path, two_region_jobs(
        a.url, b.url, {"ZUULPUSH_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S)}))
    try:
        yield a, b, started
    finally:
        failures = []
        for server in [started[3], started[4], started[2], started[0], started[1]]:
            if (code := server.stop()) != 0:
                failures.append(f"pid {server.pid} exited {code}:\n{server.stderr_text()}")
        assert not failures, "unclean shutdown: " + "\n".join(failures)


async def placements(url: str, clients: list[str]) -> dict[str, str]:
    registry = RedisRegistry.from_url(url)
    try:
        return {c: r.node_id for c, r in (await registry.lookup_many(clients)).items()}
    finally:
        await registry.close()


@pytest.mark.timeout(120)
async def test_region_bs_redis_cut_off_and_healed_loses_nothing_and_converges(
        two_regions: tuple[RedisServer, RedisServer, list[ServerProcess]],
        tmp_path: Path, table: list[Row]) -> None:
    redis_a, redis_b, (edge_a, edge_b, api, _, _) = two_regions
    half = DEVICES // 2
    devices = [
        await DeviceProcess.start(edge_a.edge, SECRET, "ra-", half, tmp_path / "ra.err",
                                  idle_timeout_s=2.5 * HEARTBEAT_S),
        await DeviceProcess.start(edge_b.edge, SECRET, "rb-", half, tmp_path / "rb.err",
                                  idle_timeout_s=2.5 * HEARTBEAT_S)]
    try:
        await all_connected(devices)
        clients = [c for d in devices for c in d.client_ids]
        where = {c: "edge-a" if c.startswith("ra-") else "edge-b" for c in clients}

        async def converged() -> bool:
            in_a, in_b = await asyncio.gather(placements(redis_a.url, clients),
                                              placements(redis_b.url, clients))
            return in_a == in_b == where
        await eventually(converged, 20.0, "both registries place every device")
        pusher = Pusher(api, clients)
        load = asyncio.create_task(pusher.run())
        try:
            await asyncio.sleep(LOAD_BEFORE_S)
            await pause_redis_b(redis_b)
            await asyncio.sleep(LOAD_AFTER_S)
        finally:
            pusher.stop()
            await asyncio.wait_for(load, PUSH_TIMEOUT_S * 2)
        row = await account("region b's redis cut off 4 s", 1, pusher, devices,
                            [redis_a.url, redis_b.url])
        table.append(row)
        print(row)
        assert row.sent > 0 and row.lost == 0 and row.duplicates == 0, row
        await all_connected(devices, 15.0)
        await eventually(converged, 20.0, "the registries converge after the heal")
    finally:
        await stop_devices(devices)


async def pause_redis_b(redis_b: RedisServer) -> None:
    redis_b.pause()
    try:
        await asyncio.sleep(PAUSE_S)
    finally:
        redis_b.resume()
