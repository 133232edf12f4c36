"""What the fault suites share: the load, the accounting and the table.

`Pusher` sends steadily through an API and remembers what was accepted (202), and when;
`account` waits (bounded) until every accepted id reached its device, then counts what did not
in the inboxes (waiting) or nowhere (lost); each test adds a `Row` to the module's table, printed
with `pytest -s` and written to `faults.json` and `faults.md` in pytest's base temp directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest

from router.stores.redis_inbox import RedisInbox
from tests.support.balancer import BalancerProcess
from tests.support.redis_servers import RedisServer
from tests.support.sdk_devices import DeviceProcess, start_devices, stop_devices

from .clients import host_port
from .servers import API, EDGE, ROUTER, SECRET, Job, ServerProcess, start_many

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
    reordered: int = 0
    """First deliveries older (by id) than one the device had already been handed: the
    reorderings at least once has to survive (a resume from the newer must not remove the
    older)."""


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
            "| repeats dropped | reordered | slowest push s | settled in s |")
    lines = [head, "|" + "---|" * 12]
    lines += [f"| {r.fault} | {r.injected} | {r.sent} | {r.refused} | {r.delivered} "
              f"| {r.waiting} | {r.lost} | {r.duplicates} | {r.repeats_dropped} "
              f"| {r.reordered} | {r.max_push_s:.2f} | {r.settle_s:.1f} |" for r in rows]
    return "\n".join(lines)


# load and accounting

@dataclass
class Pusher:
    """Sends batches to the clients round robin until stopped; what was accepted, per client."""

    api: ServerProcess
    clients: list[str]
    sent: dict[str, list[str]] = field(default_factory=dict)
    accepted_at: dict[str, float] = field(default_factory=dict)
    """When the API's 202 for each id came (`time.monotonic()`)."""
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
        await self.send(session, targets)

    async def send(self, session: aiohttp.ClientSession, targets: list[str]) -> None:
        """One batch request: a message to each of `targets`, recorded as accepted or not."""
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
            self.refused += len(targets)
            return
        now = time.monotonic()
        for client, result in zip(targets, answer["results"], strict=True):
            if "id" in result:
                self.sent.setdefault(client, []).append(result["id"])
                self.accepted_at[result["id"]] = now
            else:
                self.refused += 1

    def stop(self) -> None:
        self._stop.set()

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.sent.values())

    def since(self, t: float) -> dict[str, set[str]]:
        """The ids accepted at `t` or later, per client."""
        return {c: {i for i in ids if self.accepted_at[i] >= t} for c, ids in self.sent.items()}


async def gather_reports(devices: list[DeviceProcess]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for report in await asyncio.gather(*(d.report() for d in devices)):
        merged.update(report)
    return merged


def delivered_ids(report: dict[str, Any]) -> list[str]:
    return [m for m, _ in report["messages"]]


async def account(fault: str, injected: int, pushers: Pusher | Sequence[Pusher],
                  devices: list[DeviceProcess], inbox_urls: list[str], *,
                  required: dict[str, set[str]] | None = None) -> Row:
    """Wait (bounded) until every accepted id reached its device; then count what did not, in
    the inboxes (waiting) or nowhere (lost). `required`: the ids that must arrive, when not
    every id accepted (a Redis restarted empty loses what it held by design); the others may
    still be delivered, never twice."""
    pushers = [pushers] if isinstance(pushers, Pusher) else list(pushers)
    sent: dict[str, set[str]] = {}
    for pusher in pushers:
        for client, ids in pusher.sent.items():
            sent.setdefault(client, set()).update(ids)
    wanted = sent if required is None else required
    began = time.monotonic()
    while True:
        reports = await gather_reports(devices)
        missing = {c: ids - set(delivered_ids(reports[c])) for c, ids in wanted.items()}
        if not any(missing.values()) or time.monotonic() - began > SETTLE_S:
            break
        await asyncio.sleep(0.5)
    settle_s = time.monotonic() - began
    kept = await inbox_ids(inbox_urls, list(missing))
    waiting = sum(len(m & kept.get(c, set())) for c, m in missing.items())
    lost = sum(len(m - kept.get(c, set())) for c, m in missing.items())
    duplicates = sum(n - 1 for r in reports.values()
                     for n in Counter(delivered_ids(r)).values() if n > 1)
    strangers = sum(len(set(delivered_ids(reports[c])) - sent.get(c, set())) for c in reports)
    assert strangers == 0, f"{strangers} ids delivered that the API never accepted for them"
    total = sum(len(ids) for ids in wanted.values())
    return Row(fault, injected, total, sum(p.refused for p in pushers),
               total - waiting - lost, waiting, lost, duplicates,
               sum(r["duplicates"] for r in reports.values()),
               round(max(p.slowest_s for p in pushers), 2), round(settle_s, 1),
               sum(reordered(delivered_ids(r)) for r in reports.values()))


async def inbox_ids(urls: list[str], clients: list[str]) -> dict[str, set[str]]:
    """What the inboxes on these Redis servers hold for these clients."""
    kept: dict[str, set[str]] = {}
    for url in urls:
        inbox = RedisInbox.from_url(url, max_per_client=10_000)
        try:
            for client in clients:
                kept.setdefault(client, set()).update(
                    e.id for e in await inbox.after(client, None, 10_000))
        finally:
            await inbox.close()
    return kept


def reordered(ids: list[str]) -> int:
    """Ids handed on after a newer one."""
    newest, count = "", 0
    for message_id in ids:
        if message_id < newest:
            count += 1
        newest = max(newest, message_id)
    return count


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


# a one-region fleet

@dataclass
class FaultFleet:
    redis: RedisServer
    edges: dict[str, ServerProcess]
    api: ServerProcess
    routers: list[ServerProcess]
    balancer: BalancerProcess
    devices: list[DeviceProcess]
    killed: list[ServerProcess] = field(default_factory=list)
    proxies: dict[str, BalancerProcess] = field(default_factory=dict)

    @property
    def clients(self) -> list[str]:
        return [c for d in self.devices for c in d.client_ids]

    def kill(self, server: ServerProcess) -> None:
        server.kill()
        self.killed.append(server)


class FleetFactory(Protocol):
    def __call__(self, *, durable: bool = True, edge_env: Mapping[str, str] | None = None,
                 proxied: tuple[str, ...] = (), claim_idle_s: float = 1.0,
                 idle_timeout_s: float = 2.5 * HEARTBEAT_S) -> Awaitable[FaultFleet]: ...


@pytest.fixture
async def fault_fleet(tmp_path: Path, redis_factory: Callable[..., RedisServer]
                      ) -> AsyncIterator[FleetFactory]:
    """Starts fleets: Redis (`durable`: with the AOF, `appendfsync always`), edge-a and edge-b
    behind a balancer (with `edge_env` added to theirs), the API and two routers, and `DEVICES`
    SDK devices (`idle_timeout_s`: silence after which they take a connection for dead), all
    connected; routers claim what another took after `claim_idle_s`. The
    processes named in `proxied` ("edge-a", "router-0") reach
    Redis through a balancer of their own (`FaultFleet.proxies`) that a test can cut or slow."""
    fleets: list[FaultFleet] = []

    async def start(*, durable: bool = True, edge_env: Mapping[str, str] | None = None,
                    proxied: tuple[str, ...] = (), claim_idle_s: float = 1.0,
                    idle_timeout_s: float = 2.5 * HEARTBEAT_S) -> FaultFleet:
        redis = redis_factory(*DURABLE) if durable else redis_factory()
        env = {"ZUULPUSH_REDIS_URL": redis.url, "ZUULPUSH_CLAIM_IDLE_S": str(claim_idle_s),
               "ZUULPUSH_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S)}
        edges = {**env, **(edge_env or {})}
        proxies = {name: await BalancerProcess.start([("127.0.0.1", redis.port)],
                                                     tmp_path / f"redis-proxy-{name}.err")
                   for name in proxied}

        def via(name: str, base: dict[str, str]) -> dict[str, str]:
            proxy = proxies.get(name)
            return base if proxy is None else \
                {**base, "ZUULPUSH_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"}

        jobs: list[Job] = [(EDGE, via("edge-a", edges), ("--node-id", "edge-a")),
                           (EDGE, via("edge-b", edges), ("--node-id", "edge-b")),
                           (API, env, ()), (ROUTER, via("router-0", env), ()),
                           (ROUTER, via("router-1", env), ())]
        a, b, api, *routers = await asyncio.to_thread(start_many, tmp_path, jobs)
        balancer = await BalancerProcess.start([host_port(a.edge), host_port(b.edge)],
                                               tmp_path / "balancer.err")
        fleet = FaultFleet(redis, {"edge-a": a, "edge-b": b}, api, routers, balancer, [],
                           proxies=proxies)
        fleets.append(fleet)
        fleet.devices = await start_devices(balancer.url, SECRET, "dev", DEVICES, 1, tmp_path,
                                            idle_timeout_s=idle_timeout_s)
        await all_connected(fleet.devices)
        return fleet

    yield start
    failures: list[str] = []
    for fleet in fleets:
        await stop_devices(fleet.devices)
        await fleet.balancer.stop()
        for proxy in fleet.proxies.values():
            await proxy.stop()
        for server in [*fleet.routers, fleet.api, *fleet.edges.values()]:
            if server in fleet.killed:
                continue
            code = await asyncio.to_thread(server.stop)
            if code != 0:
                failures.append(f"pid {server.pid} exited {code}:\n{server.stderr_text()}")
    assert not failures, "unclean shutdown: " + "\n".join(failures)
