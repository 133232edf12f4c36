"""API -> device latency of the whole fleet path, at fixed offered rates.

Starts a `redis-server`, two `zuulpush edge`, one `zuulpush api` and one `zuulpush router` as real
processes on loopback (or uses the ones named by --api/--edge, with --secret and --api-key),
connects N WebSocket devices (the `websockets` library) split over the two edges, in
--receivers processes, and POSTs /v1/push from --senders processes, each message to one device,
round-robin, at each offered rate for --seconds (open loop: message k is due at start + k/rate).

Each message carries its sender's clock reading (`time.time_ns()` just before its POST) in its
`data`; a device records its arrival time and acks it, as an SDK would. Latency is arrival minus
that reading: API, queue, router, node channel, edge and the client's own parsing, all of it.
After the last send it waits until every sent id has arrived, or nothing has for 5 s (at most
120 s): `lost` counts ids that never arrived, not ones that arrived late.

Prints one JSON object per rate: offered and achieved send rate, sent, received, lost (sent ids
never received within the drain bound), duplicates, p50/p99/max latency in ms, delivered/s, and
the CPU each server process used during the phase (percent of one core).

    python perf/e2e_latency.py                              # rates 500 2000 5000, 5 s each
    python perf/e2e_latency.py --rates 2000 --seconds 10 --router-workers 2
    python perf/e2e_latency.py --seconds 10 --plot docs/img/latency-cdf.png   # CDF per rate
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.tokens import issue_token  # noqa: E402

DRAIN_IDLE_S = 5.0
"""After the last send, wait until every sent id arrived, or none arrived for this long."""
DRAIN_MAX_S = 120.0
WARM_UP_RATE, WARM_UP_S = 200, 1.0


def main() -> None:
    args = _args()
    procs: list[Any] = []
    redis = None
    try:
        if args.api:
            api, edges, secret, key = args.api, args.edge, args.secret, args.api_key
        else:
            redis, procs = _start_fleet(args)
            args.redis_pid = redis.pid
            api, edges = procs[2].api, [procs[0].edge, procs[1].edge]
            secret, key = procs[0].secret, procs[0].api_key
        _measure(args, api, edges, secret, key, procs)
    finally:
        for proc in reversed(procs):
            proc.stop()
        if redis is not None:
            redis.stop()


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", type=int, nargs="+", default=[500, 2000, 5000])
    p.add_argument("--seconds", type=float, default=5.0, help="per rate (default 5)")
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--senders", type=int, default=2, help="sender processes (default 2)")
    p.add_argument("--receivers", type=int, default=1, help="device processes (default 1)")
    p.add_argument("--concurrency", type=int, default=64, help="POSTs in flight per sender")
    p.add_argument("--router-workers", type=int, default=1)
    p.add_argument("--api", help="use this API (http://H:P) instead of starting a fleet")
    p.add_argument("--edge", action="append", default=[], help="edge base URL (with --api)")
    p.add_argument("--secret", help="device-token secret (with --api)")
    p.add_argument("--api-key", help="API key (with --api)")
    p.add_argument("--plot", metavar="PNG", help="draw the latency CDF of each rate to this file")
    args = p.parse_args()
    args.redis_pid = None
    if args.api and not (args.edge and args.secret and args.api_key):
        p.error("--api needs --edge (at least once), --secret and --api-key")
    return args


def _start_fleet(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """redis-server, two edges, the API and a router, each stopped by its PID at the end."""
    from tests.integration.servers import API, EDGE, ROUTER, start_server
    from tests.support.redis_servers import start_redis

    tmp = Path(tempfile.mkdtemp(prefix="e2e-latency-"))
    redis = start_redis(tmp / "redis")
    env = {"ZUULPUSH_REDIS_URL": redis.url, "ZUULPUSH_HEARTBEAT_INTERVAL_S": "30",
           "ZUULPUSH_HANDSHAKE_TIMEOUT_S": "10"}
    procs: list[Any] = []
    try:
        for command, extra in ((EDGE, ("--node-id", "edge-a")), (EDGE, ("--node-id", "edge-b")),
                               (API, ()), (ROUTER, ("--workers", str(args.router_workers)))):
            procs.append(start_server(tmp, env, extra, command=command))
    except BaseException:
        for proc in procs:
            proc.stop()
        redis.stop()
        raise
    return redis, procs


def _measure(args: argparse.Namespace, api: str, edges: Sequence[str], secret: str, key: str,
             procs: list[Any]) -> None:
    clients = [f"bench-{i}" for i in range(args.devices)]
    ctx = mp.get_context("spawn")
    receivers = []
    for r in range(args.receivers):
        mine = clients[r::args.receivers]
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_receiver, args=(child, mine, edges, secret), daemon=True)
        proc.start()
        receivers.append((proc, parent))
    try:
        for _, conn in receivers:
            if not conn.poll(60) or conn.recv() != "ready":
                raise SystemExit("devices did not connect within 60 s")
        time.sleep(1.0)  # the registrations are batched; let them land
        _phase(args, ctx, api, key, clients, receivers, procs, "warm-up", WARM_UP_RATE,
               WARM_UP_S)
        curves: dict[int, list[float]] = {}
        for rate in args.rates:
            result = _phase(args, ctx, api, key, clients, receivers, procs, f"r{rate}", rate,
                            args.seconds)
            curves[rate] = result.pop("latencies_ms")
            print(json.dumps(result), flush=True)
        if args.plot:
            _plot(curves, args.plot)
    finally:
        for proc, conn in receivers:
            conn.send(("stop", ""))
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def _phase(args: argparse.Namespace, ctx: Any, api: str, key: str, clients: list[str],
           receivers: list[tuple[Any, Connection]], procs: list[Any], phase: str, rate: int,
           seconds: float) -> dict[str, Any]:
    others = {f"devices-{i}": proc.pid for i, (proc, _) in enumerate(receivers)}
    if args.redis_pid:
        others["redis"] = args.redis_pid
    cpu_before = _cpu(procs, others)
    started = time.monotonic()
    senders = []
    for s in range(args.senders):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_sender, daemon=True, args=(
            child, api, key, clients, phase, rate / args.senders, seconds, s, args.senders,
            args.concurrency))
        proc.start()
        senders.append((proc, parent))
    sent: set[str] = set()
    errors = 0
    send_seconds = 0.0
    sender_cpu = 0.0
    for proc, conn in senders:
        if not conn.poll(seconds + 60):
            raise SystemExit("a sender did not finish")
        ids, failed, took, cpu_s = conn.recv()
        sender_cpu += cpu_s
        sent.update(ids)
        errors += failed
        send_seconds = max(send_seconds, took)
        proc.join(10)
    drain_started = time.monotonic()
    last_count, last_progress = -1, drain_started
    while (now := time.monotonic()) - drain_started < DRAIN_MAX_S:  # counts until all are in
        for _, conn in receivers:
            conn.send(("count", phase))
        count = sum(conn.recv() for _, conn in receivers)
        if count >= len(sent) or now - last_progress > DRAIN_IDLE_S:
            break
        if count > last_count:
            last_count, last_progress = count, now
        time.sleep(0.1)
    drain_s = time.monotonic() - drain_started
    latencies: dict[str, tuple[float, int, int, int]] = {}
    duplicates = 0
    for _, conn in receivers:
        conn.send(("report", phase))
        got, dup = conn.recv()
        latencies.update(got)
        duplicates += dup
    elapsed = time.monotonic() - started
    cpu = {name: round((after - cpu_before[name]) / elapsed * 100)
           for name, after in _cpu(procs, others).items()}
    cpu["senders"] = round(sender_cpu / elapsed * 100)
    arrived = [latencies[i] for i in sent if i in latencies]
    values = sorted(a[0] for a in arrived)
    received = len(values)
    window_s = ((max(a[2] for a in arrived) - min(a[1] for a in arrived)) / 1e9 if arrived
                else 1.0)
    return {
        "phase": phase, "offered_per_s": rate, "achieved_send_per_s": round(len(sent) /
                                                                            send_seconds),
        "seconds": seconds, "sent": len(sent), "send_errors": errors, "received": received,
        "lost": len(sent) - received, "duplicates": duplicates,
        "drain_s": round(drain_s, 1),
        "p50_ms": _pct(values, 0.50), "p99_ms": _pct(values, 0.99),
        "max_ms": round(values[-1], 2) if values else None,
        "mean_ms": round(statistics.fmean(values), 2) if values else None,
        # the same split at the API's clock reading ("ts", whole ms): send -> accepted, and
        # accepted -> arrived (queue, router, node channel, edge, client)
        "to_api_p99_ms": _pct(sorted(a[3] - a[1] / 1e6 for a in arrived), 0.99),
        "from_api_p50_ms": _pct(sorted(a[2] / 1e6 - a[3] for a in arrived), 0.50),
        "from_api_p99_ms": _pct(sorted(a[2] / 1e6 - a[3] for a in arrived), 0.99),
        "delivered_per_s": round(received / window_s),
        "cpu_percent": cpu,
        "latencies_ms": values,
    }


def _plot(curves: dict[int, list[float]], path: str) -> None:
    """One CDF of send-to-arrival latency per offered rate, log-scaled in ms, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rate, values in curves.items():
        if values:
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))],
                    label=f"{rate:,} msg/s offered")
    ax.set_xscale("log")
    ax.set_xlabel("latency, POST sent to message received (ms, log scale)")
    ax.set_ylabel("fraction of messages")
    ax.axhline(0.99, color="grey", linewidth=0.5, linestyle="--")
    ax.set_title("perf/e2e_latency.py: latency CDF (2 edges, 1 router, Redis)")
    ax.legend()
    ax.grid(True, which="both", linewidth=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def _cpu(procs: list[Any], others: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) each server process (and each of `others`, name: PID) has
    used so far."""
    pids = {proc.proc.args[3] + (f"-{proc.node_id}" if proc.proc.args[3] == "edge" else ""):
            proc.pid for proc in procs}
    out = {}
    for name, pid in {**pids, **others}.items():
        try:
            times = psutil.Process(pid).cpu_times()
            out[name] = times.user + times.system
        except psutil.Error:
            out[name] = 0.0
    return out


# Senders

def _sender(conn: Connection, api: str, key: str, clients: list[str], phase: str, rate: float,
            seconds: float, index: int, senders: int, concurrency: int) -> None:
    import uvloop

    ids, failed, took = uvloop.run(_send(api, key, clients, phase, rate, seconds, index, senders,
                                         concurrency))
    times = os.times()
    conn.send((ids, failed, took, times.user + times.system))


async def _send(api: str, key: str, clients: list[str], phase: str, rate: float,
                seconds: float, index: int, senders: int, concurrency: int
                ) -> tuple[list[str], int, float]:
    """Open loop: message k is due at start + k / rate; POSTed at once when due on a free
    keep-alive connection (at most `concurrency`, one request in flight on each), else as soon
    as one is free, so a slow API shows as a lower achieved rate.

    The sender is a bare HTTP/1.1 client on `asyncio.Protocol` rather than aiohttp's: it shares
    the two cores with the fleet it measures, and aiohttp's client spent more CPU per request
    than the API it was timing."""
    total = int(rate * seconds)
    ids: list[str] = []
    failed = 0
    host, _, port = api.removeprefix("http://").partition(":")
    head = (f"POST /v1/push HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            "Content-Length: ").encode()
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    free: list[_HttpConnection] = []
    backlog: list[int] = []
    answered = 0

    def post(conn: _HttpConnection, k: int) -> None:
        client = clients[(k * senders + index) % len(clients)]
        body = orjson.dumps({"to": {"clients": [client]}, "topic": "bench",
                             "data": {"t": time.time_ns(), "p": phase}})
        conn.request(b"%b%d\r\n\r\n%b" % (head, len(body), body))

    def answer(conn: _HttpConnection, status: int, body: bytes) -> None:
        nonlocal failed, answered
        answered += 1
        if status == 202:
            ids.append(orjson.loads(body)["id"])
        else:
            failed += 1
        if answered == total and not finished.done():
            finished.set_result(None)
        if not conn.open:
            return
        if backlog:
            post(conn, backlog.pop(0))
        else:
            free.append(conn)

    conns = [(await loop.create_connection(lambda: _HttpConnection(answer), host, int(port)))[1]
             for _ in range(concurrency)]
    free.extend(conns)
    start = loop.time()
    try:
        for k in range(total):
            due = start + k / rate
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if free:
                post(free.pop(), k)
            else:
                backlog.append(k)
        if total:
            try:
                await asyncio.wait_for(finished, DRAIN_MAX_S)
            except TimeoutError:  # connections were lost with messages still to send
                failed += total - answered
    finally:
        for conn in conns:
            conn.close()
    took = loop.time() - start
    return ids, failed, max(took, seconds)


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; answers by Content-Length."""

    def __init__(self, answer: Any) -> None:
        self._answer = answer
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._status = 0
        self._length: int | None = None
        self._waiting = False
        self.open = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def request(self, raw: bytes) -> None:
        assert self._transport is not None and not self._waiting
        self._waiting = True
        self._transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if self._length is None:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self._buffer[:end].lower()
                self._status = int(head[9:12])
                at = head.find(b"content-length:")
                self._length = int(head[at + 15:head.find(b"\r\n", at)]) if at >= 0 else 0
                self._buffer = self._buffer[end + 4:]
            if len(self._buffer) < self._length:
                return
            body, self._buffer = self._buffer[:self._length], self._buffer[self._length:]
            self._length = None
            self._waiting = False
            self._answer(self, self._status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self._waiting:
            self._waiting = False
            self._answer(self, 0, b"")

    def close(self) -> None:
        self.open = False
        if self._transport is not None:
            self._transport.close()


# Devices

def _receiver(conn: Connection, clients: list[str], edges: Sequence[str], secret: str) -> None:
    import uvloop

    uvloop.run(_receive(conn, clients, edges, secret))


async def _receive(conn: Connection, clients: list[str], edges: Sequence[str],
                   secret: str) -> None:
    from websockets.asyncio.client import ClientConnection, connect

    latencies: dict[str, dict[str, tuple[float, int, int, int]]] = {}
    duplicates: dict[str, int] = {}

    async def device(ws: ClientConnection) -> None:
        async for raw in ws:
            now = time.time_ns()
            message = orjson.loads(raw)
            data = message["data"]
            seen = latencies.setdefault(data["p"], {})
            if message["id"] in seen:
                duplicates[data["p"]] = duplicates.get(data["p"], 0) + 1
            else:
                seen[message["id"]] = ((now - data["t"]) / 1e6, data["t"], now, message["ts"])
            await ws.send(b'{"type":"ack","id":"%s"}' % message["id"].encode(), text=True)

    sockets = []
    for client, edge in zip(clients, itertools.cycle(edges), strict=False):
        token = issue_token(secret, client_id=client, user_id=client, device_type="bench")
        url = edge.replace("http://", "ws://") + f"/ws?token={token}"
        sockets.append(await connect(url, proxy=None, open_timeout=10, max_queue=None))
    tasks = [asyncio.create_task(device(ws)) for ws in sockets]
    conn.send("ready")
    while True:
        command, phase = await asyncio.to_thread(conn.recv)  # the pipe stays blocking
        if command == "stop":
            break
        if command == "count":
            conn.send(len(latencies.get(phase, {})))
        else:
            conn.send((latencies.get(phase, {}), duplicates.get(phase, 0)))
    for ws in sockets:
        await ws.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    main()
