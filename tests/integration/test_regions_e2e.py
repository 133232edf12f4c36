"""Live delivery across regions, with real processes on two real Redis servers.

Region a and region b each have their own `redis-server` (started by the test on free loopback
ports, stopped by PID) and their own `zuulpush router --region X --peer-region Y=URL`, which
forward to each other. `zuulpush edge` runs in each region (`--region`, and `--peer-region`
naming the other, so the registries replicate); region a also runs `zuulpush api`. Devices are
`websockets` clients that ack what they get. Every process is stopped by its PID and checked for
a clean exit; every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from registry.redis import RedisRegistry
from router.stores.redis_history import RedisBroadcastLog
from router.stores.redis_inbox import RedisInbox
from tests.support.redis_servers import RedisServer

from .clients import PushApi, push_api, ws_connect, ws_url
from .servers import (
    API,
    EDGE,
    ROUTER,
    ServerProcess,
    mint_token,
    start_many,
    stop_all,
    two_region_jobs,
)
from .test_e2e import Device, eventually, push, to_clients


@dataclass
class TwoRegions:
    """Region a (edge-a, the API, a router) and region b (edge-b, a router), each on its own
    Redis."""

    redis_a: RedisServer
    redis_b: RedisServer
    edge_a: ServerProcess
    edge_b: ServerProcess
    api: ServerProcess
    router: ServerProcess
    router_b: ServerProcess

    def push_api(self) -> AbstractAsyncContextManager[PushApi]:
        return push_api(self.api.api, self.api.api_key)

    def inbox(self, redis: RedisServer) -> RedisInbox:
        return RedisInbox.from_url(redis.url, max_per_client=1000)


@pytest.fixture
def regions(tmp_path: Path, redis_factory: Callable[..., RedisServer]
            ) -> Iterator[TwoRegions]:
    a, b = redis_factory(), redis_factory()
    started = start_many(tmp_path, two_region_jobs(a.url, b.url))
    try:
        assert "region a, peer regions: b" in started[3].stdout_text()
        yield TwoRegions(a, b, *started)
    finally:
        stop_all([started[3], started[4], started[2], started[0], started[1]])


async def connect(edge: ServerProcess, client_id: str, device_type: str = "phone",
                  **query: str) -> Device:
    token = mint_token(client_id, "user", device_type)
    return Device(await ws_connect(ws_url(edge.edge, token=token, **query)))


async def seen_in_a(fleet: TwoRegions, expected: dict[str, str | None]) -> None:
    """Wait until region a's registry (which the API and router read) places each client on its
    node, active (None: connected nowhere), and has both edge nodes active."""
    registry = RedisRegistry.from_url(fleet.redis_a.url)
    try:
        async def placed() -> bool:
            found = await registry.locate_many(list(expected))
            nodes = {n.node_id: n.region for n in await registry.nodes()}
            return nodes == {"edge-a": "a", "edge-b": "b"} and all(
                loc.reachable for loc in found.values()) and {
                c: loc.registration.node_id for c, loc in found.items()} == {
                c: n for c, n in expected.items() if n}
        await eventually(placed)
    finally:
        await registry.close()


async def inbox_ids(inbox: RedisInbox, client_id: str, after: str | None = None) -> list[str]:
    return [e.id for e in await inbox.after(client_id, after, 100)]


async def test_a_device_on_edge_b_gets_live_what_region_as_api_was_given(
        regions: TwoRegions) -> None:
    in_a, in_b = regions.inbox(regions.redis_a), regions.inbox(regions.redis_b)
    device = await connect(regions.edge_b, "rb")
    try:
        await seen_in_a(regions, {"rb": "edge-b"})
        async with regions.push_api() as api:
            sent = await push(api, to_clients("rb", topic="news", data={"n": 1}))
        assert sent["targets"] == 1
        got = orjson.loads(await asyncio.wait_for(device.ws.recv(), 5.0))  # not acked yet
        assert (got["id"], got["topic"], got["data"]) == (sent["id"], "news", {"n": 1})
        # Kept in both regions' inboxes (b's by b's router, which delivered it); the ack, made on
        # edge b, removes region b's copy only.
        assert await inbox_ids(in_b, "rb") == [sent["id"]]
        assert await inbox_ids(in_a, "rb") == [sent["id"]]
        await device.ws.send(orjson.dumps({"type": "ack", "id": sent["id"]}).decode())

        async def acked_in_b() -> bool:
            return await inbox_ids(in_b, "rb") == []
        await eventually(acked_in_b)
        assert await inbox_ids(in_a, "rb") == [sent["id"]]
        await device.nothing_more()
    finally:
        await device.ws.close()
        await in_a.close()
        await in_b.close()


async def test_an_offline_device_gets_its_messages_from_region_bs_inbox_on_reconnect(
        regions: TwoRegions) -> None:
    in_b = regions.inbox(regions.redis_b)
    try:
        async with regions.push_api() as api:
            device = await connect(regions.edge_b, "off-b")
            await seen_in_a(regions, {"off-b": "edge-b"})
            first = await push(api, to_clients("off-b", data=0))
            assert await device.next_ids(1) == [first["id"]]
            await device.ws.close()
            await seen_in_a(regions, {"off-b": None})  # its unregister reached region a
            sent = [(await push(api, to_clients("off-b", data=i)))["id"] for i in range(1, 4)]

            async def stored_in_b() -> bool:  # routed while the device was away
                return await inbox_ids(in_b, "off-b", first["id"]) == sent
            await eventually(stored_in_b)
            again = await connect(regions.edge_b, "off-b", last_id=first["id"])
            try:
                assert await again.next_ids(3) == sent
                assert [m["data"] for m in again.received] == [1, 2, 3]
                await again.nothing_more()
            finally:
                await again.ws.close()
    finally:
        await in_b.close()


async def test_a_broadcast_from_region_a_reaches_both_edges_and_both_histories(
        regions: TwoRegions) -> None:
    on_a = await connect(regions.edge_a, "bc-a")
    on_b = await connect(regions.edge_b, "bc-b")
    history_b = RedisBroadcastLog.from_url(regions.redis_b.url, max_entries=1000)
    try:
        await seen_in_a(regions, {"bc-a": "edge-a", "bc-b": "edge-b"})
        async with regions.push_api() as api:
            everyone = await push(api, {"to": {"broadcast": True}, "data": "all"})
            assert await on_a.next_ids(1) == [everyone["id"]]
            assert await on_b.next_ids(1) == [everyone["id"]]
            await on_b.ws.close()
            await seen_in_a(regions, {"bc-a": "edge-a", "bc-b": None})
            missed = await push(api, {"to": {"broadcast": True}, "data": "missed"})
            assert await on_a.next_ids(1) == [missed["id"]]

        async def kept_in_b() -> bool:
            return [b.id for b in await history_b.after("", 10)] == [everyone["id"],
                                                                      missed["id"]]
        await eventually(kept_in_b)
        # A device resuming on edge b is replayed the broadcast it missed, from b's history.
        again = await connect(regions.edge_b, "bc-b", last_id=everyone["id"])
        try:
            assert await again.next_ids(1) == [missed["id"]]
            assert again.received[0]["data"] == "missed"
            await again.nothing_more()
        finally:
            await again.ws.close()
    finally:
        await on_a.ws.close()
        await history_b.close()


async def test_a_device_region_a_has_not_seen_is_reached_live_by_region_bs_router(
        tmp_path: Path, redis_factory: Callable[..., RedisServer]) -> None:
    """The replication lag at its worst: region a never hears of region b's connections (edge b
    has no peer, so nothing replicates), and every message for the device is sent to region a.
    Region a's router sees the device connected nowhere and forwards to region b, whose router
    finds it in b's registry: delivered live, and a resume with the newest id loses nothing."""
    a, b = redis_factory(), redis_factory()
    in_a, in_b = {"ZUULPUSH_REDIS_URL": a.url}, {"ZUULPUSH_REDIS_URL": b.url}
    started = start_many(tmp_path, [
        (EDGE, in_b, ("--node-id", "edge-b", "--region", "b")),
        (API, in_a, ()),
        (ROUTER, in_a, ("--region", "a", "--peer-region", f"b={b.url}")),
        (ROUTER, in_b, ("--region", "b", "--peer-region", f"a={a.url}")),
    ])
    edge_b, api_a = started[0], started[1]
    registry_a = RedisRegistry.from_url(a.url)
    try:
        device = await connect(edge_b, "unseen")
        async with push_api(api_a.api, api_a.api_key) as api:
            sent = [(await push(api, to_clients("unseen", data=i)))["id"] for i in range(3)]
            assert await device.next_ids(3) == sent  # live, in order
            assert (await registry_a.locate_many(["unseen"])) == {}  # a never saw it
            await device.ws.close()
            later = [(await push(api, to_clients("unseen", data=i)))["id"] for i in range(3, 5)]

        in_b_inbox = RedisInbox.from_url(b.url, max_per_client=1000)
        try:
            async def stored_in_b() -> bool:
                return await inbox_ids(in_b_inbox, "unseen", sent[-1]) == later
            await eventually(stored_in_b)
        finally:
            await in_b_inbox.close()
        again = await connect(edge_b, "unseen", last_id=sent[-1])
        try:
            assert await again.next_ids(2) == later
            await again.nothing_more()
        finally:
            await again.ws.close()
    finally:
        await registry_a.close()
        stop_all([started[2], started[3], started[1], started[0]])
