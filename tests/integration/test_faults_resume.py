"""Faults that used to lose messages at a resume or a lost registration, with accounting.

The fleet and the accounting are `faults_kit`'s (40 SDK devices, a steady pusher, every id the
API accepted delivered or waiting). The rows:

- **malformed resume ids**: during the load, each device's own token is used to connect with
  `last_id=zzz`, a lowercased real id, and an SSE `Last-Event-ID: zzz`, with real clients
  (`websockets`, aiohttp): each is refused 400, and nothing is removed.
- **a held batch delivered after its devices resumed past it**: a router is stopped (SIGSTOP)
  holding what it took while the other delivers newer messages; then edge-a is killed, so its
  devices resume on edge-b from the newest id they hold, and the router continues: the older
  messages it held reach their devices after that resume (counted as `reordered`).
- **Redis restarted empty** (no persistence): what Redis held is lost with it by design, but
  every message accepted after it came back must arrive, also to devices that stayed connected
  (their edges write the registrations the registry lost again, and send what waited meanwhile).
- **an edge cut off from Redis past the registration TTL**: its registrations expire while its
  devices stay connected; messages for them wait in their inboxes; once the edge is back it
  writes them again and sends what waits.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import websockets

from router.auth import issue_token

from .faults_kit import (
    LOAD_AFTER_S,
    LOAD_BEFORE_S,
    PUSH_TIMEOUT_S,
    FaultFleet,
    FleetFactory,
    Pusher,
    Row,
    account,
    all_connected,
    delivered_ids,
    fault_fleet,
    gather_reports,
    table,
)
from .servers import SECRET

__all__ = ["fault_fleet", "table"]  # fixtures, used by name

REGISTRY_TTL_S = 3.0


def device_token(client_id: str) -> str:
    """The token `tests.support.sdk_devices` gives the device `client_id`."""
    return issue_token(SECRET, client_id=client_id, user_id=f"u-{client_id}",
                       device_type="phone", ttl_s=3600)


async def with_load(fleet: FaultFleet, fault: object) -> Pusher:
    pusher = Pusher(fleet.api, fleet.clients)
    load = asyncio.create_task(pusher.run())
    try:
        await asyncio.sleep(LOAD_BEFORE_S)
        await fault  # type: ignore[misc]
        await asyncio.sleep(LOAD_AFTER_S)
    finally:
        pusher.stop()
        await asyncio.wait_for(load, PUSH_TIMEOUT_S * 2)
    return pusher


def check(row: Row, table: list[Row]) -> None:
    table.append(row)
    print(row)
    assert row.sent > 0 and row.lost == 0 and row.duplicates == 0, row


@pytest.mark.timeout(120)
async def test_malformed_resume_ids_are_refused_and_remove_nothing(
        fault_fleet: FleetFactory, table: list[Row]) -> None:
    fleet = await fault_fleet()
    refused: list[int] = []

    async def attack() -> None:
        reports = await gather_reports(fleet.devices)
        base = fleet.balancer.url
        async with aiohttp.ClientSession() as http:
            for client in fleet.clients:
                seen = delivered_ids(reports[client]) or ["01JZZZZZZZZZZZZZZZZZZZZZZZ"]
                token = device_token(client)
                for bad in ("zzz", seen[-1].lower()):
                    url = base.replace("http", "ws") + f"/ws?token={token}&last_id={bad}"
                    with pytest.raises(websockets.InvalidStatus) as caught:
                        async with websockets.connect(url, open_timeout=5):
                            pass
                    refused.append(caught.value.response.status_code)
                async with http.get(f"{base}/sse?token={token}",
                                    headers={"Last-Event-ID": "zzz"}) as answer:
                    refused.append(answer.status)

    pusher = await with_load(fleet, attack())
    assert refused == [400] * 3 * len(fleet.clients)
    row = await account("malformed resume ids (zzz, lower case, Last-Event-ID)", len(refused),
                        pusher, fleet.devices, [fleet.redis.url])
    check(row, table)
    await all_connected(fleet.devices, 15.0)  # none was replaced by an attacker's connection


@pytest.mark.timeout(150)
async def test_a_held_batch_delivered_after_its_devices_resumed_past_it_loses_nothing(
        fault_fleet: FleetFactory, table: list[Row]) -> None:
    fleet = await fault_fleet()
    router = fleet.routers[0]

    async def hold_then_resume_past() -> None:
        router.pause()  # holding what it took (stored, or not yet): the other goes on
        try:
            await asyncio.sleep(0.8)  # under ZUULPUSH_CLAIM_IDLE_S: nobody claims it yet
            await asyncio.to_thread(fleet.kill, fleet.edges["edge-a"])
            await asyncio.sleep(0.5)  # edge-a's devices reconnect to edge-b and resume
        finally:
            router.resume()

    pusher = await with_load(fleet, hold_then_resume_past())
    row = await account("router SIGSTOP holding a batch, edge SIGKILL, SIGCONT", 1, pusher,
                        fleet.devices, [fleet.redis.url])
    check(row, table)
    await all_connected(fleet.devices, 15.0)


@pytest.mark.timeout(150)
async def test_redis_restarted_empty_loses_nothing_accepted_after_it(
        fault_fleet: FleetFactory, table: list[Row]) -> None:
    fleet = await fault_fleet(durable=False)
    back_at: list[float] = []

    async def restart_empty() -> None:
        fleet.redis.kill()
        await asyncio.sleep(2.0)
        await asyncio.to_thread(fleet.redis.start)
        back_at.append(time.monotonic())

    pusher = await with_load(fleet, restart_empty())
    after = pusher.since(back_at[0])
    before = sum(len(ids) for ids in pusher.sent.values()) - sum(map(len, after.values()))
    row = await account(f"redis SIGKILL, restarted empty: counted from its restart "
                        f"({before} accepted before it)", 1, pusher, fleet.devices,
                        [fleet.redis.url], required=after)
    check(row, table)
    await all_connected(fleet.devices, 15.0)


@pytest.mark.timeout(150)
async def test_an_edge_cut_off_past_the_registration_ttl_gets_what_waited(
        fault_fleet: FleetFactory, table: list[Row]) -> None:
    fleet = await fault_fleet(edge_env={"ZUULPUSH_REGISTRY_TTL_S": str(REGISTRY_TTL_S)},
                              proxied_redis=True)
    proxy = fleet.redis_proxy
    assert proxy is not None

    async def cut_off() -> None:
        await proxy.set_backends([("127.0.0.1", 1)])  # nothing listens there
        await proxy.cut()
        await asyncio.sleep(REGISTRY_TTL_S + 2.0)
        await proxy.set_backends([("127.0.0.1", fleet.redis.port)])

    pusher = await with_load(fleet, cut_off())
    row = await account(f"edge-a cut off from Redis {REGISTRY_TTL_S + 2:.0f} s "
                        f"(registration TTL {REGISTRY_TTL_S:.0f} s)", 1, pusher,
                        fleet.devices, [fleet.redis.url])
    check(row, table)
    await all_connected(fleet.devices, 15.0)
