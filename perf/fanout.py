"""Fan-out benchmark: server CPU per delivery, for broadcasts and for user-targeted storms.

Starts `zuulpush serve` (one process: API, router and edge share it; in-memory seams) or uses a
running one (`--edge`, `--api`, `--server-pid`, `--secret`, `--api-key`), opens N WebSocket
devices from several client processes and loopback source addresses (perf/devices.py: raw
`asyncio.Protocol` clients that count the text frames they receive), then measures, each phase
`--rounds` times:

- `broadcast`: one `POST /v1/push` with `broadcast: true`, waited for until every device has it;
- `storm`: `--storm-messages` messages each to one user (`--devices-per-user` devices), sent as
  `POST /v1/push/batch` of `--batch` messages from `--senders` threads;
- `push`: `--push-messages` single `POST /v1/push`, each to one user, from `--senders` threads.

For each: the server's CPU (utime + stime from /proc, which counts the kernel's work in its
syscalls) over the phase, less the idle baseline measured over `--idle-s` before (its rate times
the phase's wall time); deliveries seen by the devices; seconds from the first request to the
last delivery; and microseconds of server CPU per delivery (and per message for `storm` and
`push`). The server CPU of `storm` and `push` includes the API's HTTP handling, the router, the
in-memory inbox's store of each message and the edge's writes: in `serve` they are one process.

Devices do not ack unless `--ack` (then each message is acked by id; acks cost server CPU too).

Every device asked for must connect, or there is nothing to compare: the `zuulpush serve` it
starts sheds nothing for the benchmark (`--accept-rate 0 --shed-loop-lag-ms 0`, no lifetimes, a
60 s handshake deadline; `--server-arg` comes after and may set any of them back), a connect
that is shed anyway is tried again after its `Retry-After` (`--connect-attempts` tries in all),
and if some device still has no connection the run stops with a message saying how many did,
before measuring anything. One `serve` holds at most its connection ceiling (90% of the file
descriptors it may open less a twentieth: 17,100 at the usual 20,000), so more `--devices` are
refused before anything starts; the client processes hold `--per-process` each.

    python perf/fanout.py --devices 15000
    python perf/fanout.py --devices 15000 --ack --phases storm push
    python perf/fanout.py --profile /tmp/prof   # py-spy record -r 500 -f raw per phase
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.tokens import issue_token  # noqa: E402
from perf.devices import Fleet, split  # noqa: E402
from perf.serving import start_serve, stop  # noqa: E402
from zuulpush.edge.shedding import derive_ceilings  # noqa: E402

SECRET = "fanout-benchmark-secret-0123456789abcdef"
API_KEY = "fanout"
BENCHMARK_LIMITS = ["--accept-rate", "0", "--shed-loop-lag-ms", "0", "--lifetime-max-s", "0"]
"""What the benchmark's own `zuulpush serve` is started with: it sheds no connect."""
CLIENT_FD_RESERVE = 200
"""File descriptors a client process keeps for itself besides its devices' sockets."""


def main() -> None:
    args = _args()
    _check(args)
    server = None
    if args.edge:
        host, port = args.edge.split(":")
        api, pid, secret = args.api, args.server_pid, args.secret
    else:
        banner: list[str] = []
        env = {"ZUULPUSH_SECRET": SECRET, "ZUULPUSH_API_KEYS": API_KEY,
               "ZUULPUSH_HEARTBEAT_INTERVAL_S": str(args.heartbeat_s),
               "ZUULPUSH_HANDSHAKE_TIMEOUT_S": "60"}
        server, host, port = start_serve(env, [*BENCHMARK_LIMITS, *args.server_arg],
                                         banner=banner)
        api = banner[0].split("api=")[1].split()[0].split("://")[1]
        pid, secret = server.pid, SECRET
        args.api_key = API_KEY
    try:
        result = _run(args, host, int(port), api, pid, secret)
    finally:
        if server is not None:
            stop(server)
    print(json.dumps(result, indent=2))


def _check(args: argparse.Namespace) -> None:
    """SystemExit, before anything starts, for a run that cannot have all its devices."""
    fd_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = None if fd_limit == resource.RLIM_INFINITY else fd_limit
    if limit is not None and args.per_process + CLIENT_FD_RESERVE > limit:
        raise SystemExit(f"--per-process {args.per_process}: a client process may open {limit} "
                         f"files here; give at most {limit - CLIENT_FD_RESERVE} "
                         "(more processes share the devices)")
    ceiling, _ = derive_ceilings(limit, 0, 0)
    if not args.edge and args.devices > ceiling:
        raise SystemExit(f"--devices {args.devices}: one zuulpush serve holds at most {ceiling} "
                         f"connections here (file-descriptor limit {limit}); give fewer "
                         "--devices, raise the limit (ulimit -n), or measure a fleet's edge "
                         "with --edge")
    if args.profile and not _py_spy().exists():
        raise SystemExit("--profile needs py-spy beside this Python (pip install py-spy, or "
                         "pip install -e '.[perf]')")


def _py_spy() -> Path:
    beside = Path(sys.executable).with_name("py-spy")
    found = shutil.which("py-spy")
    return beside if beside.exists() or found is None else Path(found)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", type=int, default=15000)
    p.add_argument("--per-process", type=int, default=4000, help="devices per client process")
    p.add_argument("--devices-per-user", type=int, default=2)
    p.add_argument("--phases", nargs="+", default=["broadcast", "storm", "push"],
                   choices=["broadcast", "storm", "push"])
    p.add_argument("--rounds", type=int, default=3, help="repeats of each phase")
    p.add_argument("--storm-messages", type=int, default=20000)
    p.add_argument("--push-messages", type=int, default=5000)
    p.add_argument("--batch", type=int, default=100, help="messages per /v1/push/batch")
    p.add_argument("--senders", type=int, default=4, help="sender threads (keep-alive each)")
    p.add_argument("--data-bytes", type=int, default=64, help="size of each message's data")
    p.add_argument("--ack", action="store_true", help="devices ack every message")
    p.add_argument("--idle-s", type=float, default=3.0)
    p.add_argument("--heartbeat-s", type=float, default=60.0,
                   help="server heartbeat interval (pings are answered)")
    p.add_argument("--timeout-s", type=float, default=120.0, help="bound on each phase")
    p.add_argument("--connect-attempts", type=int, default=5,
                   help="tries per device: a shed connect is tried again after its Retry-After")
    p.add_argument("--profile", help="py-spy record -r 500 -f raw each phase to PREFIX-<phase>")
    p.add_argument("--server-arg", action="append", default=[])
    p.add_argument("--edge", help="host:port of a running edge (default: start zuulpush serve)")
    p.add_argument("--api", help="host:port of its push API")
    p.add_argument("--server-pid", type=int, help="PID of the process to measure")
    p.add_argument("--secret", help="its device-token secret")
    p.add_argument("--api-key", help="its API key")
    return p.parse_args()


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _run(args: argparse.Namespace, host: str, port: int, api: str, pid: int,
         secret: str) -> dict[str, Any]:
    proc = psutil.Process(pid)
    dpu = args.devices_per_user
    tokens = [issue_token(secret, client_id=f"c{i}", user_id=f"u{i // dpu}",
                          device_type="phone", ttl_s=3600) for i in range(args.devices)]
    fleet = Fleet(host, port, split(tokens, args.per_process), ack=args.ack,
                  attempts=args.connect_attempts)
    try:
        connected = fleet.connect()
        if connected["opened"] < args.devices:
            raise SystemExit(
                f"connected {connected['opened']} of {args.devices} devices "
                f"({connected['failed']} without a connection after up to "
                f"{args.connect_attempts} tries; {connected['sheds']} shed answers on the way): "
                "nothing measured. The server must take every device: loosen its limits "
                "(--server-arg, or a running server's own settings with --edge), allow more "
                "--connect-attempts, or give fewer --devices.")
        time.sleep(1.0)  # registrations and replays of the last ones settle
        sender = Sender(api, args.api_key, args.senders)
        idle = _idle(proc, args.idle_s)
        out: dict[str, Any] = {
            "devices": args.devices, "connected": connected["opened"],
            "failed": connected["failed"], "shed_retried": connected["sheds"],
            "connect_s": round(connected["seconds"], 2), "client_processes": len(fleet.procs),
            "devices_per_user": dpu, "acks": args.ack, "data_bytes": args.data_bytes,
            "idle_cpu_per_s": round(idle, 5)}
        data = "x" * args.data_bytes
        for phase in args.phases:
            rounds = []
            for r in range(args.rounds):
                profiler = _profiler(args.profile, f"{phase}-{r}", pid) if r == 0 else None
                try:
                    rounds.append(PHASES[phase](args, fleet, sender, proc, idle, data,
                                                connected["opened"]))
                finally:
                    _stop_profiler(profiler)
            out[phase] = rounds
        out["closed_by_server"] = fleet.report()["closed"]
        return out
    finally:
        fleet.close()


def _idle(proc: psutil.Process, seconds: float) -> float:
    """The server's idle CPU seconds per second (heartbeats, timers, sampler)."""
    cpu, t = _cpu(proc), time.monotonic()
    time.sleep(seconds)
    return (_cpu(proc) - cpu) / (time.monotonic() - t)


class Measure:
    """Server CPU and wall time over a phase, less the idle rate over the same time."""

    def __init__(self, proc: psutil.Process, idle: float) -> None:
        self.proc, self.idle = proc, idle
        self.cpu, self.t, self.wall = _cpu(proc), time.monotonic(), time.time()

    def done(self) -> tuple[float, float]:
        """(CPU seconds less idle, idle CPU seconds subtracted)."""
        cpu, elapsed = _cpu(self.proc) - self.cpu, time.monotonic() - self.t
        return cpu - self.idle * elapsed, self.idle * elapsed


def _figures(measure: Measure, report: dict[str, Any], before: int, expected: int,
             messages: int, requests: int) -> dict[str, Any]:
    cpu, idle = measure.done()
    delivered = report["messages"] - before
    return {
        "messages": messages, "requests": requests, "deliveries_expected": expected,
        "deliveries": delivered,
        "server_cpu_s": round(cpu, 4), "idle_cpu_s_subtracted": round(idle, 4),
        "us_per_delivery": round(cpu / delivered * 1e6, 2) if delivered else None,
        "deliveries_per_cpu_s": round(delivered / cpu) if cpu > 0 else None,
        "us_per_message": round(cpu / messages * 1e6, 2) if messages else None,
        "seconds_to_last_delivery": round(report["last_at"] - measure.wall, 4),
    }


def _broadcast(args: argparse.Namespace, fleet: Fleet, sender: Sender, proc: psutil.Process,
               idle: float, data: str, devices: int) -> dict[str, Any]:
    before = fleet.report()["messages"]
    body = orjson.dumps({"to": {"broadcast": True}, "topic": "all", "data": data})
    measure = Measure(proc, idle)
    sender.post_all("/v1/push", [body])
    report = fleet.wait_for(before + devices, args.timeout_s)
    return _figures(measure, report, before, devices, 1, 1)


def _storm(args: argparse.Namespace, fleet: Fleet, sender: Sender, proc: psutil.Process,
           idle: float, data: str, devices: int) -> dict[str, Any]:
    users = devices // args.devices_per_user
    n = args.storm_messages
    bodies = [orjson.dumps({"messages": [
        {"to": {"users": [f"u{(i + k) % users}"]}, "topic": "storm", "data": data}
        for k in range(min(args.batch, n - i))]}) for i in range(0, n, args.batch)]
    before = fleet.report()["messages"]
    measure = Measure(proc, idle)
    sender.post_all("/v1/push/batch", bodies)
    report = fleet.wait_for(before + n * args.devices_per_user, args.timeout_s)
    return _figures(measure, report, before, n * args.devices_per_user, n, len(bodies))


def _push(args: argparse.Namespace, fleet: Fleet, sender: Sender, proc: psutil.Process,
          idle: float, data: str, devices: int) -> dict[str, Any]:
    users = devices // args.devices_per_user
    n = args.push_messages
    bodies = [orjson.dumps({"to": {"users": [f"u{i % users}"]}, "topic": "one", "data": data})
              for i in range(n)]
    before = fleet.report()["messages"]
    measure = Measure(proc, idle)
    sender.post_all("/v1/push", bodies)
    report = fleet.wait_for(before + n * args.devices_per_user, args.timeout_s)
    return _figures(measure, report, before, n * args.devices_per_user, n, n)


PHASES = {"broadcast": _broadcast, "storm": _storm, "push": _push}


class Sender:
    """`threads` keep-alive HTTP/1.1 connections to the API, each sending its share in turn."""

    def __init__(self, api: str, api_key: str, threads: int) -> None:
        self.host, port = api.rsplit(":", 1)
        self.port, self.threads = int(port), threads
        self.headers = {"Authorization": f"Bearer {api_key}",
                        "Content-Type": "application/json"}

    def post_all(self, path: str, bodies: list[bytes]) -> None:
        errors: list[str] = []
        shares = [bodies[i::self.threads] for i in range(self.threads)]
        threads = [threading.Thread(target=self._send, args=(path, share, errors))
                   for share in shares if share]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        if errors:
            raise SystemExit(f"push API answered: {errors[:3]}")

    def _send(self, path: str, bodies: list[bytes], errors: list[str]) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            for body in bodies:
                conn.request("POST", path, body, self.headers)
                response = conn.getresponse()
                answer = response.read()
                if response.status != 202:
                    errors.append(f"{response.status} {answer[:200]!r}")
                    return
        finally:
            conn.close()


def _profiler(prefix: str | None, name: str, pid: int) -> subprocess.Popen[bytes] | None:
    if not prefix:
        return None
    profiler = subprocess.Popen(
        [str(_py_spy()), "record", "-r", "500", "-f", "raw", "-o", f"{prefix}-{name}.txt",
         "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    return profiler


def _stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is None:
        return
    profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(timeout=30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait(timeout=10)


if __name__ == "__main__":
    main()
