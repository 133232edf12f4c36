"""The local two-region fleet (`deploy/local/fleet.py`) with Debian's HAProxy in front of each
region's edges: `fleet.py up` then `down` leaves no process behind, and a rolling restart of
every edge of both regions under live traffic loses no message.

The fleet is real: per region a `redis-server`, two `zuulpush edge`, a router and an API, and an
`haproxy` (tcp mode, `/healthz` checks); the devices are the client SDK in device processes
(`tests.support.sdk_devices`, at `nice` 10 as in test_herd), connected to their region's HAProxy,
never to an edge. `bash scripts/test` installs haproxy; without it these tests are skipped.
Every process is stopped by its PID and every wait is bounded. `pytest -s` prints the numbers.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deploy.local.fleet import Fleet, Restart, Service, in_rotation, start_ticks
from registry.redis import RedisRegistry
from tests.support.sdk_devices import DeviceProcess, start_devices, stop_devices
from zuulpush.client import PushClient

from .test_herd import all_connected, all_received, eventually, received, record

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None,
    reason="haproxy is not installed (Debian's haproxy package; `bash scripts/test` installs it)")

ROOT = Path(__file__).resolve().parents[2]
FLEET_PY = ROOT / "deploy" / "local" / "fleet.py"
HEARTBEAT_S = 2.0
DRAIN_WINDOW_S = 2.0
DEVICES = {"a": 200, "b": 100}
SEND_PER_S = 150
BATCH_EVERY_S = 0.1
DEVICE_NICE = 10
CLI_TIMEOUT_S = 90.0


def cli(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FLEET_PY), *args, "--base-dir", str(base)],
                          cwd=ROOT, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def alive(pids: dict[str, tuple[int, int]]) -> list[str]:
    """The services whose recorded process still runs (an exited one may linger as a zombie
    of whichever process inherited it: not running)."""
    return [name for name, (pid, ticks) in pids.items() if start_ticks(pid) == ticks]


def tracebacks(base: Path) -> list[str]:
    return [p.name for p in (base / "logs").glob("*.log") if "Traceback" in p.read_text()]


# 1. up, then down: nothing left

@pytest.mark.timeout(120)
async def test_fleet_py_up_then_down_leaves_no_process_behind(tmp_path: Path) -> None:
    """`fleet.py up` (a separate process that returns once the fleet is ready) starts twelve
    processes, and a second `up` refuses to start another fleet there; a device with a token
    from `fleet.py token`, on region a's HAProxy, gets a message pushed through region b's
    API; `fleet.py down` (another process) stops every one of them by its PID."""
    base = tmp_path / "fleet"
    up = await asyncio.to_thread(cli, base, "up")
    pids: dict[str, tuple[int, int]] = {}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((base / "fleet.json").read_text())
        assert (base / "fleet.json").stat().st_mode & 0o077 == 0  # it holds the secrets
        pids = {s["name"]: (s["pid"], s["ticks"]) for s in state["services"]}
        assert len(pids) == 12 and sorted(alive(pids)) == sorted(pids)
        again = await asyncio.to_thread(cli, base, "up")
        assert again.returncode == 1 and "already up" in again.stderr, again.stderr
        status = await asyncio.to_thread(cli, base, "status", "--json")
        assert status.returncode == 0, status.stderr
        seen = json.loads(status.stdout)["haproxy"]
        assert {r: sorted(e for e, s in servers.items() if in_rotation(s))
                for r, servers in seen.items()} == {
            r: [f"{r}-edge-1", f"{r}-edge-2"] for r in ("a", "b")}, seen
        token = await asyncio.to_thread(cli, base, "token", "--client", "up-down-device")
        assert token.returncode == 0, token.stderr
        await a_push_crosses_regions(Fleet.load(base), token.stdout.strip())
    finally:
        down = await asyncio.to_thread(cli, base, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not alive(pids), f"left running: {alive(pids)}"
    assert not (base / "fleet.json").exists()
    assert not tracebacks(base)


async def a_push_crosses_regions(fleet: Fleet, token: str) -> None:
    """A device on region a's HAProxy, a push through region b's API: it arrives."""
    got: asyncio.Queue[str] = asyncio.Queue()
    device = PushClient(fleet.lb_url("a"), token,
                        on_message=lambda m: got.put_nowait(m.id))
    await device.start()
    try:
        await device.wait_connected(10)

        async def known_in_b() -> bool:  # through the registry's replication
            return "up-down-device" in (await placement(fleet, "b", ["up-down-device"]))[0]
        await eventually(known_in_b, 10, "the device in region b's registry")
        async with aiohttp.ClientSession() as session:
            sent = await push(session, fleet, "b", ["up-down-device"], "hello")
        assert await asyncio.wait_for(got.get(), 10) == sent[0]
    finally:
        await device.close()


# 2. a rolling restart under live traffic

@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """The fleet, in-process (`Fleet`); at teardown every process it started is stopped by its
    PID and must have exited 0 without a traceback (HAProxy: ended by the SIGTERM, its hard
    stop)."""
    env = {"ZUULPUSH_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S)}
    local = Fleet.plan(tmp_path / "fleet", drain_window_s=DRAIN_WINDOW_S, env=env)
    await asyncio.to_thread(local.up)
    services = list(local.services.values())
    try:
        yield local
    finally:
        await asyncio.to_thread(local.down)
    left = [s.name for s in services if local.is_running(s)]
    codes = {s.name: local.exit_code(s) for s in services}
    assert not left, left
    assert codes == {s.name: -signal.SIGTERM if s.kind == "haproxy" else 0
                     for s in services}, codes
    assert not tracebacks(local.base_dir), tracebacks(local.base_dir)


async def push(session: aiohttp.ClientSession, fleet: Fleet, region: str, targets: list[str],
               data: Any) -> list[str]:
    """`POST /v1/push/batch` through `region`'s API, one message per target: the ids of those
    it took, each for one client."""
    body = {"messages": [{"to": {"clients": [c]}, "data": data} for c in targets]}
    async with session.post(fleet.api_url(region) + "/v1/push/batch", json=body,
                            headers={"Authorization": f"Bearer {fleet.secrets.api_key}"},
                            timeout=aiohttp.ClientTimeout(total=10)) as response:
        answer = await response.json()
        assert response.status == 202, answer
    return [r["id"] for r in answer["results"] if r.get("targets") == 1]


class Sender:
    """`SEND_PER_S` messages a second to random devices, in a batch every `BATCH_EVERY_S` (split
    by the regions' device counts); each region's devices through their own region's API on even
    ticks and through the other region's on odd ones (its router forwards them to the device's
    region). Remembers what it sent to whom. Bounded: two minutes at most."""

    def __init__(self, fleet: Fleet, ids: dict[str, list[str]]) -> None:
        self.fleet = fleet
        self.ids = ids
        self.sent: dict[str, list[str]] = {c: [] for group in ids.values() for c in group}
        self.stop = asyncio.Event()

    @property
    def total(self) -> int:
        return sum(map(len, self.sent.values()))

    async def run(self) -> None:
        rng = random.Random(6)
        everyone = sum(map(len, self.ids.values()))
        per_batch = {r: round(SEND_PER_S * BATCH_EVERY_S * len(group) / everyone)
                     for r, group in self.ids.items()}
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            for tick in range(int(120 / BATCH_EVERY_S)):
                if self.stop.is_set():
                    return
                await asyncio.gather(*(self._send(session, rng, r, n, tick)
                                       for r, n in per_batch.items()))
                next_at = started + (tick + 1) * BATCH_EVERY_S
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _send(self, session: aiohttp.ClientSession, rng: random.Random, region: str,
                    count: int, tick: int) -> None:
        targets = [rng.choice(self.ids[region]) for _ in range(count)]
        through = region if tick % 2 == 0 else next(r for r in self.ids if r != region)
        ids = await push(session, self.fleet, through, targets, tick)
        assert len(ids) == count
        for c, m in zip(targets, ids, strict=True):
            self.sent[c].append(m)


async def placement(fleet: Fleet, region: str, client_ids: list[str]
                    ) -> tuple[dict[str, str], dict[str, str]]:
    """In `region`'s registry: client id -> its node, and live node -> its state."""
    registry = RedisRegistry.from_url(fleet.redis_url(region))
    try:
        found = await registry.lookup_many(client_ids)
        nodes = {n.node_id: n.state.value for n in await registry.nodes()}
        return {c: reg.node_id for c, reg in found.items()}, nodes
    finally:
        await registry.close()


@pytest.mark.timeout(180)
async def test_a_rolling_restart_of_both_regions_under_live_traffic_loses_no_message(
        fleet: Fleet, tmp_path: Path) -> None:
    """300 SDK devices, 200 on region a's HAProxy and 100 on region b's; 150 messages a second
    to random devices, half through the device's own region's API and half through the other
    region's (forwarded between the regions' routers). `Fleet.rolling_restart` drains and
    restarts a-edge-1, a-edge-2, b-edge-1, b-edge-2 in turn. Every message reaches its device,
    once after the SDK's dedup; every device moved through its HAProxy and ends connected,
    placed on its region's edges in both regions' registries; every edge is back in rotation.
    Then one message to each device through the OTHER region's API, once all are settled,
    arrives too.

    A device moving between b's edges is seen by region a's replicated registry late; the
    messages a's router routes for it meanwhile are forwarded to b's router, which stores and
    looks up with b's own registry, so they are not stranded (README, Several regions)."""
    devices: list[DeviceProcess] = []
    try:
        for region, count in DEVICES.items():
            devices += await start_devices(
                fleet.lb_url(region), fleet.secrets.secret, f"lf{region}-", count, 1, tmp_path,
                ramp_per_s=300, idle_timeout_s=2.5 * HEARTBEAT_S, nice=DEVICE_NICE)
        ids = {region: d.client_ids for region, d in zip(DEVICES, devices, strict=True)}
        await all_connected(devices, 60)
        await check_placement(fleet, ids)

        sender = Sender(fleet, ids)
        sending = asyncio.get_running_loop().create_task(sender.run())
        restarts: list[Restart] = []
        began = time.monotonic()
        try:
            await asyncio.sleep(2.0)
            restarts = await asyncio.to_thread(fleet.rolling_restart, ("a", "b"))
            await asyncio.sleep(2.0)
        finally:
            sender.stop.set()
            await asyncio.wait_for(sending, 30)
        sending_s = time.monotonic() - began
        found = await all_received(devices, sender.sent, 60)
        await all_connected(devices, 30)
        await check_placement(fleet, ids)
        crossed = await push_across(fleet, ids)
        expected = {c: [*sent, crossed[c]] for c, sent in sender.sent.items()}
        found = await all_received(devices, expected, 30)
    finally:
        await stop_devices(devices)

    extra = {c: set(received(r)) - set(expected[c]) for c, r in found.items()}
    numbers = {
        "devices": DEVICES, "messages_sent": sender.total,
        "messages_received": sum(len(received(r)) for r in found.values()) - len(crossed),
        "sending_s": round(sending_s, 1), "sent_across_after": len(crossed),
        "restarts": {r.name: {"drained_s": round(r.drained_s, 2), "total_s": round(r.total_s, 2)}
                     for r in restarts},
        "moves": sum(len(r["connects"]) - 1 for r in found.values()),
        "duplicates_dropped": sum(r["duplicates"] for r in found.values()),
    }
    record("local fleet rolling restart", numbers)
    assert [r.name for r in restarts] == ["a-edge-1", "a-edge-2", "b-edge-1", "b-edge-2"]
    assert all(r.exit_code == 0 for r in restarts), restarts
    assert sender.total >= SEND_PER_S * 8, numbers  # it sent all along
    assert numbers["messages_received"] == sender.total, numbers
    assert not any(extra.values()), [(c, e) for c, e in extra.items() if e][:3]
    # Every edge was drained, so every device moved at least once (through its HAProxy).
    assert all(len(r["connects"]) >= 2 for r in found.values()), numbers
    # Every edge back in rotation ("UP", or "UP 1/2" after a probe the edge shed under load).
    seen = fleet.status()["haproxy"]
    assert {r: {e: in_rotation(status) for e, status in servers.items()}
            for r, servers in seen.items()} == {
        r: {e.name: True for e in fleet.edges(r)} for r in ("a", "b")}, seen


async def push_across(fleet: Fleet, ids: dict[str, list[str]]) -> dict[str, str]:
    """One message to each device through the other region's API; client id -> message id."""
    sent: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        for region, other in (("a", "b"), ("b", "a")):
            targets = ids[other]
            got = await push(session, fleet, region, targets, "across")
            assert len(got) == len(targets)
            sent.update(zip(targets, got, strict=True))
    return sent


async def check_placement(fleet: Fleet, ids: dict[str, list[str]]) -> None:
    """Both regions' registries place each device on an edge of its own region, and list the
    four edges (restarted under their node ids) as active."""
    everyone = [c for group in ids.values() for c in group]
    edges: dict[str, list[Service]] = {r: fleet.edges(r) for r in ids}
    want_nodes = {e.name: "active" for group in edges.values() for e in group}
    for registry_region in ("a", "b"):
        async def settled(region: str = registry_region) -> bool:
            where, nodes = await placement(fleet, region, everyone)
            return nodes == want_nodes and all(
                where.get(c, "").startswith(f"{r}-edge-") for r in ids for c in ids[r])
        await eventually(settled, 15, f"region {registry_region}'s registry settled")
