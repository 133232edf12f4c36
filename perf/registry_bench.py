"""Registry benchmark: batched registrations and lookups on Redis, beside raw redis-benchmark.

Starts its own redis-server on a free loopback port (or a 3-master Redis Cluster with
--cluster; or uses the server given with --redis-port), then on that same server, in one run:

1. registers --clients clients (fresh ids, 3 per user, on 8 nodes) with
   `RedisRegistry.register` in batches of --batch, --concurrency batches in flight;
2. registers them all again (a reconnect storm: every device is known, every registration newer);
3. looks them all up with `lookup_many` in batches of --batch;
4. refreshes them all (`refresh`, per node, in batches of --batch);
5. runs `redis-benchmark -P 16 -t set,get -n --raw-requests -q --csv` against the server, before
   and after steps 1-4 (the raw figures are the mean of the two runs, both are printed).

and prints JSON: registrations_per_s, reregistrations_per_s, lookups_per_s, refreshes_per_s,
raw_set_per_s, raw_get_per_s, register_ratio (registrations / raw SET; target >= 0.25) and
lookup_ratio (lookups / raw GET; target >= 0.40), with the parameters of the run.

    python perf/registry_bench.py --clients 100000 --batch 1000

Only the servers this run started are stopped, each by its PID. Keys written to a server given
with --redis-port live under a prefix of their own and expire within --ttl-s.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis.utils import HIREDIS_AVAILABLE

from registry.base import Registration
from registry.redis import RedisRegistry, connect
from tests.support.redis_servers import start_cluster, start_redis

NODES = 8
DEVICES_PER_USER = 3
DEVICE_TYPES = ("phone", "tv", "web")


def main() -> None:
    args = _args()
    with tempfile.TemporaryDirectory(prefix="registry-bench-") as tmp:
        started: Any = None
        if args.redis_port:
            ports = [args.redis_port]
        elif args.cluster:
            started = start_cluster(Path(tmp))
            ports = [s.port for s in started.servers]
        else:
            started = start_redis(Path(tmp))
            ports = [started.port]
        try:
            before = _raw(ports, args.raw_requests)
            result = asyncio.run(_run(args, ports))
            after = _raw(ports, args.raw_requests)
        finally:
            if started is not None:
                started.stop()
    for op in ("set", "get"):
        runs = [before[op], after[op]]
        result[f"raw_{op}_per_s"] = round(sum(runs) / 2)
        result[f"raw_{op}_runs"] = runs
    result["register_ratio"] = round(result["registrations_per_s"] / result["raw_set_per_s"], 3)
    result["lookup_ratio"] = round(result["lookups_per_s"] / result["raw_get_per_s"], 3)
    print(json.dumps(result, indent=2))


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4,
                        help="batches in flight at once (each on its own connection)")
    parser.add_argument("--raw-requests", type=int, default=200_000)
    parser.add_argument("--ttl-s", type=float, default=120.0)
    parser.add_argument("--redis-port", type=int, default=0,
                        help="use the redis-server on 127.0.0.1:PORT instead of starting one")
    parser.add_argument("--cluster", action="store_true",
                        help="start a 3-master Redis Cluster and run against it")
    args = parser.parse_args()
    if not 0 < args.clients <= 1_000_000 or not 0 < args.batch <= 100_000:
        parser.error("--clients must be in (0, 1e6], --batch in (0, 1e5]")
    return args


async def _run(args: argparse.Namespace, ports: list[int]) -> dict[str, Any]:
    if args.cluster:
        client = connect("redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports))
    else:
        client = connect(f"redis://127.0.0.1:{ports[0]}/0")
    registry = RedisRegistry(client, prefix=f"bench{os.getpid()}", device_ttl_s=args.ttl_s * 2)
    try:
        return await _measure(registry, args)
    finally:
        await client.aclose()


async def _measure(registry: RedisRegistry, args: argparse.Namespace) -> dict[str, Any]:
    ids = [f"client-{i:08d}" for i in range(args.clients)]
    batches = [ids[i:i + args.batch] for i in range(0, len(ids), args.batch)]
    users = max(1, args.clients // DEVICES_PER_USER)
    await registry.register(_registrations(batches[0][:10], users), args.ttl_s)  # load scripts
    await registry.lookup_many(batches[0][:10])

    async def register(batch: Sequence[str]) -> None:
        await registry.register(_registrations(batch, users), args.ttl_s)

    async def lookup(batch: Sequence[str]) -> None:
        found = await registry.lookup_many(batch)
        assert len(found) == len(batch), "a registered client was not found"

    async def refresh(batch: Sequence[str]) -> None:
        by_node: dict[str, list[str]] = {}
        for client_id in batch:
            by_node.setdefault(_node(client_id), []).append(client_id)
        for node_id, client_ids in by_node.items():
            await registry.refresh(node_id, client_ids, args.ttl_s)

    seconds = {}
    for name, step in (("registrations", register), ("reregistrations", register),
                       ("lookups", lookup), ("refreshes", refresh)):
        seconds[name] = await _timed(step, batches, args.concurrency)
    result: dict[str, Any] = {f"{name}_per_s": round(args.clients / s)
                              for name, s in seconds.items()}
    result.update(clients=args.clients, batch=args.batch, concurrency=args.concurrency,
                  cluster=args.cluster, hiredis=HIREDIS_AVAILABLE)
    return result


def _registrations(batch: Sequence[str], users: int) -> list[Registration]:
    """Client i belongs to user i % users: DEVICES_PER_USER devices each, in different batches,
    so that a batch's index writes go to as many users as it has clients."""
    version = time.time_ns()
    return [Registration(client_id, f"user-{int(client_id[7:]) % users}",
                         DEVICE_TYPES[int(client_id[7:]) % len(DEVICE_TYPES)],
                         _node(client_id), version)
            for client_id in batch]


def _node(client_id: str) -> str:
    return f"edge-{int(client_id[7:]) % NODES}"


async def _timed(step: Callable[[Sequence[str]], Awaitable[None]],
                 batches: list[list[str]], concurrency: int) -> float:
    """Seconds to run `step` over every batch, `concurrency` batches at a time."""
    queue = iter(batches)

    async def worker() -> None:
        for batch in queue:
            await step(batch)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


def _raw(ports: list[int], requests: int) -> dict[str, int]:
    """redis-benchmark's pipelined SET and GET ops/s (of the whole cluster with --cluster)."""
    cluster = ["--cluster"] if len(ports) > 1 else []
    out = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(ports[0]), *cluster, "-P", "16",
         "-t", "set,get", "-n", str(requests), "-q", "--csv"],
        capture_output=True, text=True, timeout=300, check=True).stdout
    rates = {row[0]: float(row[1]) for row in csv.reader(io.StringIO(out))
             if row and row[0] in ("SET", "GET")}
    return {"set": round(rates["SET"]), "get": round(rates["GET"])}


if __name__ == "__main__":
    main()
