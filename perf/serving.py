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
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")}
    full.update(env)
    server = subprocess.Popen(
        [sys.executable, "-m", "zuulpush", "serve", "--port", "0", "--api-port", "0",
         "--log-level", "warning", *args],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, env=full)
    assert server.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        match = re.search(r"ready: edge=https?://([\d.]+):(\d+)", line)
        if match:
            if banner is not None:
                banner.append(line)
            threading.Thread(target=server.stdout.read, daemon=True).start()
            return server, match.group(1), int(match.group(2))
        if not line and server.poll() is not None:
            break
    stop(server)
    raise SystemExit("zuulpush serve did not start")


def stop(server: subprocess.Popen[str], timeout_s: float = 30.0) -> None:
    """SIGTERM this PID and wait; SIGKILL it if it does not exit in `timeout_s`."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)
