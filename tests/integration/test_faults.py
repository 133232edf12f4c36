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
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from registry.redis import RedisRegistry
from router.redis_inbox import RedisInbox
from tests.support.balancer import BalancerProcess
from tests.support.redis_servers import RedisServer
from tests.support.sdk_devices import DeviceProcess, start_devices, stop_devices

from .clients import host_port
from .servers import (
    API,
    EDGE,
    ROUTER,
    SECRET,
    Job,
    ServerProcess,
    start_many,
    two_region_jobs,
)

DEVICES = 40
HEARTBEAT_S = 1.0
PUSH_EVERY_S = 0.1
PUSH_BATCH = 4
"""The pusher sends a batch of this many messages every `PUSH_EVERY_S` (40 a second)."""
PUSH_TIMEOUT_S = 10.0
LOAD_BEFORE_S = 2.0
"""Load before the fault, so it strikes with messages in flight."""
LOAD_AFTER_S = 3.0
"""Load after the heal, so recovery is proven with new messages too."""
SETTLE_S = 30.0
"""How long every accepted id may take to reach its device after the load stops."""
DURABLE = ("--appendonly", "yes", "--appendfsync", "always")


@dataclass
class Row:
    """One line of the fault table."""

    fault: str
    injected: int
    sent: int
    refused: int
    delivered: int
    waiting: int
    lost: int
    duplicates: int
    repeats_dropped: int
    max_push_s: float
    settle_s: float


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Row]]:
    """The rows the tests add; printed and written (JSON and markdown) at the end."""
    rows: list[Row] = []
    yield rows
    if not rows:
        return
    text = markdown(rows)
    print("\n" + text)
    base = tmp_path_factory.getbasetemp()
    (base / "faults.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    (base / "faults.md").write_text(text + "\n")
    print(f"written to {base / 'faults.json'} and {base / 'faults.md'}")


def markdown(rows: list[Row]) -> str:
    head = ("| fault | injected | sent | refused | delivered | waiting | lost | duplicates "
            "| repeats dropped | slowest push s | settled in s |")
    lines = [head, "|" + "---|" * 11]
    lines += [f"| {r.fault} | {r.injected} | {r.sent} | {r.refused} | {r.delivered} "
              f"| {r.waiting} | {r.lost} | {r.duplicates} | {r.repeats_dropped} "
              f"| {r.max_push_s:.2f} | {r.settle_s:.1f} |" for r in rows]
    return "\n".join(lines)


# load and accounting

@dataclass
class Pusher:
    """Sends batches to the clients round robin until stopped; what was accepted, per client."""

    api: ServerProcess
    clients: list[str]
    sent: dict[str, list[str]] = field(default_factory=dict)
    refused: int = 0
    slowest_s: float = 0.0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _n: int = 0

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while not self._stop.is_set():
                began = time.monotonic()
                await self._one(session)
                self.slowest_s = max(self.slowest_s, time.monotonic() - began)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), PUSH_EVERY_S)

    async def _one(self, session: aiohttp.ClientSession) -> None:
        targets = [self.clients[(self._n + i) % len(self.clients)] for i in range(PUSH_BATCH)]
        self._n += PUSH_BATCH
        body = {"messages": [{"to": {"clients": [c]}, "data": self._n} for c in targets]}
        try:
            async with session.post(self.api.api + "/v1/push/batch", json=body,
                                    headers={"Authorization": f"Bearer {self.api.api_key}"},
                                    timeout=aiohttp.ClientTimeout(total=PUSH_TIMEOUT_S)) as r:
                answer = await r.json(content_type=None)
                ok = r.status == 202
        except (aiohttp.ClientError, TimeoutError, ValueError):
            ok = False
        if not ok:  # not accepted: the sender knows it must retry; not counted as sent
            self.refused += PUSH_BATCH
            return
        for client, result in zip(targets, answer["results"], strict=True):
            if "id" in result:
                self.sent.setdefault(client, []).append(result["id"])
            else:
                self.refused += 1

    def stop(self) -> None:
        self._stop.set()

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.sent.values())


async def gather_reports(devices: list[DeviceProcess]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for report in await asyncio.gather(*(d.report() for d in devices)):
        merged.update(report)
    return merged


def delivered_ids(report: dict[str, Any]) -> list[str]:
    return [m for m, _ in report["messages"]]


async def account(fault: str, injected: int, pusher: Pusher, devices: list[DeviceProcess],
                  inbox_urls: list[str]) -> Row:
    """Wait (bounded) until every accepted id reached its device; then count what did not, in
    the inboxes (waiting) or nowhere (lost)."""
    began = time.monotonic()
    while True:
        reports = await gather_reports(devices)
        missing = {c: set(ids) - set(delivered_ids(reports[c])) for c, ids in pusher.sent.items()}
        if not any(missing.values()) or time.monotonic() - began > SETTLE_S:
            break
        await asyncio.sleep(0.5)
    settle_s = time.monotonic() - began
    kept: dict[str, set[str]] = {}
    for url in inbox_urls:
        inbox = RedisInbox.from_url(url, max_per_client=10_000)
        try:
            for client in missing:
                kept.setdefault(client, set()).update(
                    e.id for e in await inbox.after(client, None, 10_000))
        finally:
            await inbox.close()
    waiting = sum(len(m & kept.get(c, set())) for c, m in missing.items())
    lost = sum(len(m - kept.get(c, set())) for c, m in missing.items())
    duplicates = sum(n - 1 for r in reports.values()
                     for n in Counter(delivered_ids(r)).values() if n > 1)
    strangers = sum(len(set(delivered_ids(reports[c])) - set(pusher.sent.get(c, [])))
                    for c in reports)
    assert strangers == 0, f"{strangers} ids delivered that the API never accepted for them"
    return Row(fault, injected, pusher.total, pusher.refused, pusher.total - waiting - lost,
               waiting, lost, duplicates, sum(r["duplicates"] for r in reports.values()),
               round(pusher.slowest_s, 2), round(settle_s, 1))


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.25)


async def all_connected(devices: list[DeviceProcess], timeout_s: float = 30.0) -> None:
    async def check() -> bool:
        statuses = await asyncio.gather(*(d.status() for d in devices))
        return sum(s["connected"] for s in statuses) == sum(d.count for d in devices)
    await eventually(check, timeout_s, "every device connected")


# one region

@dataclass
class FaultFleet:
    redis: RedisServer
    edges: dict[str, ServerProcess]
    api: ServerProcess
    routers: list[ServerProcess]
    balancer: BalancerProcess
    devices: list[DeviceProcess]
    killed: list[ServerProcess] = field(default_factory=list)

    @property
    def clients(self) -> list[str]:
        return [c for d in self.devices for c in d.client_ids]

    def kill(self, server: ServerProcess) -> None:
        server.kill()
        self.killed.append(server)


FleetFactory = Callable[[], Awaitable[FaultFleet]]


@pytest.fixture
async def fault_fleet(tmp_path: Path, redis_factory: Callable[..., RedisServer]
                      ) -> AsyncIterator[FleetFactory]:
    fleets: list[FaultFleet] = []

    async def start() -> FaultFleet:
        redis = redis_factory(*DURABLE)
        env = {"ZUULPUSH_REDIS_URL": redis.url, "ZUULPUSH_CLAIM_IDLE_S": "1",
               "ZUULPUSH_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S)}
        jobs: list[Job] = [(EDGE, env, ("--node-id", "edge-a")),
                           (EDGE, env, ("--node-id", "edge-b")),
                           (API, env, ()), (ROUTER, env, ()), (ROUTER, env, ())]
        a, b, api, *routers = await asyncio.to_thread(start_many, tmp_path, jobs)
        balancer = await BalancerProcess.start([host_port(a.edge), host_port(b.edge)],
                                               tmp_path / "balancer.err")
        fleet = FaultFleet(redis, {"edge-a": a, "edge-b": b}, api, routers, balancer, [])
        fleets.append(fleet)
        fleet.devices = await start_devices(balancer.url, SECRET, "dev", DEVICES, 1, tmp_path,
                                            idle_timeout_s=2.5 * HEARTBEAT_S)
        await all_connected(fleet.devices)
        return fleet

    yield start
    failures: list[str] = []
    for fleet in fleets:
        await stop_devices(fleet.devices)
        await fleet.balancer.stop()
        for server in [*fleet.routers, fleet.api, *fleet.edges.values()]:
            if server in fleet.killed:
                continue
            code = await asyncio.to_thread(server.stop)
            if code != 0:
                failures.append(f"pid {server.pid} exited {code}:\n{server.stderr_text()}")
    assert not failures, "unclean shutdown: " + "\n".join(failures)


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
