"""Where an idle connection's bytes go: tracemalloc over N connections, by allocation site.

Runs the embedded server (`zuulpush serve`'s app: edge, router and API, in-memory seams) in this
process with tracemalloc on, opens N idle WebSocket devices from client processes
(perf/devices.py), and prints JSON: the RSS and the traced bytes per connection, and the traced
bytes per connection of each allocation site (size and count of blocks per connection). Sites
in C code (uvloop's transport, libuv's handle) have no Python frame of their own: they show as
the event loop's `run_until_complete` line, grouped by block size.

tracemalloc sees what is allocated through Python's allocators (objects, and libuv's handles,
which uvloop takes from PyMem_RawMalloc); RSS also holds the allocator's free space and what
C libraries allocate by themselves. Compare `rss_bytes_per_connection` (measured first, without
tracing) with `traced_bytes_per_connection` to see how much that is.

    python perf/where_bytes.py --connections 10000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.tokens import issue_token  # noqa: E402
from perf.devices import Fleet, split  # noqa: E402
from zuulpush.app import EmbeddedApp, ServeConfig  # noqa: E402
from zuulpush.config import load_settings  # noqa: E402

SECRET = "where-bytes-benchmark-secret-0123456789"
SETTLE_S = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--per-process", type=int, default=2_500)
    parser.add_argument("--top", type=int, default=20, help="allocation sites to list")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(_run(args)), indent=2))


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(environ={
        "ZUULPUSH_SECRET": SECRET, "ZUULPUSH_API_KEYS": "where-bytes", "ZUULPUSH_PORT": "0",
        "ZUULPUSH_API_PORT": "0", "ZUULPUSH_ACCEPT_RATE_PER_S": "0",
        "ZUULPUSH_SHED_LOOP_LAG_MS": "0", "ZUULPUSH_HEARTBEAT_INTERVAL_S": "60",
        "ZUULPUSH_LIFETIME_MAX_S": "0"})
    app = EmbeddedApp(ServeConfig.from_settings(settings))
    await app.start()
    try:
        n = args.connections
        rss = await _rss_per_connection(app, n, args.per_process, "rss")
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        fleet = await _connect(app, n, args.per_process, "traced")
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        await asyncio.get_running_loop().run_in_executor(None, fleet.close)
    finally:
        await app.stop()
    return {"connections": n, "rss_bytes_per_connection": rss,
            **_sites(before, after, n, args.top)}


async def _connect(app: EmbeddedApp, n: int, per_process: int, prefix: str) -> Fleet:
    tokens = [issue_token(SECRET, client_id=f"{prefix}-{i}", user_id=f"user-{prefix}-{i}",
                          device_type="phone") for i in range(n)]
    loop = asyncio.get_running_loop()
    fleet = Fleet("127.0.0.1", app.edge.port, split(tokens, per_process))
    report = await loop.run_in_executor(None, fleet.connect)
    if report["opened"] != n:
        raise RuntimeError(f"opened {report['opened']} of {n} connections")
    await asyncio.sleep(SETTLE_S)  # registrations and replays done
    return fleet


async def _rss_per_connection(app: EmbeddedApp, n: int, per_process: int, prefix: str) -> float:
    """RSS per connection without tracing: warm up, then open `n`, then close them again."""
    loop = asyncio.get_running_loop()
    warm = await _connect(app, min(n, 200), per_process, "warm")
    await loop.run_in_executor(None, warm.close)
    await asyncio.sleep(SETTLE_S)
    gc.collect()
    base = _rss()
    fleet = await _connect(app, n, per_process, prefix)
    gc.collect()
    per = (_rss() - base) / n
    await loop.run_in_executor(None, fleet.close)
    await asyncio.sleep(SETTLE_S)
    return round(per, 1)


def _sites(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int,
           top: int) -> dict[str, Any]:
    """Bytes and blocks per connection by (site, block size), largest first."""
    def tally(snapshot: tracemalloc.Snapshot) -> collections.Counter[tuple[str, int]]:
        return collections.Counter((str(t.traceback[0]), t.size) for t in snapshot.traces)
    grown = tally(after) - tally(before)
    sites: dict[str, dict[str, float]] = {}
    for (site, size), count in grown.items():
        entry = sites.setdefault(site, {"bytes": 0.0, "blocks": 0.0})
        entry["bytes"] += size * count / n
        entry["blocks"] += count / n
    total = sum(entry["bytes"] for entry in sites.values())
    ranked = sorted(sites.items(), key=lambda item: -item[1]["bytes"])[:top]
    c_blocks = sorted(((size, count / n) for (site, size), count in grown.items()
                       if "asyncio/runners.py" in site and count / n >= 0.5), reverse=True)
    return {"traced_bytes_per_connection": round(total, 1),
            "sites": [{"site": site, "bytes": round(e["bytes"], 1),
                       "blocks": round(e["blocks"], 2)} for site, e in ranked],
            "c_blocks_by_size": [{"size": size, "blocks": round(per, 2)}
                                 for size, per in c_blocks]}


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


if __name__ == "__main__":
    main()
