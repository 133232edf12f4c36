"""Smoke test of the locust kit (perf/locustfile.py) against a live `zuulpush serve`.

Locust runs headless as its own process for a few seconds (20 users: one BackendUser, 19
devices, a quarter of them on SSE); its CSV stats must show every device connected, the
backend's pushes accepted, and pushes arriving on both transports.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .servers import ROOT, ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LOCUST_TIMEOUT_S = 40.0
"""`-t 8s` plus locust's start-up and its users' stop; past this the run is killed."""


def run_locust(server: ServerProcess, out: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "perf" / "locustfile.py"),
        "--headless", "-u", "20", "-r", "20", "-t", "8s", "--only-summary",
        "--csv", str(out / "run"), "--host", server.edge, "--api-url", server.api,
        "--api-key", server.api_key, "--secret", server.secret,
        "--sse-share", "0.25", "--push-rate", "20",
    ]
    return subprocess.run(command, cwd=ROOT, env=server.env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=LOCUST_TIMEOUT_S)


def read_stats(path: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(type, name) -> (requests, failures), from locust's `<prefix>_stats.csv`."""
    with path.open(newline="") as f:
        return {(row["Type"], row["Name"]): (int(row["Request Count"]), int(row["Failure Count"]))
                for row in csv.DictReader(f) if row["Name"] != "Aggregated"}


def test_locust_kit_pushes_arrive(serve_factory: Callable[..., ServerProcess],
                                  tmp_path: Path) -> None:
    server = serve_factory()
    result = run_locust(server, tmp_path)
    output = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    assert result.returncode == 0, output  # locust exits 1 when any request failed
    stats = read_stats(tmp_path / "run_stats.csv")

    connects = {name: counts for (kind, name), counts in stats.items() if kind == "CONNECT"}
    assert set(connects) == {"ws connect", "sse connect"}, output
    assert sum(n for n, _ in connects.values()) == 19, output  # each device once, none failed

    posts = {name: counts for (kind, name), counts in stats.items() if kind == "POST"}
    assert sum(n for n, _ in posts.values()) > 0, output
    assert all(failures == 0 for _, failures in posts.values()), output

    for name in ("ws push", "sse push"):
        received, failures = stats.get(("PUSH", name), (0, 0))
        assert received > 0 and failures == 0, f"{name}: {received}, {failures}\n{output}"
    assert not any(kind == "DISCONNECT" for kind, _ in stats), output
