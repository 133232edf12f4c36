"""`zuulpush serve` (or `edge`, `api`, `router`) as a real process for tests: start it, read its
banner's `ready:` line, stop it by PID."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.tokens import issue_token
from zuulpush.app import EmbeddedApp

ROOT = Path(__file__).resolve().parents[2]
SECRET = "integration-test-secret-0123456789abcdef"  # >= 32 characters
API_KEY = "integration-api-key"
ADMIN_KEY = "integration-admin-key"
HEARTBEAT_S = 0.5
HANDSHAKE_TIMEOUT_S = 1.0
BASE_ENV = {
    "ZUULPUSH_SECRET": SECRET,
    "ZUULPUSH_API_KEYS": API_KEY,
    "ZUULPUSH_ADMIN_KEY": ADMIN_KEY,
    "ZUULPUSH_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
    "ZUULPUSH_HANDSHAKE_TIMEOUT_S": str(HANDSHAKE_TIMEOUT_S),
    "ZUULPUSH_DRAIN_WINDOW_S": "0.5",  # SIGTERM drains: quickly here, unless a test says
}
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
READY = re.compile(
    r"^\s*ready:(?: edge=(?P<edge>\S+))?(?: api=(?P<api>\S+))? node=(?P<node>\S+)"
    r"(?: workers=(?P<workers>\d+))?\s*$")
SERVE = ("serve", "--port", "0", "--api-port", "0")
EDGE = ("edge", "--port", "0")
API = ("api", "--api-port", "0")
ROUTER = ("router",)


def mint_token(client_id: str, user_id: str = "user", device_type: str = "phone", *,
               ttl_s: int = 3600, secret: str = SECRET) -> str:
    return issue_token(secret, client_id=client_id, user_id=user_id, device_type=device_type,
                       ttl_s=ttl_s)


@dataclass
class ServerProcess:
    """A running `zuulpush serve`: its URLs, secrets, PID and what it printed."""

    proc: subprocess.Popen[bytes]
    edge: str
    api: str
    node_id: str
    env: dict[str, str]
    stderr_path: Path
    lines: list[str]
    _reader: threading.Thread
    returncode: int | None = field(default=None)

    secret: str = SECRET
    api_key: str = API_KEY
    admin_key: str = ADMIN_KEY

    @property
    def pid(self) -> int:
        return self.proc.pid

    def token(self, client_id: str, user_id: str = "user", device_type: str = "phone", *,
              ttl_s: int = 3600) -> str:
        return mint_token(client_id, user_id, device_type, ttl_s=ttl_s, secret=self.secret)

    def stdout_text(self) -> str:
        return "\n".join(self.lines)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def terminate(self) -> None:
        """Send SIGTERM to this PID (and to nothing else), unless it has already been reaped."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        # poll() reaps an exited child first, so we never signal a PID the OS may have reused.
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def pause(self) -> None:
        """SIGSTOP this PID: it holds what it has (sockets, a batch taken) and does nothing."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT this PID after `pause`."""
        self._signal(signal.SIGCONT)

    def kill(self) -> int:
        """SIGKILL this PID (a crash, as far as the rest of the fleet can tell) and reap it."""
        if self.returncode is None:
            try:
                self._kill()
            finally:
                self._release()
        assert self.returncode is not None
        return self.returncode

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM this PID, wait for it to exit (SIGKILL it after `timeout_s`); exit status."""
        if self.returncode is None:
            self.terminate()
            self.returncode = self.wait(timeout_s)
        return self.returncode

    def wait(self, timeout_s: float) -> int:
        """The exit status once the process has ended; SIGKILL (and fail) if it will not."""
        if self.returncode is not None:
            return self.returncode
        try:
            self.returncode = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._kill()
            raise AssertionError(
                f"zuulpush serve (pid {self.pid}) did not exit within {timeout_s}s; killed. "
                f"stderr:\n{self.stderr_text()}") from None
        finally:
            self._release()
        return self.returncode

    def _kill(self) -> None:
        self._signal(signal.SIGKILL)
        self.returncode = self.proc.wait(timeout=STOP_TIMEOUT_S)

    def _release(self) -> None:
        if self.proc.returncode is None:
            return
        self._reader.join(timeout=STOP_TIMEOUT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _read_lines(stream: Any, lines: list[str], ready: queue.Queue[str | None]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        lines.append(line)
        ready.put(line)
    ready.put(None)


def start_server(tmp_dir: Path, extra_env: Mapping[str, str] | None = None,
                 args: tuple[str, ...] = (), command: tuple[str, ...] = SERVE,
                 launcher: Sequence[str] = ("-m", "zuulpush")) -> ServerProcess:
    """Start `zuulpush serve` (or another `command`, e.g. `EDGE`) and return once its banner's
    ready line is out. `launcher`: the Python arguments that run the `zuulpush` command line
    (another one may set something up first, e.g. a resource limit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")}
    env.update(BASE_ENV)
    env.update(extra_env or {})
    stderr_path = tmp_dir / f"serve-{time.monotonic_ns()}.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *launcher, *command, "--log-level", "warning", *args],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
    lines: list[str] = []
    seen: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines, seen), daemon=True)
    reader.start()
    server = ServerProcess(proc, "", "", "", env, stderr_path, lines, reader)
    match = _wait_ready(seen, START_TIMEOUT_S)
    if match is None:
        server._kill()
        server._release()
        raise AssertionError(
            f"zuulpush serve exited, or printed no ready line within {START_TIMEOUT_S}s.\n"
            f"stdout:\n{server.stdout_text()}\nstderr:\n{server.stderr_text()}")
    server.edge, server.api, server.node_id = match["edge"] or "", match["api"] or "", match["node"]
    return server


def _wait_ready(seen: queue.Queue[str | None], timeout_s: float) -> re.Match[str] | None:
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = seen.get(timeout=remaining)
        except queue.Empty:
            return None
        if line is None:  # stdout closed: the process ended
            return None
        if match := READY.match(line):
            return match
    return None


Job = tuple[tuple[str, ...], Mapping[str, str], tuple[str, ...]]
"""What `start_many` starts: a command, extra environment and arguments."""


def two_region_jobs(a_url: str, b_url: str, env: Mapping[str, str] | None = None, *,
                    api_in_b: bool = False) -> list[Job]:
    """Region a (edge-a, the API, a router) on `a_url` and region b (edge-b, a router, and with
    `api_in_b` an API of its own) on `b_url`, each the other's peer region; `env` is added to
    every process's. In this order: edge-a, edge-b, the API, a's router, b's router, b's API."""
    in_a = {"ZUULPUSH_REDIS_URL": a_url, **(env or {})}
    in_b = {"ZUULPUSH_REDIS_URL": b_url, **(env or {})}
    jobs: list[Job] = [
        (EDGE, in_a, ("--node-id", "edge-a", "--region", "a", "--peer-region", f"b={b_url}")),
        (EDGE, in_b, ("--node-id", "edge-b", "--region", "b", "--peer-region", f"a={a_url}")),
        (API, in_a, ()),
        (ROUTER, in_a, ("--region", "a", "--peer-region", f"b={b_url}")),
        (ROUTER, in_b, ("--region", "b", "--peer-region", f"a={a_url}")),
    ]
    return [*jobs, (API, in_b, ())] if api_in_b else jobs


def start_many(tmp_dir: Path, jobs: Sequence[Job]) -> list[ServerProcess]:
    """Start the jobs concurrently; their servers in job order. If one fails to start, those
    that did start are stopped (by PID) before the failure is raised: none is left behind."""
    started: list[ServerProcess] = []

    def start(job: Job) -> ServerProcess:
        command, env, args = job
        server = start_server(tmp_dir, env, args, command=command)
        started.append(server)
        return server

    try:
        with ThreadPoolExecutor(max(1, len(jobs))) as pool:
            return list(pool.map(start, jobs))
    except BaseException:
        for server in started:
            server.stop()
        raise


def stop_all(servers: list[ServerProcess]) -> None:
    """Stop each server; fail unless each exited 0 without logging a traceback."""
    failures = []
    for server in servers:
        code = server.stop()
        stderr = server.stderr_text()
        if code != 0 or "Traceback" in stderr:
            failures.append(f"pid {server.pid} exited {code}; stderr:\n{stderr}")
    assert not failures, "unclean shutdown: " + "\n".join(failures)


@dataclass
class Embedded:
    app: EmbeddedApp
    edge: str
    api: str
    secret: str = SECRET
    api_key: str = API_KEY

    def token(self, client_id: str, user_id: str = "user", device_type: str = "phone") -> str:
        return mint_token(client_id, user_id, device_type, secret=self.secret)


