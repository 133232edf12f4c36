"""The whole push path across processes on one real Redis: two `zuulpush edge`, `zuulpush api`
and `zuulpush router` (one or two), devices on the `websockets` client.

Every process is started by `servers.start_server` and stopped by its PID (SIGTERM, checked for
a clean exit; the router this file SIGKILLs on purpose is reaped by its PID and left out of that
check). Every wait is bounded. Devices ack what they get, as a real SDK does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from websockets.asyncio.client import ClientConnection

from registry.redis import RedisRegistry
from router.stores.redis_inbox import RedisInbox
from tests.support.redis_servers import RedisServer

from .clients import PushApi, push_api, ws_connect, ws_url
from .servers import (
    API,
    EDGE,
    ROOT,
    ROUTER,
    Job,
    ServerProcess,
    start_many,
    start_server,
    stop_all,
)

QUIET_S = 0.3
"""How long 'nothing else arrives' is watched, after a later message proved the path is live."""


@dataclass
class Fleet:
    """One Redis and the processes of a fleet on it."""

    redis: RedisServer
    tmp_path: Path
    env: dict[str, str]
    edges: list[ServerProcess] = field(default_factory=list)
    api: ServerProcess | None = None
    routers: list[ServerProcess] = field(default_factory=list)
    killed: list[ServerProcess] = field(default_factory=list)

    def start(self, command: tuple[str, ...], *args: str) -> ServerProcess:
        return start_server(self.tmp_path, self.env, args, command=command)

    def start_routers(self, n: int = 1, *args: str) -> list[ServerProcess]:
        started = start_many(self.tmp_path, [(ROUTER, self.env, args)] * n)
        self.routers += started
        return started

    def kill(self, router: ServerProcess) -> None:
        router.kill()
        self.routers.remove(router)
        self.killed.append(router)

    def token(self, client_id: str, user_id: str = "user", device_type: str = "phone") -> str:
        return self.edges[0].token(client_id, user_id, device_type)

    @property
    def a(self) -> ServerProcess:
        return self.edges[0]

    @property
    def b(self) -> ServerProcess:
        return self.edges[1]


FleetFactory = Callable[..., Fleet]


@pytest.fixture
def fleet_factory(tmp_path: Path, redis_factory: Callable[..., RedisServer]
                  ) -> Iterator[FleetFactory]:
    """`fleet_factory(routers=1, **env)`: Redis, edges `edge-a` and `edge-b`, the API and
    `routers` routers (0: start them later with `fleet.start_routers`), started concurrently."""
    fleets: list[Fleet] = []

    def start(routers: int = 1, **env: str) -> Fleet:
        redis = redis_factory()
        fleet = Fleet(redis, tmp_path, {"ZUULPUSH_REDIS_URL": redis.url, **env})
        fleets.append(fleet)
        jobs: list[Job] = [(EDGE, fleet.env, ("--node-id", "edge-a")),
                           (EDGE, fleet.env, ("--node-id", "edge-b")), (API, fleet.env, ())]
        jobs += [(ROUTER, fleet.env, ())] * routers
        started = start_many(tmp_path, jobs)
        fleet.edges, fleet.api, fleet.routers = started[:2], started[2], started[3:]
        return fleet

    yield start
    for fleet in fleets:
        stop_all([*fleet.routers, fleet.api, *fleet.edges] if fleet.api else fleet.edges)


# Devices

@dataclass
class Device:
    """A connected device that acks everything it gets and remembers it in order."""

    ws: ClientConnection
    received: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [m["id"] for m in self.received]

    async def next(self, timeout_s: float = 5.0) -> dict[str, Any]:
        message = orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout_s))
        assert isinstance(message, dict), message
        self.received.append(message)
        await self.ws.send(orjson.dumps({"type": "ack", "id": message["id"]}).decode())
        return message

    async def next_ids(self, n: int, timeout_s: float = 5.0) -> list[str]:
        async def collect() -> list[str]:
            return [(await self.next(timeout_s))["id"] for _ in range(n)]
        return await asyncio.wait_for(collect(), timeout_s)

    async def nothing_more(self, quiet_s: float = QUIET_S) -> None:
        with pytest.raises(TimeoutError):
            extra = await self.next(quiet_s)
            raise AssertionError(f"unexpected message {extra}")


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(0.02)


async def registered(fleet: Fleet, expected: dict[str, str]) -> None:
    """Wait until the registry places each client on its node (or nowhere, for None)."""
    registry = RedisRegistry.from_url(fleet.redis.url)
    try:
        async def placed() -> bool:
            found = await registry.lookup_many(list(expected))
            return {c: found[c].node_id for c in found} == {
                c: n for c, n in expected.items() if n}
        await eventually(placed)
    finally:
        await registry.close()


async def push(api: PushApi, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = await api.push(body)
    assert status == 202, answer
    return answer


def to_clients(*clients: str, **extra: Any) -> dict[str, Any]:
    return {"to": {"clients": list(clients)}, "data": extra.pop("data", None), **extra}


async def connect(fleet: Fleet, edge: ServerProcess, client_id: str, user_id: str = "user",
                  device_type: str = "phone", **query: str) -> Device:
    ws = await ws_connect(ws_url(edge.edge, token=fleet.token(client_id, user_id, device_type),
                                 **query))
    return Device(ws)


async def pending_of(fleet: Fleet, router_id: str) -> int:
    """Queue entries taken and not done by the consumers of the router process `router_id`."""
    client = Redis.from_url(fleet.redis.url)
    try:
        total = 0
        for priority in ("high", "normal", "low"):
            with contextlib.suppress(ResponseError):  # no such stream yet
                for consumer in await client.xinfo_consumers(f"{{zp:q}}:{priority}", "routers"):
                    if consumer["name"].decode().startswith(router_id + "-"):
                        total += int(consumer["pending"])
        return total
    finally:
        await client.aclose()


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


# The tests

async def test_a_device_on_edge_b_gets_what_the_api_was_given(fleet_factory: FleetFactory
                                                               ) -> None:
    fleet = fleet_factory()
    assert fleet.api is not None
    device = await connect(fleet, fleet.b, "cb")
    try:
        await registered(fleet, {"cb": "edge-b"})
        async with push_api(fleet.api.api, fleet.api.api_key) as api:
            sent = await push(api, to_clients("cb", topic="news", data={"n": 1}))
        assert sent["targets"] == 1
        got = await device.next()
        assert (got["id"], got["topic"], got["data"]) == (sent["id"], "news", {"n": 1})
    finally:
        await device.ws.close()


async def test_a_users_devices_over_two_edges_narrowed_by_device_type(
        fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory()
    assert fleet.api is not None
    phone = await connect(fleet, fleet.a, "u-phone", "u", "phone")
    tv = await connect(fleet, fleet.b, "u-tv", "u", "tv")
    tablet = await connect(fleet, fleet.b, "u-tablet", "u", "tablet")
    try:
        await registered(fleet, {"u-phone": "edge-a", "u-tv": "edge-b", "u-tablet": "edge-b"})
        async with push_api(fleet.api.api, fleet.api.api_key) as api:
            sent = await push(api, {"to": {"users": ["u"], "device_types": ["phone", "tv"]},
                                    "data": "for phones and tvs"})
            assert sent["targets"] == 2
            assert await phone.next_ids(1) == [sent["id"]]
            assert await tv.next_ids(1) == [sent["id"]]
            # The tablet's next message is one sent to it after: the first never came.
            later = await push(api, {"to": {"users": ["u"], "device_types": ["tablet"]},
                                     "data": "for tablets"})
            assert later["targets"] == 1
            assert await tablet.next_ids(1) == [later["id"]]
        await phone.nothing_more()
        await tv.nothing_more()
    finally:
        for device in (phone, tv, tablet):
            await device.ws.close()


async def test_an_offline_device_gets_its_messages_in_order_on_reconnect(
        fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory()
    assert fleet.api is not None
    inbox = RedisInbox.from_url(fleet.redis.url, max_per_client=1000)
    try:
        async with push_api(fleet.api.api, fleet.api.api_key) as api:
            device = await connect(fleet, fleet.a, "off")
            await registered(fleet, {"off": "edge-a"})
            first = await push(api, to_clients("off", data=0))
            assert await device.next_ids(1) == [first["id"]]
            await device.ws.close()
            await registered(fleet, {"off": None})
            sent = [(await push(api, to_clients("off", data=i)))["id"] for i in range(1, 6)]

            async def stored() -> bool:  # routed while the device was away
                return [e.id for e in await inbox.after("off", first["id"], 100)] == sent
            await eventually(stored)
            again = await connect(fleet, fleet.b, "off", last_id=first["id"])
            try:
                assert await again.next_ids(5) == sent
                assert [m["data"] for m in again.received] == [1, 2, 3, 4, 5]
                await again.nothing_more()
            finally:
                await again.ws.close()
    finally:
        await inbox.close()


async def test_a_router_killed_under_load_loses_nothing(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(routers=2, ZUULPUSH_CLAIM_IDLE_S="1")
    assert fleet.api is not None
    clients = [f"load-{i}" for i in range(10)]
    devices = [await connect(fleet, (fleet.a, fleet.b)[i % 2], c) for i, c in enumerate(clients)]
    got: set[str] = set()
    sent: set[str] = set()
    everything = asyncio.Event()
    dead: list[str] = []
    held: list[int] = []  # entries the killed router had taken and not done

    async def read(device: Device) -> None:
        while True:
            got.add((await device.next(30.0))["id"])  # dedup by id: at least once
            if len(got) >= 1000 and sent <= got:
                everything.set()

    readers = [asyncio.create_task(read(d)) for d in devices]
    try:
        await registered(fleet, {c: ("edge-a", "edge-b")[i % 2] for i, c in enumerate(clients)})
        async with push_api(fleet.api.api, fleet.api.api_key) as api:
            gate = asyncio.Semaphore(32)

            async def one(i: int) -> None:
                async with gate:
                    sent.add((await push(api, to_clients(clients[i % 10], data=i)))["id"])
                if i == 500:
                    dead.append(fleet.routers[0].node_id)
                    await asyncio.to_thread(fleet.kill, fleet.routers[0])
                    held.append(await pending_of(fleet, dead[0]))

            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(1000))), 30)
        assert len(sent) == 1000
        if not sent <= got:
            with contextlib.suppress(TimeoutError):  # then the assert says what is missing
                await asyncio.wait_for(everything.wait(), 15)
        assert sent - got == set(), f"{len(sent - got)} of 1000 never arrived"
        assert got <= sent
        print(f"the killed router held {held[0]} taken-not-done entries")
        await eventually(lambda: _equals(pending_of(fleet, dead[0]), 0))  # all claimed
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for device in devices:
            await device.ws.close()


async def test_a_backlog_is_served_high_priority_first(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(routers=0)
    assert fleet.api is not None
    device = await connect(fleet, fleet.a, "prio")
    try:
        await registered(fleet, {"prio": "edge-a"})
        async with push_api(fleet.api.api, fleet.api.api_key) as api:
            low = [(await push(api, to_clients("prio", priority="low")))["id"]
                   for _ in range(40)]
            high = [(await push(api, to_clients("prio", priority="high")))["id"]
                    for _ in range(40)]
        await asyncio.to_thread(fleet.start_routers, 1)  # the devices answer pings meanwhile
        order = await device.next_ids(80, 10.0)
        assert sorted(order) == sorted(low + high)
        # Weighted rounds of 8 high : 1 low, so low is never starved: the 40 high ones are out
        # within the first 45, and each priority keeps its own order.
        assert set(order[:8]) <= set(high)
        assert set(high) <= set(order[:45])
        assert [i for i in order if i in set(high)] == high
        assert [i for i in order if i in set(low)] == low
    finally:
        await device.ws.close()


async def test_expired_messages_are_never_delivered(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory(routers=0)
    assert fleet.api is not None
    inbox = RedisInbox.from_url(fleet.redis.url, max_per_client=1000)
    device = await connect(fleet, fleet.a, "late")
    try:
        await registered(fleet, {"late": "edge-a"})
        async with push_api(fleet.api.api, fleet.api.api_key) as api:
            for i in range(5):
                await push(api, to_clients("late", data=i, ttl=1))
            await asyncio.sleep(1.5)
            await asyncio.to_thread(fleet.start_routers, 1)  # the devices answer pings meanwhile
            marker = await push(api, to_clients("late", data="after", ttl=60))
        assert await device.next_ids(1) == [marker["id"]]
        await device.nothing_more()
        assert [e.id for e in await inbox.after("late", None, 100)] in ([], [marker["id"]])
    finally:
        await device.ws.close()
        await inbox.close()


async def test_duplicates_by_dedup_key_are_delivered_once(fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory()
    assert fleet.api is not None
    device = await connect(fleet, fleet.b, "dup")
    try:
        await registered(fleet, {"dup": "edge-b"})
        async with push_api(fleet.api.api, fleet.api.api_key) as api:
            answers = [await push(api, to_clients("dup", data=i, dedup_key="order-42"))
                       for i in range(3)]
            marker = await push(api, to_clients("dup", data="after"))
        assert [a.get("duplicate", False) for a in answers] == [False, True, True]
        assert answers[0]["targets"] == 1
        assert await device.next_ids(2) == [answers[0]["id"], marker["id"]]
        assert device.received[0]["data"] == 0
        await device.nothing_more()
    finally:
        await device.ws.close()


def test_api_and_router_without_redis_explain_themselves() -> None:
    for args in (("api", "--api-port", "0"), ("router",)):
        done = subprocess.run([sys.executable, "-m", "zuulpush", *args], cwd=ROOT, text=True,
                              capture_output=True, timeout=30,
                              env={k: v for k, v in os.environ.items()
                                   if not k.startswith("ZUULPUSH_")})
        assert done.returncode == 2 and "--redis" in done.stderr, done


async def test_a_device_that_never_connects_pulls_its_inbox_and_acks(
        fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory()
    assert fleet.api is not None
    headers = {"Authorization": f"Bearer {fleet.token('tv-1', 'viewer', 'tv')}"}
    inbox = RedisInbox.from_url(fleet.redis.url, max_per_client=1000)
    try:
        async with push_api(fleet.api.api, fleet.api.api_key) as api:
            sent = [(await push(api, to_clients("tv-1", data=i)))["id"] for i in range(3)]

            async def stored() -> bool:
                return len(await inbox.after("tv-1", None, 10)) == 3
            await eventually(stored)

            async def pull(after: str | None = None) -> dict[str, Any]:
                query = f"?limit=2&after={after}" if after else "?limit=2"
                async with api.session.get(f"{fleet.api.api}/v1/inbox{query}",
                                           headers=headers) as response:
                    assert response.status == 200, await response.text()
                    return dict(orjson.loads(await response.read()))

            first = await pull()
            assert [m["id"] for m in first["messages"]] == sent[:2] and first["more"]
            rest = await pull(sent[1])
            assert [m["id"] for m in rest["messages"]] == sent[2:] and not rest["more"]
            assert [m["data"] for m in first["messages"] + rest["messages"]] == [0, 1, 2]
            async with api.session.post(f"{fleet.api.api}/v1/inbox/ack", headers=headers,
                                        data=orjson.dumps({"ids": sent})) as response:
                assert response.status == 200
                assert orjson.loads(await response.read()) == {"removed": 3}
            assert (await pull())["messages"] == []
            # a device that only polls misses no broadcast of its type either
            await push(api, {"to": {"broadcast": True, "device_types": ["phone"]}, "data": "x"})
            tvs = await push(api, {"to": {"broadcast": True, "device_types": ["tv"]}, "data": "y"})

            async def pulled_the_broadcast() -> bool:
                return [m["id"] for m in (await pull(sent[2]))["messages"]] == [tvs["id"]]
            await eventually(pulled_the_broadcast)
    finally:
        await inbox.close()


async def test_a_resuming_device_gets_the_broadcasts_it_missed_of_its_type(
        fleet_factory: FleetFactory) -> None:
    fleet = fleet_factory()
    assert fleet.api is not None
    async with push_api(fleet.api.api, fleet.api.api_key) as api:
        tv = await connect(fleet, fleet.a, "bc-tv", device_type="tv")
        await registered(fleet, {"bc-tv": "edge-a"})
        first = await push(api, to_clients("bc-tv", data="before"))
        assert await tv.next_ids(1) == [first["id"]]
        await tv.ws.close()
        await registered(fleet, {"bc-tv": None})
        for_tvs = await push(api, {"to": {"broadcast": True, "device_types": ["tv"]},
                                   "data": "tvs"})
        await push(api, {"to": {"broadcast": True, "device_types": ["phone"]}, "data": "phones"})
        direct = await push(api, to_clients("bc-tv", data="direct"))
        await asyncio.sleep(0.5)  # routed while the device was away
        again = await connect(fleet, fleet.b, "bc-tv", device_type="tv", last_id=first["id"])
        try:
            assert await again.next_ids(2) == [for_tvs["id"], direct["id"]]
            await again.nothing_more()
        finally:
            await again.ws.close()
        fresh = await connect(fleet, fleet.b, "bc-new", device_type="tv")  # no last id
        try:
            await fresh.nothing_more()
        finally:
            await fresh.ws.close()
