"""Density benchmark: server memory per idle WebSocket (or SSE) connection.

Starts `zuulpush serve` (or uses a running edge given with --url and --secret), opens N idle
device connections from several client processes and loopback source addresses (one process may
hold at most 20,000 descriptors here), holds them with heartbeats answered, and prints JSON:

    connections, failures, lost (closed by the server during the hold), connect_rate_per_s,
    server_rss_baseline_bytes, server_rss_bytes, bytes_per_connection

`bytes_per_connection` is (RSS with N connections open - RSS of the warmed-up idle server) / N.
With `--tls`, the server is given a self-signed certificate (made for the run) and the devices
connect over TLS (wss://, https:// SSE).

    python perf/density.py --connections 15000
    python perf/density.py --connections 15000 --tls
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from perf.rawws import answer_pings
from perf.serving import start_serve, stop

SECRET = "density-benchmark-secret-0123456789abcdef"
PER_PROCESS = 8000


def main() -> None:
    args = _args()
    server = None
    with tempfile.TemporaryDirectory() as directory:
        if args.url:
            host, port = args.url.split(":")
            pid = args.server_pid
            secret = args.secret
        else:
            env = {"ZUULPUSH_SECRET": SECRET, "ZUULPUSH_API_KEYS": "density",
                   "ZUULPUSH_HEARTBEAT_INTERVAL_S": str(args.heartbeat_s)}
            if args.tls:
                args.cafile = _certificate(Path(directory), env)
            server, host, port = start_serve(env)
            pid, secret = server.pid, SECRET
        try:
            result = _run(args, host, int(port), pid, secret)
        finally:
            if server is not None:
                stop(server)
    print(json.dumps(result, indent=2))


def _certificate(directory: Path, env: dict[str, str]) -> str:
    """A self-signed certificate for the server (set in `env`); the file clients trust."""
    from tests.support.certs import make_certificate

    cert = make_certificate(directory)
    env["ZUULPUSH_TLS_CERT_FILE"], env["ZUULPUSH_TLS_KEY_FILE"] = \
        str(cert.cert_file), str(cert.key_file)
    return str(cert.cert_file)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--connections", type=int, default=15000)
    p.add_argument("--transport", choices=["ws", "sse"], default="ws")
    p.add_argument("--hold-s", type=float, default=10.0, help="how long to hold them open")
    p.add_argument("--heartbeat-s", type=float, default=5.0,
                   help="server heartbeat interval while holding (pings answered)")
    p.add_argument("--per-process", type=int, default=PER_PROCESS,
                   help="connections per client process")
    p.add_argument("--tls", action="store_true",
                   help="serve with a self-signed certificate made for the run; connect over "
                        "TLS (with --url: trust --cafile)")
    p.add_argument("--cafile", help="with --url and --tls: the edge's certificate to trust")
    p.add_argument("--url", help="host:port of a running edge (default: start zuulpush serve)")
    p.add_argument("--server-pid", type=int, help="PID of that edge, to read its memory")
    p.add_argument("--secret", help="that edge's token secret")
    p.add_argument("--timeout-s", type=float, default=300.0, help="give up after this long")
    return p.parse_args()


def _run(args: argparse.Namespace, host: str, port: int, pid: int | None,
         secret: str) -> dict[str, Any]:
    proc = psutil.Process(pid) if pid else None
    _warm_up(args, host, port, secret)
    time.sleep(1.0)
    baseline = proc.memory_info().rss if proc else 0
    n_procs = max(1, -(-args.connections // args.per_process))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    release = ctx.Event()
    workers = []
    started = time.monotonic()
    for i in range(n_procs):
        count = min(args.per_process, args.connections - i * args.per_process)
        source = f"127.0.{1 + i // 200}.{2 + i % 200}"
        w = ctx.Process(target=_client_process, args=(
            i, count, host, port, source, secret, args.transport, results, release,
            args.cafile if args.tls else None))
        w.start()
        workers.append(w)
    opened = failed = 0
    reports = []
    for _ in workers:
        report = results.get(timeout=args.timeout_s)
        reports.append(report)
        opened += report["opened"]
        failed += report["failed"]
    connect_s = max(r["connect_done"] for r in reports) - started
    time.sleep(min(args.hold_s, 2.0))
    rss = proc.memory_info().rss if proc else 0
    time.sleep(max(0.0, args.hold_s - 2.0))
    release.set()
    lost = 0
    for _ in workers:
        lost += results.get(timeout=args.timeout_s)["lost"]
    for w in workers:
        w.join(timeout=30)
    return {
        "transport": args.transport,
        "tls": bool(args.tls),
        "connections": opened,
        "failures": failed,
        "lost": lost,
        "client_processes": n_procs,
        "connect_seconds": round(connect_s, 3),
        "connect_rate_per_s": round(opened / connect_s, 1) if connect_s else None,
        "hold_seconds": args.hold_s,
        "server_rss_baseline_bytes": baseline,
        "server_rss_bytes": rss,
        "bytes_per_connection": round((rss - baseline) / opened, 1) if proc and opened else None,
    }


def _warm_up(args: argparse.Namespace, host: str, port: int, secret: str) -> None:
    """Exercise every code path once, so that lazy imports and caches are in the baseline."""
    tls = _client_tls(args.cafile if args.tls else None)

    async def run() -> None:
        conns = [await _open(host, port, "127.0.0.1", _token(secret, f"warm-{i}"),
                             args.transport, tls) for i in range(50)]
        for _, writer in conns:
            writer.close()
    asyncio.run(run())


def _token(secret: str, client_id: str) -> str:
    from router.auth import issue_token
    return issue_token(secret, client_id=client_id, user_id=f"user-{client_id}",
                       device_type="phone", ttl_s=3600)


def _client_tls(cafile: str | None) -> ssl.SSLContext | None:
    return None if cafile is None else ssl.create_default_context(cafile=cafile)


async def _open(host: str, port: int, source: str, token: str, transport: str,
                tls: ssl.SSLContext | None = None
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0), ssl=tls)
    if transport == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET /ws?token={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    else:
        writer.write(f"GET /sse?token={token} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101" if transport == "ws" else b"HTTP/1.1 200"):
        writer.close()
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    return reader, writer


async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                transport: str) -> bool:
    """Answer pings until the server closes; True if it did (the connection was lost)."""
    try:
        if transport == "sse":
            while await reader.read(4096):
                pass
        else:
            await answer_pings(reader, writer)
        return True
    except (asyncio.IncompleteReadError, ConnectionError):
        return True
    except asyncio.CancelledError:
        return False


def _client_process(index: int, count: int, host: str, port: int, source: str, secret: str,
                    transport: str, results: Any, release: Any, cafile: str | None) -> None:
    async def run() -> None:
        tokens = [_token(secret, f"d{index}-{i}") for i in range(count)]
        sem = asyncio.Semaphore(200)
        tls = _client_tls(cafile)

        holders = []

        async def one(token: str) -> Any:
            async with sem:
                try:
                    reader, writer = await _open(host, port, source, token, transport, tls)
                except (OSError, ConnectionError, asyncio.IncompleteReadError):
                    return None
            # Pings are answered from the start: opening the rest may take longer than a
            # heartbeat interval (TLS handshakes, on a loaded machine).
            holders.append(asyncio.create_task(_hold(reader, writer, transport)))
            return reader, writer
        conns = [c for c in await asyncio.gather(*(one(t) for t in tokens)) if c is not None]
        results.put({"opened": len(conns), "failed": count - len(conns),
                     "connect_done": time.monotonic()})
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, release.wait)
        lost = sum(1 for h in holders if h.done() and h.result())
        for h in holders:
            h.cancel()
        for _, writer in conns:
            writer.close()
        results.put({"lost": lost})
    socket.setdefaulttimeout(30)
    asyncio.run(run())


if __name__ == "__main__":
    main()
