"""Real `redis-server` processes for tests: single servers and a Redis Cluster.

Each server gets a free loopback port (never 6379), its own directory, no persistence unless
asked for, and is stopped by its PID. A cluster is made the way operators make one: N servers with
`cluster-enabled yes`, joined by `redis-cli --cluster create`. A cluster node also needs its bus
port (port + 10000) free, so ports are chosen with that in mind.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def redis_available() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


def free_port(*, with_bus: bool = False) -> int:
    """A free loopback port (and, with `with_bus`, port + 10000 free too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port == 6379:
            continue
        if not with_bus:
            return port
        if port + 10000 <= 65535 and _is_free(port + 10000):
            return port
    raise RuntimeError("no free port")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class RedisServer:
    """One `redis-server` this test run started; `stop()` ends it by PID, `start()` again."""

    port: int
    directory: Path
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
                *self.extra]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self._wait_ping()
        return self

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """End this server (its PID only): SIGTERM, then SIGKILL if it does not go."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: the server stops answering, its sockets stay open."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def cli(self, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip()

    def _wait_ping(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = self.directory / "redis.log"
                text = log.read_text() if log.exists() else ""
                raise RuntimeError(f"redis-server exited: {text}")
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                if self.cli("ping") == "PONG":
                    return
            time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING")


def start_redis(directory: Path, *extra: str) -> RedisServer:
    return RedisServer(free_port(), directory, extra).start()


@dataclass
class RedisCluster:
    """A Redis Cluster of `masters` servers (no replicas), made with `redis-cli --cluster`."""

    servers: list[RedisServer]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.servers[0].port}/0"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.servers]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def start_cluster(directory: Path, masters: int = 3) -> RedisCluster:
    servers: list[RedisServer] = []
    try:
        for i in range(masters):
            node_dir = directory / f"node{i}"
            port = free_port(with_bus=True)
            servers.append(RedisServer(port, node_dir, (
                "--cluster-enabled", "yes", "--cluster-config-file",
                str(node_dir / "nodes.conf"), "--cluster-node-timeout", "2000")).start())
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{s.port}" for s in servers),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       capture_output=True, text=True, timeout=60, check=True)
        _wait_cluster_ok(servers)
    except BaseException:
        for server in servers:
            server.stop(signal.SIGKILL)
        raise
    return RedisCluster(servers)


def _wait_cluster_ok(servers: list[RedisServer]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S * 3
    while time.monotonic() < deadline:
        if all("cluster_state:ok" in s.cli("cluster", "info") for s in servers):
            return
        time.sleep(0.1)
    raise RuntimeError("redis cluster did not reach cluster_state:ok")
