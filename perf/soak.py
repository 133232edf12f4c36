"""Soak: hold connections with steady churn and traffic, and watch the server's RSS and descriptors.

    python perf/soak.py [--connections 2000] [--churn-per-s 20] [--push-per-s 50]
                        [--duration-s 600] [--warmup-s 60] [--sample-every-s 5] [--plot soak.png]

Starts `zuulpush serve` (perf/serving.py; a real process, stopped by its PID), then one device
process (perf/devices.py's raw WebSocket `Device`, acking each message) that opens
`--connections` devices and, every second, closes `--churn-per-s` of them at random and opens
them again (same client ids, so the edge replaces registrations and replays inboxes). Meanwhile
the API is sent `--push-per-s` messages a second, each to a random device. Every
`--sample-every-s` the server's RSS and open descriptors (psutil) are sampled.

Prints JSON: the settings, the series (`[t_s, rss_bytes, fds, open_devices]`), the totals
(pushed, received, reconnects), and the growth: the mean of the last minute against the mean of
the first minute after `--warmup-s`, for RSS and descriptors. Flat is what a leak-free server
shows; a leak grows with time (churn) or with traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import random
import re
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.tokens import issue_token
from perf.devices import _UPGRADE, Device, Tally
from perf.serving import start_serve, stop

SECRET = "soak-secret-0123456789abcdef0123456789"
API_KEY = "soak"
CONNECT_TIMEOUT_S = 10.0


# the device process

def _devices_main(pipe: Connection, host: str, port: int, tokens: list[str],
                  churn_per_s: int) -> None:
    import uvloop

    uvloop.run(_devices(pipe, host, port, tokens, churn_per_s))


async def _devices(pipe: Connection, host: str, port: int, tokens: list[str],
                   churn_per_s: int) -> None:
    loop = asyncio.get_running_loop()
    tally = Tally()
    open_: dict[int, Device] = {}
    stats = {"reconnects": 0, "failed": 0}
    gate = asyncio.Semaphore(100)

    async def connect(i: int) -> None:
        async with gate:
            key = base64.b64encode(os.urandom(16)).decode()
            request = _UPGRADE.format(token=tokens[i], host=host, key=key).encode()
            opened: asyncio.Future[bool] = loop.create_future()
            device = Device(request, tally, opened, ack=True, sse=False)
            try:
                await asyncio.wait_for(loop.create_connection(lambda: device, host, port),
                                       CONNECT_TIMEOUT_S)
                ok = await asyncio.wait_for(opened, CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                ok = False
            if ok:
                open_[i] = device
            else:
                stats["failed"] += 1
                if device.transport is not None:
                    device.transport.abort()

    async def churn() -> None:
        rng = random.Random(7)
        while True:
            await asyncio.sleep(1.0)
            chosen = rng.sample(sorted(open_), min(churn_per_s, len(open_)))
            for i in chosen:
                device = open_.pop(i)
                if device.transport is not None:
                    device.transport.close()
            await asyncio.gather(*(connect(i) for i in chosen))
            stats["reconnects"] += len(chosen)

    await asyncio.gather(*(connect(i) for i in range(len(tokens))))
    churner = loop.create_task(churn())
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(pipe.fileno(), lambda: commands.put_nowait(pipe.recv()))
    pipe.send({"opened": len(open_)})
    while await commands.get() != "quit":
        pipe.send({"open": len(open_), "messages": tally.messages, "acks": tally.acks, **stats})
    churner.cancel()
    for device in open_.values():
        if device.transport is not None:
            device.transport.abort()
    pipe.send("bye")


# the measuring side

def _sample(server: psutil.Process) -> tuple[int, int]:
    procs = [server, *server.children(recursive=True)]
    rss = fds = 0
    for proc in procs:
        try:
            rss += proc.memory_info().rss
            fds += proc.num_fds()
        except psutil.NoSuchProcess:
            pass
    return rss, fds


async def _push(api: str, clients: int, per_s: float, until: float,
                counts: dict[str, int]) -> None:
    rng = random.Random(11)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    every_s = 0.1
    per_tick = max(1, round(per_s * every_s))
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < until:
            began = time.monotonic()
            body = {"messages": [{"to": {"clients": [f"soak-{rng.randrange(clients)}"]},
                                  "data": {"n": counts["pushed"] + k}} for k in range(per_tick)]}
            try:
                async with session.post(api + "/v1/push/batch", json=body, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=10)) as response:
                    await response.read()
                    counts["pushed" if response.status == 202 else "refused"] += per_tick
            except (aiohttp.ClientError, TimeoutError):
                counts["refused"] += per_tick
            await asyncio.sleep(max(0.0, every_s - (time.monotonic() - began)))


async def _soak(args: argparse.Namespace, server_pid: int, api: str, pipe: Connection
                ) -> dict[str, Any]:
    proc = psutil.Process(server_pid)
    began = time.monotonic()
    until = began + args.duration_s
    counts = {"pushed": 0, "refused": 0}
    pusher = asyncio.create_task(_push(api, args.connections, args.push_per_s, until, counts))
    series: list[list[float]] = []
    device_state: dict[str, Any] = {}
    while (now := time.monotonic()) < until:
        rss, fds = _sample(proc)
        pipe.send("report")
        device_state = await asyncio.to_thread(pipe.recv)
        series.append([round(now - began, 1), rss, fds, device_state["open"]])
        await asyncio.sleep(max(0.0, args.sample_every_s - (time.monotonic() - now)))
    await pusher
    return {"series": series, "pushed": counts["pushed"], "refused": counts["refused"],
            "devices": device_state}


def _growth(series: list[list[float]], warmup_s: float) -> dict[str, Any]:
    """Mean of the last minute against the first minute after warm-up (RSS and fds)."""
    after = [s for s in series if s[0] >= warmup_s]
    if len(after) < 2:
        return {}
    first = [s for s in after if s[0] < after[0][0] + 60]
    last = [s for s in after if s[0] > after[-1][0] - 60]
    out: dict[str, Any] = {}
    for name, col in (("rss_bytes", 1), ("fds", 2)):
        a, b = statistics.mean(s[col] for s in first), statistics.mean(s[col] for s in last)
        out[name] = {"first_minute": round(a), "last_minute": round(b),
                     "growth": round(b - a), "growth_pct": round(100 * (b - a) / a, 2)}
    out["window_s"] = [after[0][0], after[-1][0]]
    return out


def _plot(path: str, result: dict[str, Any]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, rss, fds = zip(*((s[0], s[1] / 2**20, s[2]) for s in result["series"]), strict=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    top.plot(t, rss)
    top.set_ylabel("server RSS (MiB)")
    bottom.plot(t, fds, color="tab:orange")
    bottom.set_ylabel("open descriptors")
    bottom.set_xlabel("seconds")
    top.set_title(f"soak: {result['settings']['connections']:,} connections, "
                  f"{result['settings']['churn_per_s']}/s churn, "
                  f"{result['settings']['push_per_s']}/s pushes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--churn-per-s", type=int, default=20, help="devices reconnecting a second")
    p.add_argument("--push-per-s", type=float, default=50.0, help="messages a second")
    p.add_argument("--duration-s", type=float, default=600.0)
    p.add_argument("--warmup-s", type=float, default=60.0)
    p.add_argument("--sample-every-s", type=float, default=5.0)
    p.add_argument("--heartbeat-s", type=float, default=20.0)
    p.add_argument("--plot", help="write a PNG of RSS and descriptors over time here")
    return p.parse_args()


def main() -> None:
    args = _args()
    env = {"ZUULPUSH_SECRET": SECRET, "ZUULPUSH_API_KEYS": API_KEY,
           "ZUULPUSH_HEARTBEAT_INTERVAL_S": str(args.heartbeat_s)}
    banner: list[str] = []
    server, host, port = start_serve(env, banner=banner)
    child: mp.Process | None = None
    try:
        api = re.search(r"api=(\S+)", banner[0])
        assert api is not None, banner
        tokens = [issue_token(SECRET, client_id=f"soak-{i}", user_id=f"u-{i}",
                              device_type="phone", ttl_s=24 * 3600)
                  for i in range(args.connections)]
        ours, theirs = mp.Pipe()
        child = mp.Process(target=_devices_main,
                           args=(theirs, host, port, tokens, args.churn_per_s), daemon=True)
        child.start()
        if not ours.poll(120):
            raise SystemExit("the device process did not open its devices in 120 s")
        opened = ours.recv()
        result = asyncio.run(_soak(args, server.pid, api.group(1), ours))
        ours.send("quit")
        ours.poll(10)
        result = {"settings": {k: v for k, v in vars(args).items() if k != "plot"},
                  "opened_at_start": opened["opened"], **result,
                  "growth": _growth(result["series"], args.warmup_s)}
    finally:
        if child is not None:
            child.join(10)
            if child.is_alive():
                child.kill()
        stop(server)
    print(json.dumps(result, indent=1))
    if args.plot:
        _plot(args.plot, result)


if __name__ == "__main__":
    main()
