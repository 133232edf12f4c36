"""Reconnect-storm benchmark: N devices reconnecting at once to one edge node.

Starts `zuulpush serve` (its default shedding settings unless `--server-arg` says otherwise),
spawns client processes (at most `--per-process` devices each, far below the 20,000 descriptors
one process may open here), and releases every device at the same instant. Each device opens a
WebSocket (`GET /ws` with its own token); answered `503`, it waits the `Retry-After` it was given
plus a uniform draw of up to `--jitter-s` (the server's value is whole seconds) and tries again;
closed without an answer (the hard ceiling) or timed out, it backs off like the client SDK (full
jitter, `zuulpush.client.backoff`). Devices that are in hold their connection and answer pings.
Meanwhile the node's `GET /healthz` is read twice a second. Prints one JSON object:

    connected, all_connected, seconds_until_all_connected,
    connects_per_s_peak, connects_per_s_mean, connects_per_s (per second since the release),
    attempts, shed_share (attempts not answered 101 / attempts), attempt_outcomes,
    retry_after_s_mean, node_loop_lag_ms_peak (the node's sampler, since start),
    node_loop_lag_ms_peak_before, node_shed (by reason), probe_loop_lag_ms (max seen by the
    healthz reads that were answered), server_cpu_s (during the storm)

Everything is bounded: `--timeout-s` for the whole storm, `--max-attempts` per device, a timeout
on every connect and read, and every process it starts is ended by its PID.

    python perf/reconnect_storm.py                      # 10,000 devices
    python perf/reconnect_storm.py --clients 2000 --server-arg=--accept-rate=500
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.tokens import issue_token  # noqa: E402
from perf.rawws import answer_pings  # noqa: E402
from perf.serving import start_serve, stop  # noqa: E402
from zuulpush.client.backoff import Backoff  # noqa: E402

SECRET = "reconnect-storm-benchmark-secret-0123456789"
PER_PROCESS = 2500
SOURCES_PER_PROCESS = 4


def main() -> None:
    args = _args()
    server, host, port = start_serve(
        {"ZUULPUSH_SECRET": SECRET, "ZUULPUSH_API_KEYS": "storm"}, args.server_arg)
    try:
        result = _run(args, server, host, port)
    finally:
        stop(server)
    print(json.dumps(result, indent=2))


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clients", type=int, default=10_000)
    p.add_argument("--per-process", type=int, default=PER_PROCESS,
                   help="devices per client process")
    p.add_argument("--timeout-s", type=float, default=120.0, help="give up on the storm after this")
    p.add_argument("--max-attempts", type=int, default=100, help="attempts per device at most")
    p.add_argument("--jitter-s", type=float, default=1.0,
                   help="uniform jitter added to each Retry-After")
    p.add_argument("--connect-timeout-s", type=float, default=10.0)
    p.add_argument("--hold-s", type=float, default=1.0,
                   help="hold every connection this long once all are in")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra flag for zuulpush serve, e.g. --server-arg=--accept-rate=500")
    return p.parse_args()


# the server

def _healthz(host: str, port: int, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The node's /healthz, or None if it was shed or did not answer in time."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=timeout_s) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _healthz_retrying(host: str, port: int, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = _healthz(host, port)
        if health is not None:
            return health
        time.sleep(0.2)
    raise SystemExit("the node's /healthz did not answer")


class Prober(threading.Thread):
    """Reads /healthz twice a second until stopped; keeps what it saw."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.host, self.port = host, port
        self.stopped = threading.Event()
        self.lags: list[float] = []
        self.unanswered = 0

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            health = _healthz(self.host, self.port)
            if health is None:
                self.unanswered += 1
            else:
                self.lags.append(float(health["loop_lag_ms"]))


# the storm

def _run(args: argparse.Namespace, server: subprocess.Popen[str], host: str,
         port: int) -> dict[str, Any]:
    before = _healthz_retrying(host, port)
    n_procs = max(1, math.ceil(args.clients / args.per_process))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    go_at = ctx.Value("d", 0.0)
    go = ctx.Event()
    release = ctx.Event()
    workers = []
    for i in range(n_procs):
        count = min(args.per_process, args.clients - i * args.per_process)
        sources = [f"127.{10 + i // 50}.{i % 50}.{2 + k}" for k in range(SOURCES_PER_PROCESS)]
        options = {"timeout_s": args.timeout_s, "max_attempts": args.max_attempts,
                   "jitter_s": args.jitter_s, "connect_timeout_s": args.connect_timeout_s}
        w = ctx.Process(target=_client_process, args=(
            i, count, host, port, sources, options, results, go_at, go, release))
        w.start()
        workers.append(w)
    try:
        for _ in workers:
            assert results.get(timeout=120) == "ready"
        proc = psutil.Process(server.pid)
        cpu_before = sum(proc.cpu_times()[:2])
        prober = Prober(host, port)
        prober.start()
        go_at.value = time.time() + 0.5
        go.set()
        reports = [results.get(timeout=args.timeout_s + 60) for _ in workers]
        cpu_s = sum(proc.cpu_times()[:2]) - cpu_before
        prober.stopped.set()
        prober.join(timeout=5)
        time.sleep(args.hold_s)
        after = _healthz_retrying(host, port)
    finally:
        release.set()
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                w.kill()
    return _summary(args, n_procs, reports, before, after, prober, cpu_s)


def _summary(args: argparse.Namespace, n_procs: int, reports: list[dict[str, Any]],
             before: dict[str, Any], after: dict[str, Any], prober: Prober,
             cpu_s: float) -> dict[str, Any]:
    times = sorted(t for r in reports for t in r["connected_at"])
    outcomes: Counter[str] = Counter()
    for r in reports:
        outcomes.update(r["outcomes"])
    retry_afters = [v for r in reports for v in r["retry_after_s"]]
    attempts = sum(outcomes.values())
    connected = len(times)
    until_all = times[-1] if connected == args.clients and times else None
    per_second = [0] * (int(times[-1]) + 1 if times else 0)
    for t in times:
        per_second[int(t)] += 1
    shed_before = before["shed"]
    return {
        "clients": args.clients,
        "client_processes": n_procs,
        "connected": connected,
        "all_connected": until_all is not None,
        "seconds_until_all_connected": None if until_all is None else round(until_all, 2),
        "connects_per_s_peak": max(per_second, default=0),
        "connects_per_s_mean": round(connected / until_all, 1) if until_all else None,
        "connects_per_s": per_second,
        "attempts": attempts,
        "shed_share": round(1 - connected / attempts, 3) if attempts else None,
        "attempt_outcomes": dict(outcomes),
        "retry_after_s_mean": (round(sum(retry_afters) / len(retry_afters), 2)
                               if retry_afters else None),
        "node_loop_lag_ms_peak": after["loop_lag_ms_peak"],
        "node_loop_lag_ms_peak_before": before["loop_lag_ms_peak"],
        "node_shed": {k: v - shed_before.get(k, 0) for k, v in after["shed"].items()},
        "node_connections_after": after["connections"],
        "probe_loop_lag_ms": {"answered": len(prober.lags), "shed_or_late": prober.unanswered,
                              "max": max(prober.lags, default=None)},
        "server_cpu_s": round(cpu_s, 2),
        "node_limits": {"max_connections": after["max_connections"],
                        "hard_max_connections": after["hard_max_connections"]},
        "server_args": args.server_arg,
    }


# one client process

def _client_process(index: int, count: int, host: str, port: int, sources: list[str],
                    options: dict[str, float], results: Any, go_at: Any, go: Any,
                    release: Any) -> None:
    import uvloop

    tokens = [issue_token(SECRET, client_id=f"storm-{index}-{i}", user_id=f"u-{index}-{i}",
                          device_type="phone", ttl_s=3600) for i in range(count)]
    results.put("ready")
    go.wait(120)
    uvloop.run(_storm(index, tokens, host, port, sources, options, results, go_at.value,
                      release))


async def _storm(index: int, tokens: list[str], host: str, port: int, sources: list[str],
                 options: dict[str, float], results: Any, go_at: float, release: Any) -> None:
    await asyncio.sleep(max(0.0, go_at - time.time()))
    rng = random.Random(index)
    backoff = Backoff()
    deadline = go_at + options["timeout_s"]
    outcomes: Counter[str] = Counter()
    connected_at: list[float] = []
    retry_afters: list[int] = []
    held: list[tuple[asyncio.StreamWriter, asyncio.Task[None]]] = []

    async def device(i: int) -> None:
        failures = 0
        for _ in range(int(options["max_attempts"])):
            if time.time() >= deadline:
                return
            outcome, retry_after, conn = await _attempt(
                host, port, sources[i % len(sources)], tokens[i], options["connect_timeout_s"])
            outcomes[outcome] += 1
            if conn is not None:
                connected_at.append(time.time() - go_at)
                held.append((conn[1], asyncio.create_task(_hold(*conn))))
                return
            if retry_after is not None:
                retry_afters.append(retry_after)
                delay = retry_after + rng.uniform(0.0, options["jitter_s"])
            else:
                delay = backoff.delay_s(failures, rng)
                failures += 1
            await asyncio.sleep(min(delay, max(0.0, deadline - time.time())))

    await asyncio.gather(*(device(i) for i in range(len(tokens))))
    results.put({"connected_at": connected_at, "outcomes": dict(outcomes),
                 "retry_after_s": retry_afters})
    await asyncio.get_running_loop().run_in_executor(None, release.wait, 300)
    for writer, task in held:
        task.cancel()
        writer.close()
    await asyncio.sleep(0.5)


async def _attempt(host: str, port: int, source: str, token: str, timeout_s: float
                   ) -> tuple[str, int | None, tuple[asyncio.StreamReader,
                                                      asyncio.StreamWriter] | None]:
    """One connection attempt: (outcome, Retry-After of a 503, the open stream on 101)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0)), timeout_s)
    except TimeoutError:
        return "connect_timeout", None, None
    except OSError:
        return "refused", None, None
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /ws?token={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    except TimeoutError:
        writer.close()
        return "timeout", None, None
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return "closed", None, None
    status = head[9:12].decode("latin-1")
    if status == "101":
        return "101", None, (reader, writer)
    writer.close()
    match = re.search(rb"\r\nretry-after: *(\d+)", head, re.IGNORECASE)
    return status, int(match.group(1)) if match else None, None


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer pings until the server closes or we are cancelled."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        await answer_pings(reader, writer)


if __name__ == "__main__":
    main()
