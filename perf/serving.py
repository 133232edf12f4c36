"""Start and stop the `zuulpush serve` a benchmark measures (a real process, stopped by PID)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_serve(env: Mapping[str, str], args: Sequence[str] = (),
                timeout_s: float = 30.0, banner: list[str] | None = None
                ) -> tuple[subprocess.Popen[str], str, int]:
    """`zuulpush serve` on free ports with `env` over this environment (less its own
    ZUULPUSH_* settings); the process and its edge's host and port, once it is ready (its
    `ready:` line is appended to `banner` if given: it names the API too). Its later output is
    read and dropped, so it never blocks on a full pipe."""
    server, host, port, _ = _start(["serve", "--port", "0", "--api-port", "0", *args], env,
                                   timeout_s, banner)
    return server, host, port


def start_edge(env: Mapping[str, str], args: Sequence[str] = (),
               timeout_s: float = 90.0) -> tuple[subprocess.Popen[str], str, int, list[int]]:
    """`zuulpush edge --port 0` (set its Redis, secret and `--workers` in `env` or `args`), as
    `start_serve`; also the PIDs of its workers (with `--workers` N > 1, read from the
    supervisor's banner; else the process itself). A worker's later `restarted:` line is
    not seen: count restarts by the workers' PIDs."""
    server, host, port, lines = _start(["edge", "--port", "0", *args], env, timeout_s)
    pids = [int(m.group(1)) for line in lines if (m := re.search(r"worker: .* pid=(\d+)", line))]
    return server, host, port, pids or [server.pid]


def _start(command: Sequence[str], env: Mapping[str, str], timeout_s: float,
           banner: list[str] | None = None) -> tuple[subprocess.Popen[str], str, int, list[str]]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")}
    full.update(env)
    server = subprocess.Popen(
        [sys.executable, "-m", "zuulpush", *command, "--log-level", "warning"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, env=full)
    assert server.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        lines.append(line)
        match = re.search(r"ready: edge=https?://([\d.]+):(\d+)", line)
        if match:
            if banner is not None:
                banner.append(line)
            threading.Thread(target=server.stdout.read, daemon=True).start()
            return server, match.group(1), int(match.group(2)), lines
        if not line and server.poll() is not None:
            break
    stop(server)
    raise SystemExit(f"zuulpush {command[0]} did not start")


def stop(server: subprocess.Popen[str], timeout_s: float = 30.0) -> None:
    """SIGTERM this PID and wait; SIGKILL it if it does not exit in `timeout_s`."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)
