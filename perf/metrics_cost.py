"""What metrics cost the edge's hot paths, in one process, without sockets.

An `EdgeServer` on the in-memory seams holds WebSocket connections on fake transports (they
only count bytes), and the benchmark times, best of several rounds:

- `deliver_1`: one delivery to one connection (a targeted push), µs per delivery;
- `broadcast_1000`: one broadcast delivery to 1,000 connections, µs per delivery;
- `connect`: a WebSocket handshake (token verified) accepted and then lost, µs per connection;
- with `--units`, the pieces: a plain bucket add, an id's time decoded, prometheus_client
  `Counter.inc`, `Counter.labels().inc`, `Histogram.observe`, and one exporter copy of an
  edge's stats.

Run it here and on another checkout (the code before metrics) to compare:

    python perf/metrics_cost.py --units
    python perf/metrics_cost.py --tree ../main      # the same benchmark on that tree's code

It prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "metrics-cost-benchmark-secret-0123456789"
ROUNDS = 5


class Transport:
    """Counts what is written; nothing else."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def best_us(fn: Callable[[], None], n: int) -> float:
    """Best of ROUNDS rounds of `n` calls, in µs per call."""
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


async def edge_costs() -> dict[str, float]:
    from core.ids import IdGenerator
    from core.tokens import AuthConfig, TokenVerifier, issue_token
    from registry.memory import MemoryRegistry
    from router.base import Delivery
    from router.stores.memory import MemoryInbox, MemoryNodeChannel
    from zuulpush.edge.config import EdgeConfig
    from zuulpush.edge.protocol import EdgeConnection
    from zuulpush.edge.server import EdgeServer

    server = EdgeServer(EdgeConfig(node_id="bench", accept_rate_per_s=0, shed_loop_lag_ms=0),
                        verifier=TokenVerifier(AuthConfig(secret=SECRET)),
                        registry=MemoryRegistry(), inbox=MemoryInbox(100),
                        channel=MemoryNodeChannel(100))
    key = base64.b64encode(b"sixteen byte key").decode()
    host = getattr(server, "connection_host", server)  # what a connection is handed

    def upgrade(client_id: str) -> tuple[EdgeConnection, Transport]:
        token = issue_token(SECRET, client_id=client_id, user_id="u", device_type="phone")
        conn, transport = EdgeConnection(host), Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.data_received((f"GET /ws?token={token} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket"
                            f"\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        return conn, transport

    for i in range(1000):
        upgrade(f"c{i}")
    registrar = getattr(server, "registrar", None)  # (before the edge's split: the server)
    await (registrar.flush() if registrar else server._flush_registry_work())  # now OPEN
    ids = IdGenerator()
    payload = b'{"id":"x","topic":"t","ts":0,"data":{"n":1}}'
    one = [Delivery(ids.new(), payload, clients=("c7",)) for _ in range(20000)]
    everyone = [Delivery(ids.new(), payload, broadcast=True) for _ in range(200)]
    it1, it2 = iter(one * ROUNDS), iter(everyone * ROUNDS)
    # as the delivery loop calls it: the wall clock read once per batch, where it is used
    extra = (int(time.time() * 1000),) if "now_ms" in inspect.signature(
        server.deliver).parameters else ()

    def deliver(delivery: Delivery) -> None:
        server.deliver(delivery, *extra)
    results = {
        "deliver_1_us": best_us(lambda: deliver(next(it1)), len(one)),
        "broadcast_1000_us": best_us(lambda: deliver(next(it2)), len(everyone)),
    }
    tokens = iter([issue_token(SECRET, client_id=f"n{i}", user_id="u", device_type="phone")
                   for i in range(2000 * ROUNDS)])

    def connect_and_lose() -> None:
        token = next(tokens)
        conn, transport = EdgeConnection(host), Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.data_received((f"GET /ws?token={token} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket"
                            f"\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                            "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        conn.connection_lost(None)

    results["connect_us"] = best_us(connect_and_lose, 2000)
    if hasattr(server, "open_by_kind"):
        from prometheus_client import CollectorRegistry

        from zuulpush.metrics import Exporter, Metrics
        exporter = Exporter(Metrics(CollectorRegistry()))
        exporter.watch_edge(server)
        results["exporter_copy_us"] = best_us(exporter.sync, 200)
    return results


def unit_costs() -> dict[str, float]:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from core.ids import IdGenerator, id_time_ms
    from zuulpush.tally import LATENCY_BOUNDS_MS, Buckets

    registry = CollectorRegistry()
    counter = Counter("c", "c", registry=registry)
    labelled = Counter("l", "l", ["p"], registry=registry)
    histogram = Histogram("h", "h", buckets=[b / 1000 for b in LATENCY_BOUNDS_MS],
                          registry=registry)
    plain = Buckets(LATENCY_BOUNDS_MS)
    message_id = IdGenerator().new()
    n = 200_000
    return {
        "plain_bucket_add_us": best_us(lambda: plain.add(12), n),
        "id_time_ms_us": best_us(lambda: id_time_ms(message_id), n),
        "prometheus_counter_inc_us": best_us(counter.inc, n),
        "prometheus_labels_inc_us": best_us(lambda: labelled.labels("high").inc(), n),
        "prometheus_histogram_observe_us": best_us(lambda: histogram.observe(0.012), n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", help="run the benchmark on the code of this checkout")
    parser.add_argument("--units", action="store_true", help="also time the pieces")
    args = parser.parse_args()
    if args.tree:
        tree = os.path.abspath(args.tree)
        env = {**os.environ, "PYTHONPATH": tree}
        done = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=tree, env=env,
                              capture_output=True, text=True, timeout=600, check=True)
        out = json.loads(done.stdout)
        out["tree"] = tree
        print(json.dumps(out, indent=2))
        return
    sys.path.insert(0, os.getcwd() if os.environ.get("PYTHONPATH") else ROOT)
    results: dict[str, Any] = {"tree": ROOT if not os.environ.get("PYTHONPATH") else
                               os.getcwd(), **asyncio.run(edge_costs())}
    if args.units:
        results.update(unit_costs())
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                      for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
