"""Faults that used to lose messages at a resume or a lost registration, with accounting.

The fleet and the accounting are `faults_kit`'s (40 SDK devices, a steady pusher, every id the
API accepted delivered or waiting). The rows:

- **malformed resume ids**: during the load, each device's own token is used to connect with
  `last_id=zzz`, a lowercased real id, and an SSE `Last-Event-ID: zzz`, with real clients
  (`websockets`, aiohttp): each is refused 400, and nothing is removed.
- **batches delivered after their devices resumed past them**: one router reaches Redis over a
  slow link, so it holds each batch it took a while as the other delivers newer messages; then
  edge-a is killed, so its devices resume on edge-b from the newest id they hold, with older
  messages still in flight, which reach them after that resume (counted as `reordered`).
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
from collections.abc import Awaitable

import aiohttp
import pytest
import websockets
from redis.asyncio import Redis

from core.tokens import issue_token
from registry.redis import RedisRegistry
from router.stores.redis_channel import RedisNodeChannel

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
    eventually,
    fault_fleet,
    gather_reports,
    table,
)
from .servers import SECRET

__all__ = ["fault_fleet", "table"]  # fixtures, used by name

REGISTRY_TTL_S = 3.0
SLOW_LINK_MS = 400
QUEUE_GROUP = "routers"  # `RedisQueue`'s consumer group


def device_token(client_id: str) -> str:
    """The token `tests.support.sdk_devices` gives the device `client_id`."""
    return issue_token(SECRET, client_id=client_id, user_id=f"u-{client_id}",
                       device_type="phone", ttl_s=3600)


async def with_load(fleet: FaultFleet, fault: Awaitable[None],
                    pusher: Pusher | None = None) -> Pusher:
    pusher = pusher or Pusher(fleet.api, fleet.clients)
    load = asyncio.create_task(pusher.run())
    try:
        await asyncio.sleep(LOAD_BEFORE_S)
        await fault
        await asyncio.sleep(LOAD_AFTER_S)
    finally:
        pusher.stop()
        await asyncio.wait_for(load, PUSH_TIMEOUT_S * 2)
    return pusher


def check(row: Row, table: list[Row]) -> None:
    """Nothing lost, nothing handed on twice; and every device is connected at the end, so
    nothing may wait either: a message that waits for a connected device never arrives (and
    was removed unreceived by its next resume, before)."""
    table.append(row)
    print(row)
    assert row.sent > 0 and row.lost == row.waiting == row.duplicates == 0, row


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
async def test_a_batch_held_while_its_devices_resume_past_it_loses_nothing(
        fault_fleet: FleetFactory, table: list[Row]) -> None:
    """router-0 reaches Redis over a slow link. While router-1 is stopped, router-0 takes a
    message W for each of edge-a's devices, and then takes its time (store, look up, publish:
    a slow round trip each); router-1 comes back and delivers a newer X to each at once. Then
    edge-a stops (SIGSTOP) until router-0 has published W to it, and is killed: its devices
    resume on edge-b from X, the newest id they hold, with W stored and never written to them.
    Resuming from X used to remove W unreceived. (The devices wait 30 s of silence before they
    take a connection for dead, so edge-a's stop does not move them early.)"""
    # Nobody claims what router-0 holds within the test: it is not dead, only slow.
    fleet = await fault_fleet(proxied=("router-0",), claim_idle_s=60.0, idle_timeout_s=30.0)
    await fleet.proxies["router-0"].delay(SLOW_LINK_MS)
    on_a = await clients_on(fleet, "edge-a")
    edge_a, fast = fleet.edges["edge-a"], fleet.routers[1]
    pusher = Pusher(fleet.api, fleet.clients)
    async with aiohttp.ClientSession() as http:
        fast.pause()
        try:
            await pusher.send(http, on_a)  # W: only router-0 may take these
            await eventually(lambda: taken(fleet, len(on_a)), 10.0, "router-0 took W")
        finally:
            fast.resume()
        w_ids = {client: pusher.sent[client][0] for client in on_a}
        await pusher.send(http, on_a)  # X: router-1 delivers these at once
        await eventually(lambda: received(fleet, {c: pusher.sent[c][1] for c in on_a}), 10.0,
                         "X delivered")
        edge_a.pause()
        try:
            await eventually(lambda: published(fleet, "edge-a", set(w_ids.values())), 30.0,
                             "router-0 published W to edge-a")
        finally:
            await asyncio.to_thread(fleet.kill, edge_a)
        for _ in range(20):  # and more, after they are back
            await pusher.send(http, fleet.clients[:4])
            await asyncio.sleep(0.1)
    row = await account(f"router-0 on a {SLOW_LINK_MS} ms link holds a batch, edge-a dies "
                        "with it: its devices resume past it", len(on_a), pusher,
                        fleet.devices, [fleet.redis.url])
    check(row, table)
    assert row.reordered > 0, row  # the reorder this row is about did happen
    await all_connected(fleet.devices, 15.0)


async def received(fleet: FaultFleet, ids: dict[str, str]) -> bool:
    """Whether each client's device was handed its id of `ids`."""
    reports = await gather_reports(fleet.devices)
    return all(m in delivered_ids(reports[c]) for c, m in ids.items())


async def published(fleet: FaultFleet, node_id: str, ids: set[str]) -> bool:
    """Whether every id of `ids` is in a delivery published to `node_id`'s channel."""
    redis = Redis.from_url(fleet.redis.url)
    try:
        entries = await redis.xrange(RedisNodeChannel(redis).key(node_id))
    finally:
        await redis.aclose()
    text = b"".join(fields[b"h"] for _, fields in entries)
    return all(message_id.encode() in text for message_id in ids)


async def taken(fleet: FaultFleet, n: int) -> bool:
    """Whether `n` messages are taken from the queue and not yet done (router-0 holds them)."""
    redis = Redis.from_url(fleet.redis.url)
    try:
        pending = await redis.xpending("{zp:q}:normal", QUEUE_GROUP)
    finally:
        await redis.aclose()
    return int(pending["pending"]) >= n


async def clients_on(fleet: FaultFleet, node_id: str) -> list[str]:
    registry = RedisRegistry.from_url(fleet.redis.url)
    try:
        found = await registry.lookup_many(fleet.clients)
    finally:
        await registry.close()
    return [c for c, reg in found.items() if reg.node_id == node_id]


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
                              proxied=("edge-a",))
    proxy = fleet.proxies["edge-a"]

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
