"""`perf/fanout.py` as the docs print it, at small sizes: it starts its own `zuulpush serve`, opens
every device it asks for (retrying the connects the edge sheds, as its `Retry-After` says, a
bounded number of times), prints its figures, and fails at once with a clear message when it
cannot have every device (rather than measuring fewer, or waiting out its timeouts)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from .servers import ROOT

pytestmark = pytest.mark.timeout(150)

FANOUT = str(ROOT / "perf" / "fanout.py")
SMALL = ["--devices", "300", "--per-process", "100", "--rounds", "1", "--storm-messages", "200",
         "--push-messages", "60", "--idle-s", "0.5", "--timeout-s", "20"]


def fanout(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")}
    return subprocess.run([sys.executable, FANOUT, *args], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def test_every_device_connects_despite_shedding_and_every_phase_delivers_all() -> None:
    """The server is made to shed hard (100 connects a second, 50 at once, 1-2 s Retry-After):
    the devices it sheds wait as told and connect on a later try."""
    done = fanout(*SMALL, "--server-arg=--accept-rate=100", "--server-arg=--accept-burst=50",
                  "--server-arg=--shed-retry-after-s=1")
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    assert (result["devices"], result["connected"], result["failed"]) == (300, 300, 0)
    assert result["shed_retried"] > 0  # the server did shed, and the retries got through
    for phase in ("broadcast", "storm", "push"):
        [figures] = result[phase]
        assert figures["deliveries"] == figures["deliveries_expected"] > 0, (phase, figures)
        # Its figures are printed (a tiny phase may take less CPU than /proc's 10 ms tick).
        assert isinstance(figures["us_per_delivery"], int | float), figures


def test_devices_the_server_will_not_take_fail_fast_with_a_message() -> None:
    began = time.monotonic()
    done = fanout(*SMALL, "--server-arg=--max-connections=120", "--connect-attempts", "2",
                  "--server-arg=--shed-retry-after-s=1")
    assert done.returncode != 0
    assert "connected 120 of 300 devices" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert time.monotonic() - began < 60


def test_more_devices_than_one_serve_can_hold_is_refused_before_starting() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    done = fanout("--devices", str(soft + 1000), timeout_s=30)
    assert done.returncode != 0
    assert "one zuulpush serve" in done.stderr and "--devices" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_client_processes_end_when_the_benchmark_is_killed() -> None:
    """Killed (SIGKILL: no `quit` on the pipes), its client processes must not live on as
    orphans (they used to spin on the closed pipe at full CPU, forever)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")}
    bench = subprocess.Popen([sys.executable, FANOUT, *SMALL, "--idle-s", "30"], cwd=ROOT,
                             env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    clients: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(clients) < 3:  # 300 devices, 100 a process
            time.sleep(0.2)
            clients = [c for c in psutil.Process(bench.pid).children()
                       if "spawn_main" in " ".join(c.cmdline())]  # not serve, not the tracker
        assert len(clients) == 3
        time.sleep(3)  # connected, measuring its idle rate
    finally:
        bench.kill()
        bench.wait(timeout=10)
    _, alive = psutil.wait_procs(clients, timeout=15)
    for process in alive:  # ours: end them by PID before failing
        process.kill()
    assert not alive, [p.pid for p in alive]
