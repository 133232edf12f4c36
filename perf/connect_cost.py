"""Connect-cost benchmark: server CPU per authenticated WebSocket (or SSE) connect.

Starts `zuulpush serve` (in-memory registry) or, with `--redis`, a `redis-server` on a free
loopback port and `zuulpush edge --redis` against it; shedding is set out of the way
(`--accept-rate`, `--accept-burst`, `--shed-loop-lag-ms` high) so that every attempt is served.
Each round spawns client processes (perf/devices.py, several loopback source addresses) holding
fresh HS256 tokens made beforehand, then opens K connections as fast as they can (at most
`--concurrency` handshakes in flight per process). The server's CPU (utime + stime, kernel work in
its syscalls included) is read before the first connect and `--settle-s` after the last (so the
batched registrations and inbox replays are in), less the idle rate measured over the same time;
divided by K. Prints JSON with each round.

    python perf/connect_cost.py --connects 10000
    python perf/connect_cost.py --connects 10000 --transport sse
    python perf/connect_cost.py --connects 10000 --redis
    python perf/connect_cost.py --profile /tmp/prof        # py-spy on round 0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.tokens import issue_token  # noqa: E402
from perf.devices import Fleet, split  # noqa: E402
from perf.fanout import _cpu, _idle, _profiler, _stop_profiler  # noqa: E402
from perf.serving import start_serve, stop  # noqa: E402

SECRET = "connect-cost-benchmark-secret-0123456789"
UNSHED = ["--accept-rate", "1000000", "--accept-burst", "1000000",
          "--shed-loop-lag-ms", "100000"]


def main() -> None:
    args = _args()
    env = {"ZUULPUSH_SECRET": SECRET, "ZUULPUSH_API_KEYS": "connect",
           "ZUULPUSH_HEARTBEAT_INTERVAL_S": "60"}
    with tempfile.TemporaryDirectory() as directory:
        redis = None
        if args.redis:
            from tests.support.redis_servers import start_redis
            redis = start_redis(Path(directory))
            server, host, port = _start_edge(env, redis.url)
        else:
            server, host, port = start_serve(env, UNSHED)
        try:
            result = _run(args, server.pid, host, port)
            result["registry"] = "redis" if redis else "memory"
        finally:
            stop(server)
            if redis is not None:
                redis.stop()
    print(json.dumps(result, indent=2))


def _start_edge(env: dict[str, str], redis_url: str,
                timeout_s: float = 30.0) -> tuple[subprocess.Popen[str], str, int]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")}
    full.update(env)
    server = subprocess.Popen(
        [sys.executable, "-m", "zuulpush", "edge", "--redis", redis_url, "--port", "0",
         "--log-level", "warning", *UNSHED], cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, text=True, env=full)
    assert server.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        match = re.search(r"ready: edge=https?://([\d.]+):(\d+)", line)
        if match:
            threading.Thread(target=server.stdout.read, daemon=True).start()
            return server, match.group(1), int(match.group(2))
        if not line and server.poll() is not None:
            break
    stop(server)
    raise SystemExit("zuulpush edge did not start")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--connects", type=int, default=10000, help="K, per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per-process", type=int, default=2500)
    p.add_argument("--concurrency", type=int, default=100,
                   help="handshakes in flight per client process")
    p.add_argument("--transport", choices=["ws", "sse"], default="ws")
    p.add_argument("--redis", action="store_true",
                   help="zuulpush edge --redis against a redis-server started for the run")
    p.add_argument("--idle-s", type=float, default=2.0)
    p.add_argument("--settle-s", type=float, default=0.5)
    p.add_argument("--profile", help="py-spy record -r 500 -f raw round 0 to PREFIX-connect-0")
    return p.parse_args()


def _run(args: argparse.Namespace, pid: int, host: str, port: int) -> dict[str, Any]:
    proc = psutil.Process(pid)
    rounds = []
    for r in range(args.rounds):
        tokens = [issue_token(SECRET, client_id=f"r{r}-c{i}", user_id=f"r{r}-u{i}",
                              device_type="phone", ttl_s=3600) for i in range(args.connects)]
        fleet = Fleet(host, port, split(tokens, args.per_process), transport=args.transport,
                      concurrency=args.concurrency, source_base=20 + r)
        try:
            idle = _idle(proc, args.idle_s)
            profiler = _profiler(args.profile, f"connect-{r}", pid) if r == 0 else None
            cpu, t = _cpu(proc), time.monotonic()
            try:
                opened = fleet.connect()
                time.sleep(args.settle_s)
            finally:
                _stop_profiler(profiler)
            used = _cpu(proc) - cpu - idle * (time.monotonic() - t)
        finally:
            fleet.close()
        time.sleep(1.0)  # the closes' unregistrations are done before the next round
        rounds.append({
            "connects": opened["opened"], "failed": opened["failed"],
            "seconds": round(opened["seconds"], 3),
            "connects_per_s": round(opened["opened"] / opened["seconds"]),
            "server_cpu_s": round(used, 4), "idle_cpu_per_s": round(idle, 4),
            "us_per_connect": round(used / opened["opened"] * 1e6, 1)
            if opened["opened"] else None,
            "connects_per_cpu_s": round(opened["opened"] / used) if used > 0 else None})
    return {"transport": args.transport, "client_processes": -(-args.connects //
                                                               args.per_process),
            "rounds": rounds}


if __name__ == "__main__":
    main()
