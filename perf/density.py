"""Density benchmark: server memory per idle WebSocket (or SSE) connection.

Starts `zuulpush serve` (or, with `--workers N`, a `redis-server` and `zuulpush edge --workers N`
on it; or uses a running edge given with --url and --secret), opens N idle device connections
from several client processes and loopback source addresses (one process may hold at most
20,000 descriptors here), holds them with heartbeats answered, and prints JSON:

    connections, failures, shed (503s retried), lost (closed by the server during the hold),
    connect_rate_per_s, server_rss_baseline_bytes, server_rss_bytes, bytes_per_connection,
    and with --workers: per-worker connections, kernel socket memory, Redis's memory

`bytes_per_connection` is (RSS with N connections open - RSS of the warmed-up idle server) / N;
with --workers, RSS is summed over all the workers (the supervisor holds no connection). With
`--tls`, the server is given a self-signed certificate (made for the run) and the devices
connect over TLS (wss://, https:// SSE).

    python perf/density.py --connections 15000
    python perf/density.py --connections 15000 --tls
    python perf/density.py --workers 25 --connections 400000 --per-process 16000 --hold-s 300 \\
        --heartbeat-s 30 --plot docs/img/density-400k.png
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from perf.rawws import PING, pong
from perf.serving import start_edge, start_serve, stop

SECRET = "density-benchmark-secret-0123456789abcdef"
PER_PROCESS = 8000
CONCURRENT_OPENS = 200  # handshakes in flight per client process
OPEN_TIMEOUT_S = 60.0
ATTEMPTS = 8  # per device: the first, and retries after a 503 or a failure
PAGE = 4096
PER_ADDRESS = 4000
"""Devices per loopback source address: connect() searches the 28,232 ephemeral ports linearly
for a free one, and past half of them used (16,000 on one address) that search kept the client
processes in the kernel (`__inet_hash_connect`)."""
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h
SOCKET_SLABS = frozenset({"TCP", "sock_inode_cache", "filp", "eventpoll_epi", "eventpoll_pwq",
                          "dentry", "skbuff_head_cache", "tcp_bind_bucket", "request_sock_TCP"})
"""The slab caches an idle TCP socket held by a process takes memory from."""


def main() -> None:
    args = _args()
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        redis = None
        if args.url:
            host, port = args.url.split(":")
            pids = [args.server_pid] if args.server_pid else []
            secret = args.secret
        else:
            env = {"ZUULPUSH_SECRET": SECRET, "ZUULPUSH_API_KEYS": "density",
                   "ZUULPUSH_HEARTBEAT_INTERVAL_S": str(args.heartbeat_s)}
            if args.tls:
                args.cafile = _certificate(directory, env)
            if args.workers:
                redis = stack.enter_context(_redis(directory))
                server, host, port, pids = start_edge(_fleet_env(args, env, redis.url),
                                                      _fleet_args(args))
            else:
                server, host, port = start_serve(env)
                pids = [server.pid]
            stack.callback(stop, server, 60.0)
            secret = SECRET
        result = _run(args, host, int(port), pids, secret, redis)
    print(json.dumps(result, indent=2))
    if args.plot:
        _plot(args.plot, [result, *_load(args.plot_also)])


def _fleet_env(args: argparse.Namespace, env: dict[str, str], redis_url: str) -> dict[str, str]:
    """A fleet edge that sheds nothing while the devices connect and closes none while they are
    held: no rate or loop-lag shedding, no lifetime, a handshake deadline the loaded machine
    meets, a short drain at the end."""
    return {**env, "ZUULPUSH_REDIS_URL": redis_url, "ZUULPUSH_LIFETIME_MAX_S": "0",
            "ZUULPUSH_HANDSHAKE_TIMEOUT_S": "60", "ZUULPUSH_DRAIN_WINDOW_S": "5"}


def _fleet_args(args: argparse.Namespace) -> list[str]:
    return ["--workers", str(args.workers), "--node-id", "density", "--accept-rate", "0",
            "--shed-loop-lag-ms", "0", "--max-connections", str(args.max_connections),
            "--hard-max-connections", str(args.hard_max_connections)]


@contextlib.contextmanager
def _redis(directory: Path) -> Iterator[Any]:
    """A `redis-server` on a free loopback port for the run, stopped by its PID."""
    from tests.support.redis_servers import start_redis

    server = start_redis(directory / "redis")
    try:
        yield server
    finally:
        server.stop()


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
                   help="connections per client process (each from a loopback address of "
                        "its own: at most ~28,000, the ephemeral port range)")
    p.add_argument("--workers", type=int, default=0,
                   help="run a redis-server and `zuulpush edge --workers N` on it (N >= 1; "
                        "default 0: `zuulpush serve`, one process, in-memory registry)")
    p.add_argument("--max-connections", type=int, default=18500,
                   help="with --workers: each worker's max_connections")
    p.add_argument("--hard-max-connections", type=int, default=19000,
                   help="with --workers: each worker's hard_max_connections (below its "
                        "file-descriptor limit)")
    p.add_argument("--tls", action="store_true",
                   help="serve with a self-signed certificate made for the run; connect over "
                        "TLS (with --url: trust --cafile)")
    p.add_argument("--cafile", help="with --url and --tls: the edge's certificate to trust")
    p.add_argument("--url", help="host:port of a running edge (default: start zuulpush serve)")
    p.add_argument("--server-pid", type=int, help="PID of that edge, to read its memory")
    p.add_argument("--secret", help="that edge's token secret")
    p.add_argument("--timeout-s", type=float, default=600.0,
                   help="give up if the devices are not all open after this long")
    p.add_argument("--sample-s", type=float, default=1.0,
                   help="how often the workers' memory is sampled while devices connect")
    p.add_argument("--plot", metavar="PNG",
                   help="draw memory per connection against connections open (this run's "
                        "samples, and --plot-also runs) to this file")
    p.add_argument("--plot-also", metavar="JSON", action="append", default=[],
                   help="an earlier run's output (this script's JSON) to draw too; repeatable")
    return p.parse_args()


# the run

def _run(args: argparse.Namespace, host: str, port: int, pids: list[int], secret: str,
         redis: Any) -> dict[str, Any]:
    procs = [psutil.Process(pid) for pid in pids]
    _warm_up(args, host, port, secret, max(50, 20 * len(procs)))
    time.sleep(2.0)
    baseline = _rss(procs)
    idle_fds = [_connections(p) for p in procs]
    kernel0 = _kernel()
    redis0 = _redis_memory(redis)
    n_procs = max(1, -(-args.connections // args.per_process))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    release = ctx.Event()
    progress = ctx.RawArray("q", n_procs)
    clients = []
    try:
        started = time.monotonic()
        for i in range(n_procs):
            count = min(args.per_process, args.connections - i * args.per_process)
            k = -(-args.per_process // PER_ADDRESS)  # addresses per client process
            source = [f"127.1.{a // 250}.{2 + a % 250}"
                      for a in range(i * k, (i + 1) * k)]
            w = ctx.Process(target=_client_process, args=(
                i, count, host, port, source, secret, args.transport, results, release,
                args.cafile if args.tls else None, progress))
            w.start()
            clients.append(w)
        reports, ramp = _wait_open(args, clients, results, progress, procs, baseline, started)
        result = _measure_hold(args, procs, baseline, kernel0, redis, redis0, clients, results,
                               release, reports, ramp, started, n_procs)
        result["idle_fds_per_worker"] = max(idle_fds, default=None)
        return result
    finally:
        release.set()
        deadline = time.monotonic() + 30.0  # for all of them: then they are killed
        for w in clients:
            w.join(timeout=max(0.0, deadline - time.monotonic()))
        for w in clients:
            if w.is_alive():
                w.kill()
                w.join(timeout=10)


def _wait_open(args: argparse.Namespace, clients: list[Any], results: Any, progress: Any,
               procs: list[psutil.Process], baseline: int,
               started: float) -> tuple[list[dict[str, Any]], list[list[float]]]:
    """The client processes' reports once all have opened theirs, and samples of (open,
    RSS per open connection) taken meanwhile."""
    reports: list[dict[str, Any]] = []
    ramp: list[list[float]] = []
    deadline = started + args.timeout_s
    next_sample = time.monotonic()
    while len(reports) < len(clients):
        if time.monotonic() > deadline:
            raise SystemExit(f"devices not all open after {args.timeout_s} s "
                             f"({sum(progress)} open)")
        with contextlib.suppress(Exception):
            reports.append(results.get(timeout=0.2))
        if time.monotonic() >= next_sample:
            next_sample += args.sample_s
            n = sum(progress)
            if n >= 1000:
                ramp.append([n, round((_rss(procs) - baseline) / n, 1)])
        if any(w.exitcode not in (None, 0) for w in clients):
            raise SystemExit("a client process failed")
    return reports, ramp


def _measure_hold(args: argparse.Namespace, procs: list[psutil.Process], baseline: int,
          kernel0: dict[str, int], redis: Any, redis0: dict[str, int], clients: list[Any],
          results: Any, release: Any, reports: list[dict[str, Any]],
          ramp: list[list[float]], started: float, n_procs: int) -> dict[str, Any]:
    opened = sum(r["opened"] for r in reports)
    connect_s = max(r["connect_done"] for r in reports) - started
    hold_started = time.monotonic()
    time.sleep(min(args.hold_s, 5.0))
    per_worker = [_connections(p) for p in procs]
    rss_early, kernel, redis1 = _rss(procs), _kernel(), _redis_memory(redis)
    samples = [rss_early]
    while time.monotonic() - hold_started < args.hold_s:  # bounded by hold_s
        time.sleep(min(10.0, max(0.0, args.hold_s - (time.monotonic() - hold_started))))
        samples.append(_rss(procs))
    alive = [p.is_running() for p in procs]
    rss = _rss(procs)
    redis_end = _redis_memory(redis)
    release.set()
    lost = sum(results.get(timeout=120)["lost"] for _ in clients)
    result: dict[str, Any] = {
        "transport": args.transport,
        "tls": bool(args.tls),
        "mode": f"edge --workers {args.workers} (Redis registry)" if args.workers else "serve",
        "server_processes": len(procs),
        "connections": opened,
        "failures": sum(r["failed"] for r in reports),
        "shed": sum(r["shed"] for r in reports),
        "lost": lost,
        "workers_alive_at_end": sum(alive),
        "client_processes": n_procs,
        "connect_seconds": round(connect_s, 3),
        "connect_rate_per_s": round(opened / connect_s, 1) if connect_s else None,
        "hold_seconds": args.hold_s,
        "heartbeat_interval_s": args.heartbeat_s,
        "server_rss_baseline_bytes": baseline,
        "server_rss_bytes": rss,
        "bytes_per_connection": _per(rss - baseline, opened) if procs else None,
        "bytes_per_connection_peak": _per(max(samples) - baseline, opened) if procs else None,
        "bytes_per_connection_after_connect": _per(rss_early - baseline, opened) if procs else None,
        "fds_per_worker": {"min": min(per_worker), "max": max(per_worker)}
        if per_worker else None,
        "kernel": {k: kernel[k] - kernel0.get(k, 0) for k in kernel},
        "kernel_bytes_per_socket_pair": {
            k: _per(kernel[k] - kernel0.get(k, 0), opened) for k in kernel if k.endswith("_bytes")},
        "client_rss_bytes": sum(r["rss"] for r in reports),
        "ramp": ramp,
    }
    if redis is not None:
        result["redis"] = {k: redis1[k] - redis0[k] for k in redis1}
        result["redis"]["bytes_per_connection"] = _per(result["redis"]["used_memory"], opened)
        result["redis"]["at_n"] = redis1
        # 2 keys a device (its record and its user's index: every device has a user of its own
        # here) once every registration is written
        result["redis"]["keys_per_device_at_end"] = _per(redis_end["keys"] - redis0["keys"],
                                                         opened)
    result["machine"] = _machine()
    return result


def _per(delta: int, n: int) -> float | None:
    return round(delta / n, 1) if n else None


# measuring

def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _connections(proc: psutil.Process) -> int:
    """The process's open descriptors: its devices, plus a few (listener, Redis, pipes);
    cheaper than reading the machine's whole TCP table once per worker."""
    try:
        return proc.num_fds()
    except psutil.Error:
        return 0


def _kernel() -> dict[str, int]:
    """Kernel memory of this machine's sockets (both ends are here): TCP's buffer pages
    (/proc/net/sockstat) and the whole slab (/proc/slabinfo, root only; sockets, inodes,
    files, epoll items)."""
    out = {"tcp_inuse": 0, "tcp_mem_bytes": 0, "slab_bytes": 0}
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            values = dict(zip(fields[1::2], fields[2::2], strict=False))
            out["tcp_inuse"] = int(values["inuse"])
            out["tcp_mem_bytes"] = int(values["mem"]) * PAGE
    with contextlib.suppress(OSError):
        for line in Path("/proc/slabinfo").read_text().splitlines()[2:]:
            fields = line.split()
            size = int(fields[2]) * int(fields[3])
            out["slab_bytes"] += size
            if fields[0] in SOCKET_SLABS:
                out["slab_socket_caches_bytes"] = out.get("slab_socket_caches_bytes", 0) + size
    return out


def _redis_memory(redis: Any) -> dict[str, int]:
    if redis is None:
        return {}
    info = redis.cli("info", "memory")
    values = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    memory = {k: int(values[k]) for k in ("used_memory", "used_memory_rss")}
    return {**memory, "keys": int(redis.cli("dbsize"))}


def _machine() -> dict[str, Any]:
    import resource

    def read(path: str) -> str:
        try:
            return " ".join(Path(path).read_text().split())
        except OSError:
            return "?"
    return {
        "cpus": os.cpu_count(),
        "mem_total_bytes": psutil.virtual_memory().total,
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        **{name: read(f"/proc/sys/{path}") for name, path in (
            ("tcp_mem_pages", "net/ipv4/tcp_mem"), ("file_max", "fs/file-max"),
            ("nr_open", "fs/nr_open"), ("ip_local_port_range", "net/ipv4/ip_local_port_range"),
            ("somaxconn", "net/core/somaxconn"))},
    }


def _warm_up(args: argparse.Namespace, host: str, port: int, secret: str, n: int) -> None:
    """Exercise every code path once, so that lazy imports and caches are in the baseline
    (`n` connections: with several workers, the kernel spreads them over all)."""
    tls = _client_tls(args.cafile if args.tls else None)

    async def run() -> None:
        conns = [await _open(host, port, "127.0.0.1", _token(secret, f"warm-{i}"),
                             args.transport, tls) for i in range(n)]
        for _, writer in conns:
            writer.close()
    asyncio.run(run())


# the devices

def _token(secret: str, client_id: str) -> str:
    from core.tokens import issue_token
    return issue_token(secret, client_id=client_id, user_id=f"user-{client_id}",
                       device_type="phone", ttl_s=3600)


def _client_tls(cafile: str | None) -> ssl.SSLContext | None:
    return None if cafile is None else ssl.create_default_context(cafile=cafile)


class Shed(ConnectionError):
    """The edge answered 503 (load shedding): retry later."""


async def _open(host: str, port: int, source: str, token: str, transport: str,
                tls: ssl.SSLContext | None = None
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0), ssl=tls)
    writer.write(_request(host, token, transport))
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101" if transport == "ws" else b"HTTP/1.1 200"):
        writer.close()
        status = head.split(b"\r\n", 1)[0].decode()
        raise Shed(status) if " 503 " in status else ConnectionError(status)
    return reader, writer


class Device(asyncio.Protocol):
    """One idle device on a bare protocol (no stream reader, no task: a client process holds
    16,000 of them on a core it shares): sends its request, waits for the answer's head, then
    answers WebSocket pings (SSE: reads and drops). `lost` once the server closes it."""

    __slots__ = ("buf", "lost", "ready", "request", "transport", "upgraded", "ws")

    released = False  # set in a client process when its devices are closed on purpose

    def __init__(self, request: bytes, ws: bool, ready: asyncio.Future[None]) -> None:
        self.request, self.ws, self.ready = request, ws, ready
        self.buf = b""
        self.upgraded = self.lost = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)
        del self.request

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.buf += data
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            status = head.split(b"\r\n", 1)[0].decode()
            if not status.startswith("HTTP/1.1 101" if self.ws else "HTTP/1.1 200"):
                self._fail(Shed(status) if " 503 " in status else ConnectionError(status))
                return
            self.upgraded, self.buf = True, b""
            if not self.ready.done():
                self.ready.set_result(None)
            data = rest
        if self.ws and data:
            self._frames(data)

    def _frames(self, data: bytes) -> None:
        """Answer each whole ping in the buffer (server frames here are pings and a close;
        payloads under 126 bytes)."""
        buf = self.buf + data
        while len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F):
            opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
            if opcode == PING and self.transport is not None:
                self.transport.write(pong(buf[2:2 + length]))
            buf = buf[2 + length:]
        self.buf = buf

    def _fail(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upgraded and not Device.released:
            self.lost = True
        self._fail(ConnectionError("closed"))


def _client_process(index: int, count: int, host: str, port: int, sources: list[str],
                    secret: str, transport: str, results: Any, release: Any,
                    cafile: str | None, progress: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends the run; we follow `release`
    sheds = 0

    async def run() -> None:
        nonlocal sheds
        loop = asyncio.get_running_loop()
        tokens = [_token(secret, f"d{index}-{i}") for i in range(count)]
        sem = asyncio.Semaphore(CONCURRENT_OPENS)
        tls = _client_tls(cafile)

        async def one(n: int, token: str) -> Device | None:
            source = sources[n % len(sources)]
            nonlocal sheds
            for _ in range(ATTEMPTS):  # bounded retries
                ready: asyncio.Future[None] = loop.create_future()
                device = Device(_request(host, token, transport), transport == "ws", ready)
                sock = None
                async with sem:
                    try:
                        sock = _bound_socket(source)
                        await asyncio.wait_for(loop.sock_connect(sock, (host, port)),
                                               OPEN_TIMEOUT_S)
                        await loop.create_connection(lambda d=device: d, sock=sock, ssl=tls,
                                                     server_hostname=host if tls else None)
                        await asyncio.wait_for(ready, OPEN_TIMEOUT_S)
                        progress[index] += 1
                        return device
                    except Shed:
                        sheds += 1
                    except OSError:  # refused, reset, closed, timed out
                        pass
                    if device.transport is not None:
                        device.transport.close()
                    elif sock is not None:
                        sock.close()
                await asyncio.sleep(random.uniform(0.5, 2.0))
            return None
        opened = await asyncio.gather(*(one(n, t) for n, t in enumerate(tokens)))
        devices = [d for d in opened if d is not None]
        del tokens
        results.put({"opened": len(devices), "failed": count - len(devices), "shed": sheds,
                     "connect_done": time.monotonic(),
                     "rss": psutil.Process().memory_info().rss})
        await loop.run_in_executor(None, release.wait)
        lost = sum(1 for d in devices if d.lost)
        Device.released = True
        for d in devices:
            if d.transport is not None:
                d.transport.close()
        results.put({"lost": lost})
    with contextlib.suppress(ImportError):
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(run())


def _bound_socket(source: str) -> socket.socket:
    """A non-blocking socket bound to `source` with its port chosen at connect, not at bind
    (IP_BIND_ADDRESS_NO_PORT): bind(addr, 0) searches the bind table, shared by every source
    address, for a free port, and past ~190,000 sockets on 25 addresses that search kept the
    client processes in the kernel (77% system time, ~100 connects a second)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.setblocking(False)
    sock.bind((source, 0))
    return sock


def _request(host: str, token: str, transport: str) -> bytes:
    if transport == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        return (f"GET /ws?token={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    return f"GET /sse?token={token} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


# the chart

def _load(paths: list[str]) -> list[dict[str, Any]]:
    return [json.loads(Path(p).read_text()) for p in paths]


def _plot(path: str, runs: list[dict[str, Any]]) -> None:
    """Server bytes per connection against connections open: each run's samples while its
    devices connected (a line) and its figure after the hold (a point)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        label = f"{run['transport'].upper()}, {run['server_processes']} worker(s)"
        if run.get("ramp"):
            xs, ys = zip(*run["ramp"], strict=True)
            ax.plot(xs, ys, alpha=0.6, label=f"{label}, while connecting")
        ax.scatter([run["connections"]], [run["bytes_per_connection"]], zorder=3,
                   label=f"{label}, {run['connections']:,} held {run['hold_seconds']:.0f} s")
    ax.axhline(2000, color="red", linestyle="--", linewidth=1, label="target: 2,000 B")
    ax.set_xscale("log")
    ax.set_xlabel("connections open")
    ax.set_ylabel("server RSS per connection (bytes)")
    ax.set_ylim(0, 4000)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("zuulpush edge: memory per idle connection")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
