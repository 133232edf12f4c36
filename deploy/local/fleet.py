"""A two-region zuulpush fleet on loopback, behind HAProxy: one command to bring it up, one to
restart its edges one by one under traffic, one to take it down.

    python deploy/local/fleet.py up [--base-dir DIR] [--drain-window-s S] [--foreground]
    python deploy/local/fleet.py status [--base-dir DIR] [--json]
    python deploy/local/fleet.py rolling-restart [--base-dir DIR] [--region a|b|all]
    python deploy/local/fleet.py down [--base-dir DIR]
    python deploy/local/fleet.py token --client ID [--user U] [--device-type T] [--base-dir DIR]

Per region (`a`, `b`), all on 127.0.0.1, each on a free port chosen at `up` and kept for the
fleet's life:

- a `redis-server` (its own directory, no persistence);
- two `zuulpush edge` nodes (`<region>-edge-1`, `<region>-edge-2`), `--region` this one and
  `--peer-region` the other region's Redis, so their registries replicate;
- one `zuulpush router --region R --peer-region OTHER=URL` (delivers across regions) and one
  `zuulpush api` (the push-send API for backends);
- one `haproxy` (Debian's package) in TCP mode in front of that region's edges: devices connect
  to it, never to an edge directly. `balance leastconn`, a `GET /healthz` check every 500 ms
  (an edge answers 503 while it drains), tunnel timeouts of an hour.

Secrets (device-token secret, API key, admin key) are made per fleet. Everything the fleet is
(ports, PIDs, secrets, the commands run) is in `DIR/fleet.json` (mode 600), logs in `DIR/logs/`.
`up` starts the processes in their own sessions and returns once all are ready, so the fleet
outlives it (`--foreground` instead stays and takes the fleet down on Ctrl-C or SIGTERM); the
other commands read the state file. A process is stopped by its PID only, and only while that
PID is still the process the fleet started (its start time in `/proc/PID/stat` is recorded with
it: Linux). Every wait is bounded.

`rolling-restart` takes each edge of the region(s) in turn: HAProxy stops sending it new
connections (`set server ... state drain` on its admin socket), the edge gets SIGTERM and drains
(its devices get the go-away and reconnect through HAProxy to the other edge), it exits, is
started again under the same node id on the same port, and once HAProxy's check sees it up it is
put back in rotation; then the next one.

Tests drive the same code in-process: `Fleet.plan(dir, env=...)`, `up()`, `rolling_restart()`,
`down()` (tests/integration/test_local_fleet.py). deploy/local/README.md is the user's page.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import io
import json
import os
import re
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
REGIONS = ("a", "b")
EDGES_PER_REGION = 2
STATE_FILE = "fleet.json"
DEFAULT_BASE_DIR = Path(tempfile.gettempdir()) / "zuulpush-fleet"
DEFAULT_DRAIN_WINDOW_S = 5.0
DEFAULT_HEARTBEAT_S = 30.0
"""zuulpush's own `heartbeat_interval_s` default: a drain may last its window plus this."""
START_TIMEOUT_S = 45.0
"""Eight Python processes importing at once on a small machine take a while."""
STOP_TIMEOUT_S = 10.0
POLL_S = 0.1
READY_LINE = re.compile(rb"^\s*ready:", re.MULTILINE)
MAX_LB_CONNECTIONS = 10_000
MAX_SOCKET_PATH = 100
"""A Unix socket's path must fit in sun_path (108 bytes on Linux)."""


class FleetError(RuntimeError):
    """A fleet command could not do what it was asked; the message says why and what next."""


# what the state file records

@dataclass
class Secrets:
    """The fleet's secrets, made once per fleet by `up`."""

    secret: str
    api_key: str
    admin_key: str

    @classmethod
    def generate(cls) -> Secrets:
        """Hex: nothing that a command line could take for an option (a leading '-')."""
        return cls(secrets.token_hex(32), secrets.token_hex(24), secrets.token_hex(24))


@dataclass
class Service:
    """One process of the fleet: what runs it, where it listens, which PID it is now.

    `ticks` is the process's start time (`/proc/PID/stat`, clock ticks since boot); with `pid`
    it names one process, so a PID the kernel has reused is never signalled."""

    name: str
    kind: str  # redis, edge, router, api, haproxy
    region: str
    port: int  # 0: listens on nothing (a router)
    argv: list[str]
    pid: int = 0
    ticks: int = 0
    restarts: int = 0

    @property
    def url(self) -> str:
        scheme = "redis" if self.kind == "redis" else "http"
        return f"{scheme}://{HOST}:{self.port}" + ("/0" if self.kind == "redis" else "")


@dataclass(frozen=True)
class Restart:
    """What one edge's restart took: its drain (SIGTERM until the process was gone) and all."""

    name: str
    old_pid: int
    new_pid: int
    exit_code: int | None  # None: the old process was not this program's child
    drained_s: float
    total_s: float


# processes, by PID

def start_ticks(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot), None if there is none or it
    has exited (a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name, in parentheses, may hold spaces
    return None if fields[0] in ("Z", "X") else int(fields[19])


def free_port(taken: set[int]) -> int:
    """A loopback port nothing listens on now (nor one we picked already); not 6379."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in taken and port != 6379:
            taken.add(port)
            return port
    raise FleetError("no free loopback port")


def until(check: Callable[[], bool], timeout_s: float, what: str,
          alive: Callable[[], bool] = lambda: True) -> None:
    """Poll `check` until it holds; FleetError if `alive` turns false or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if not alive():
            raise FleetError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise FleetError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(POLL_S)


def redis_pong(port: int) -> bool:
    """Whether the Redis on `port` answers PING."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def healthz(port: int) -> dict[str, Any] | None:
    """An edge's `GET /healthz` body (200 while active, 503 while draining); None if it does
    not answer."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/healthz", timeout=2.0) as answer:
            body = answer.read()
    except urllib.error.HTTPError as failed:
        body = failed.read()
    except OSError:
        return None
    with contextlib.suppress(ValueError):
        found = json.loads(body)
        if isinstance(found, dict):
            return found
    return None


# HAProxy

def haproxy_config(region: str, port: int, edges: Sequence[Service], admin_socket: Path) -> str:
    """HAProxy in TCP mode in front of a region's edges.

    leastconn: a restarted edge, empty, takes the new connections first. The check is the
    edge's own readiness (`/healthz`, 503 while draining); every 500 ms, down after two failures
    (one probe shed under a reconnect burst must not take the surviving edge out), up after one.
    A refused connection (an edge that closed its listener to drain, or died) is retried on
    another edge (`retries`, `option redispatch 1`). Tunnel timeouts are long: devices hold
    their connections for the edges' lifetimes (25-35 min), kept alive by the edges' pings.
    HAProxy runs in the foreground (`-db`): its warnings, each check whose result differs from
    the last (`option log-health-checks`) and each server going up or down, go to its log."""
    servers = "\n".join(f"    server {e.name} {HOST}:{e.port} check" for e in edges)
    return f"""\
# Made by deploy/local/fleet.py for region {region}; rewritten at every `up`.
global
    maxconn {haproxy_maxconn()}
    stats socket {admin_socket} mode 600 level admin

defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout client-fin 10s
    timeout server-fin 10s
    retries 2
    option redispatch 1

frontend {region}_devices
    bind {HOST}:{port}
    default_backend {region}_edges

backend {region}_edges
    balance leastconn
    option log-health-checks
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host {HOST}
    http-check expect status 200
    default-server inter 500ms fastinter 500ms downinter 500ms fall 2 rise 1
{servers}
"""


def haproxy_maxconn() -> int:
    """Connections HAProxy may hold: two descriptors each (device and edge) within our hard
    file-descriptor limit (it raises its own soft limit; it may not pass the hard one)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return MAX_LB_CONNECTIONS
    return max(100, min(MAX_LB_CONNECTIONS, (hard - 100) // 2))


def haproxy_command(admin_socket: Path, command: str) -> str:
    """One command on HAProxy's admin socket; its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(str(admin_socket))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def in_rotation(status: str) -> bool:
    """Whether HAProxy sends new connections to a server in this status: `UP`, or `UP 1/2`
    (a check failed, not enough to take it out; an edge sheds a probe under a burst)."""
    return status.split(" ")[0] == "UP"


def haproxy_servers(admin_socket: Path, backend: str) -> dict[str, str]:
    """Server name -> status (`UP`, `DOWN`, `DRAIN`, `MAINT`, ...) of one backend."""
    text = haproxy_command(admin_socket, "show stat").lstrip("# ")
    return {row["svname"]: row["status"] for row in csv.DictReader(io.StringIO(text))
            if row.get("pxname") == backend and row["svname"] not in ("FRONTEND", "BACKEND")}


# the fleet

class Fleet:
    """A two-region fleet in `base_dir`: its services, its secrets, and the processes this
    program started (so it can reap them). Build one with `plan()` (new) or `load()`."""

    def __init__(self, base_dir: Path, keys: Secrets, env: Mapping[str, str],
                 services: Iterable[Service]) -> None:
        self.base_dir = base_dir
        self.secrets = keys
        self.env = dict(env)  # ZUULPUSH_* settings for every zuulpush process
        self.services = {s.name: s for s in services}
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # making, saving, loading

    @classmethod
    def plan(cls, base_dir: Path, *, drain_window_s: float = DEFAULT_DRAIN_WINDOW_S,
             env: Mapping[str, str] | None = None) -> Fleet:
        """A new fleet in `base_dir` (nothing started yet): free ports, new secrets. `env`:
        more `ZUULPUSH_*` settings for every zuulpush process (e.g. the heartbeat)."""
        base_dir = base_dir.resolve()
        taken: set[int] = set()
        ports = {r: {k: free_port(taken) for k in ("redis", "api", "haproxy", "edge-1", "edge-2")}
                 for r in REGIONS}
        services: list[Service] = []
        for region in REGIONS:
            services += _region_services(base_dir, region, ports)
        settings = {"ZUULPUSH_DRAIN_WINDOW_S": str(drain_window_s), **(env or {})}
        return cls(base_dir, Secrets.generate(), settings, services)

    @classmethod
    def load(cls, base_dir: Path) -> Fleet:
        """The fleet whose state file is in `base_dir`; FleetError if there is none."""
        path = base_dir.resolve() / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise FleetError(f"no fleet in {base_dir} (no {STATE_FILE}): run `up` first") from None
        return cls(Path(state["base_dir"]), Secrets(**state["secrets"]), state["env"],
                   (Service(**s) for s in state["services"]))

    def save(self) -> None:
        """Write the state file (atomically, mode 600: it holds the secrets)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        state = {"base_dir": str(self.base_dir), "secrets": asdict(self.secrets),
                 "env": self.env, "services": [asdict(s) for s in self.services.values()],
                 "regions": {r: self.endpoints(r) for r in REGIONS}}
        tmp = self.base_dir / (STATE_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(state, out, indent=2)
        tmp.replace(self.base_dir / STATE_FILE)

    def refresh(self) -> None:
        """Read the services back from the state file (another invocation may have restarted
        some), keeping this program's handles on its children."""
        self.services = Fleet.load(self.base_dir).services

    # where things are

    def service(self, region: str, kind: str) -> Service:
        return next(s for s in self.services.values() if s.region == region and s.kind == kind)

    def edges(self, region: str) -> list[Service]:
        return [s for s in self.services.values() if s.region == region and s.kind == "edge"]

    def lb_url(self, region: str) -> str:
        """Where devices of `region` connect: its HAProxy (`ws://.../ws`, `http://.../sse`)."""
        return self.service(region, "haproxy").url

    def api_url(self, region: str) -> str:
        return self.service(region, "api").url

    def redis_url(self, region: str) -> str:
        return self.service(region, "redis").url

    def endpoints(self, region: str) -> dict[str, str]:
        return {"devices": self.lb_url(region), "api": self.api_url(region),
                "redis": self.redis_url(region)}

    def admin_socket(self, region: str) -> Path:
        return self.base_dir / f"{region}-haproxy.sock"

    def log_path(self, service: Service) -> Path:
        return self.base_dir / "logs" / f"{service.name}.log"

    def token(self, client_id: str, user_id: str = "user", device_type: str = "phone",
              ttl_s: int = 24 * 3600) -> str:
        """A device token signed with this fleet's secret (valid in both regions)."""
        from core.tokens import issue_token

        return issue_token(self.secrets.secret, client_id=client_id, user_id=user_id,
                           device_type=device_type, ttl_s=ttl_s)

    # up and down

    def up(self) -> None:
        """Start every process and return once each is ready (HAProxy sees every edge up). If
        one fails, what was started is stopped before the FleetError is raised."""
        if running := self.running():
            raise FleetError(f"already up in {self.base_dir} ({', '.join(running)}): "
                             "run `down` first")
        self._prepare_dirs()
        try:
            self._start_group([s for s in self.services.values() if s.kind == "redis"])
            self._start_group([s for s in self.services.values()
                               if s.kind in ("edge", "router", "api")])
            self._start_group([s for s in self.services.values() if s.kind == "haproxy"])
        except BaseException:
            self.down()
            raise

    def down(self) -> list[str]:
        """Stop every process that is still the one the fleet started, by PID: the balancers
        first (devices are cut off), then the edges (which unregister, so Redis goes last),
        the APIs and routers, Redis. The names of the services stopped."""
        stopped: list[str] = []
        for kinds in (("haproxy",), ("edge",), ("api", "router"), ("redis",)):
            group = [s for s in self.services.values() if s.kind in kinds and self.is_running(s)]
            for service in group:
                self.signal(service, signal.SIGTERM)
            for service in group:
                self._finish_stop(service, self._stop_timeout_s(service))
            stopped += [s.name for s in group]
        for region in REGIONS:
            self.admin_socket(region).unlink(missing_ok=True)
        (self.base_dir / STATE_FILE).unlink(missing_ok=True)
        return stopped

    def running(self) -> list[str]:
        return [s.name for s in self.services.values() if self.is_running(s)]

    # rolling restart

    def rolling_restart(self, regions: Iterable[str] = REGIONS,
                        on_restart: Callable[[Restart], None] | None = None) -> list[Restart]:
        """Restart every edge of `regions`, one at a time (see `restart_edge`)."""
        done = []
        for region in regions:
            for edge in self.edges(region):
                done.append(self.restart_edge(edge.name))
                if on_restart is not None:
                    on_restart(done[-1])
        return done

    def restart_edge(self, name: str) -> Restart:
        """Take edge `name` out of its HAProxy's rotation, drain it (SIGTERM) and wait for it to
        exit, start it again with the same node id and port, and put it back once HAProxy's
        check sees it up."""
        edge = self.services[name]
        began, old_pid = time.monotonic(), edge.pid
        self._set_lb_state(edge, "drain")  # no new connections; its own ones wait for go-aways
        self.signal(edge, signal.SIGTERM)
        if not self.wait_exit(edge, self._stop_timeout_s(edge)):
            self._finish_stop(edge, 0.0)
            raise FleetError(f"{name} did not finish draining within "
                             f"{self._stop_timeout_s(edge):.0f} s; killed. "
                             f"See {self.log_path(edge)}")
        drained_s = time.monotonic() - began
        code = self.exit_code(edge)
        self._start_group([edge], wait_lb=False)
        edge.restarts += 1
        self.save()
        self._set_lb_state(edge, "ready")
        self._wait_lb_up(edge.region, {edge.name})
        return Restart(name, old_pid, edge.pid, code, drained_s, time.monotonic() - began)

    # status

    def status(self) -> dict[str, Any]:
        """Per service: its PID, port and whether it runs; edges add their `/healthz`, and each
        region its HAProxy's view of its edges."""
        services = {}
        for s in self.services.values():
            entry: dict[str, Any] = {"kind": s.kind, "region": s.region, "pid": s.pid,
                                     "port": s.port, "running": self.is_running(s),
                                     "restarts": s.restarts}
            if s.kind == "edge" and entry["running"]:
                health = healthz(s.port) or {}
                entry.update(state=health.get("status"), connections=health.get("connections"))
            services[s.name] = entry
        balancers = {}
        for region in REGIONS:
            with contextlib.suppress(OSError):
                balancers[region] = haproxy_servers(self.admin_socket(region), f"{region}_edges")
        return {"base_dir": str(self.base_dir), "services": services, "haproxy": balancers,
                "regions": {r: self.endpoints(r) for r in REGIONS}}

    # one process

    def is_running(self, service: Service) -> bool:
        """Whether `service`'s recorded PID is still the process the fleet started."""
        if service.pid <= 0:
            return False
        child = self._children.get(service.pid)
        if child is not None:
            return child.poll() is None
        return start_ticks(service.pid) == service.ticks

    def exit_code(self, service: Service) -> int | None:
        child = self._children.get(service.pid)
        return None if child is None else child.poll()

    def signal(self, service: Service, sig: signal.Signals) -> None:
        """Send `sig` to this service's PID, if it is still the process the fleet started."""
        if self.is_running(service):
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, sig)

    def wait_exit(self, service: Service, timeout_s: float) -> bool:
        """Whether the service's process has exited within `timeout_s`."""
        with contextlib.suppress(FleetError):
            until(lambda: not self.is_running(service), timeout_s, service.name)
            return True
        return False

    def reap(self) -> None:
        """Collect children that have exited (a long-running `up --foreground` calls this)."""
        for pid, child in list(self._children.items()):
            if child.poll() is not None and all(s.pid != pid for s in self.services.values()):
                del self._children[pid]

    def _finish_stop(self, service: Service, timeout_s: float) -> None:
        """Wait for a signalled service to exit; SIGKILL it after `timeout_s`."""
        if not self.wait_exit(service, timeout_s):
            self.signal(service, signal.SIGKILL)
            self.wait_exit(service, STOP_TIMEOUT_S)

    def _stop_timeout_s(self, service: Service) -> float:
        """An edge drains for its window plus, at most, one heartbeat interval."""
        if service.kind != "edge":
            return STOP_TIMEOUT_S
        window = float(self.env.get("ZUULPUSH_DRAIN_WINDOW_S", DEFAULT_DRAIN_WINDOW_S))
        heartbeat = float(self.env.get("ZUULPUSH_HEARTBEAT_INTERVAL_S", DEFAULT_HEARTBEAT_S))
        return window + heartbeat + STOP_TIMEOUT_S

    # starting

    def _prepare_dirs(self) -> None:
        (self.base_dir / "logs").mkdir(parents=True, exist_ok=True)
        for region in REGIONS:
            (self.base_dir / f"{region}-redis").mkdir(exist_ok=True)
            socket_path = self.admin_socket(region)
            if len(str(socket_path)) > MAX_SOCKET_PATH:
                raise FleetError(f"{socket_path} is too long for a Unix socket: use a shorter "
                                 "--base-dir")
            socket_path.unlink(missing_ok=True)
            (self.base_dir / f"{region}-haproxy.cfg").write_text(haproxy_config(
                region, self.service(region, "haproxy").port, self.edges(region), socket_path))

    def _start_group(self, group: Sequence[Service], wait_lb: bool = True) -> None:
        """Start these services at once, record their PIDs, then wait for each to be ready."""
        offsets = {s.name: self._spawn(s) for s in group}
        self.save()
        for service in group:
            self._wait_ready(service, offsets[service.name], wait_lb)

    def _spawn(self, service: Service) -> int:
        """Start the service's process in its own session (it outlives this program), output
        appended to its log; where its log ended before, to find its ready line after."""
        log_path = self.log_path(service)
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            child = subprocess.Popen(service.argv, cwd=ROOT, env=self._process_env(service),
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._children[child.pid] = child
        service.pid, service.ticks = child.pid, start_ticks(child.pid) or 0
        return offset

    def _process_env(self, service: Service) -> dict[str, str]:
        """The environment: ours without ZUULPUSH_* settings, then the fleet's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")}
        if service.kind in ("edge", "router", "api"):
            env.update(self.env, ZUULPUSH_SECRET=self.secrets.secret,
                       ZUULPUSH_API_KEYS=self.secrets.api_key,
                       ZUULPUSH_ADMIN_KEY=self.secrets.admin_key)
        return env

    def _wait_ready(self, service: Service, log_offset: int, wait_lb: bool) -> None:
        """Redis answers PING; a zuulpush process printed its `ready:` line; HAProxy answers
        on its admin socket and sees every edge up."""
        what = f"{service.name} ready (log: {self.log_path(service)})"

        def alive() -> bool:
            return self.is_running(service)
        if service.kind == "redis":
            until(lambda: redis_pong(service.port), START_TIMEOUT_S, what, alive)
        elif service.kind == "haproxy":
            until(lambda: self.admin_socket(service.region).exists(), START_TIMEOUT_S, what,
                  alive)
            if wait_lb:
                self._wait_lb_up(service.region, {e.name for e in self.edges(service.region)})
        else:
            until(lambda: self._printed_ready(service, log_offset), START_TIMEOUT_S, what, alive)

    def _printed_ready(self, service: Service, offset: int) -> bool:
        with self.log_path(service).open("rb") as log:
            log.seek(offset)
            return READY_LINE.search(log.read()) is not None

    # HAProxy's view

    def _wait_lb_up(self, region: str, names: set[str]) -> None:
        """Until the region's HAProxy has checked each of these edges and sees it up."""
        def up() -> bool:
            try:
                seen = haproxy_servers(self.admin_socket(region), f"{region}_edges")
            except OSError:
                return False
            return all(in_rotation(seen.get(n, "")) for n in names)
        until(up, START_TIMEOUT_S, f"{region}'s HAProxy to see {sorted(names)} up")

    def _set_lb_state(self, edge: Service, state: str) -> None:
        """`ready`, `drain` (no new connections) or `maint` for an edge in its HAProxy."""
        try:
            answer = haproxy_command(self.admin_socket(edge.region),
                                     f"set server {edge.region}_edges/{edge.name} state {state}")
        except OSError as exc:
            raise FleetError(f"HAProxy {edge.region} does not answer ({exc})") from None
        if answer.strip():
            raise FleetError(f"HAProxy refused to set {edge.name} {state}: {answer.strip()}")


def _region_services(base_dir: Path, region: str, ports: Mapping[str, Mapping[str, int]]
                     ) -> list[Service]:
    """What runs in one region: Redis, the edges, a router, an API, HAProxy."""
    mine = ports[region]
    peers = [f"{r}=redis://{HOST}:{ports[r]['redis']}/0" for r in REGIONS if r != region]
    redis_url = f"redis://{HOST}:{mine['redis']}/0"
    peer_flags = [flag for peer in peers for flag in ("--peer-region", peer)]
    zuulpush = [sys.executable, "-m", "zuulpush"]
    services = [Service(f"{region}-redis", "redis", region, mine["redis"], [
        "redis-server", "--port", str(mine["redis"]), "--bind", HOST,
        "--dir", str(base_dir / f"{region}-redis"), "--save", "", "--appendonly", "no",
        "--daemonize", "no"])]
    for i in range(1, EDGES_PER_REGION + 1):
        name, port = f"{region}-edge-{i}", mine[f"edge-{i}"]
        services.append(Service(name, "edge", region, port, [
            *zuulpush, "edge", "--redis", redis_url, "--region", region, *peer_flags,
            "--node-id", name, "--host", HOST, "--port", str(port)]))
    services.append(Service(f"{region}-router", "router", region, 0, [
        *zuulpush, "router", "--redis", redis_url, "--region", region, *peer_flags]))
    services.append(Service(f"{region}-api", "api", region, mine["api"], [
        *zuulpush, "api", "--redis", redis_url, "--api-host", HOST,
        "--api-port", str(mine["api"])]))
    services.append(Service(f"{region}-haproxy", "haproxy", region, mine["haproxy"], [
        "haproxy", "-db", "-f", str(base_dir / f"{region}-haproxy.cfg")]))
    return services


# the command line

def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except FleetError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 1
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet.py", description="A two-region zuulpush fleet on loopback behind HAProxy.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    up = _command(commands, "up", _up, "start the fleet; returns once it is ready")
    up.add_argument("--drain-window-s", type=float, default=DEFAULT_DRAIN_WINDOW_S,
                    help="an edge's drain closes its connections over this many seconds")
    up.add_argument("--foreground", action="store_true",
                    help="stay in the foreground; Ctrl-C or SIGTERM takes the fleet down")
    status = _command(commands, "status", _status, "each process, and HAProxy's view")
    status.add_argument("--json", action="store_true", help="print JSON")
    restart = _command(commands, "rolling-restart", _rolling_restart,
                       "drain and restart the edges one by one")
    restart.add_argument("--region", choices=[*REGIONS, "all"], default="all")
    _command(commands, "down", _down, "stop every process of the fleet (by PID)")
    token = _command(commands, "token", _token, "print a device token signed for this fleet")
    token.add_argument("--client", required=True, help="client (device) id")
    token.add_argument("--user", default="user", help="user id (default 'user')")
    token.add_argument("--device-type", default="phone", help="device type (default 'phone')")
    return parser


def _command(commands: Any, name: str, run: Callable[[argparse.Namespace], int],
             text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text)
    p.add_argument("--base-dir", type=Path, default=DEFAULT_BASE_DIR,
                   help=f"state file, logs, Redis directories (default {DEFAULT_BASE_DIR})")
    p.set_defaults(run=run)
    return p


@contextlib.contextmanager
def _locked(base_dir: Path) -> Iterator[None]:
    """One fleet command that changes the fleet at a time (`up`, `rolling-restart`, `down`)."""
    base_dir.mkdir(parents=True, exist_ok=True)
    with (base_dir / "fleet.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FleetError(f"another fleet command is running on {base_dir}") from None
        yield


def _up(args: argparse.Namespace) -> int:
    with _locked(args.base_dir):
        if running := _still_running(args.base_dir):
            raise FleetError(f"already up in {args.base_dir} ({', '.join(running)}): "
                             "run `down` first")
        fleet = Fleet.plan(args.base_dir, drain_window_s=args.drain_window_s)
        fleet.up()
    print(_summary(fleet), flush=True)
    if args.foreground:
        _stay_up(fleet)
    return 0


def _still_running(base_dir: Path) -> list[str]:
    """The services of the fleet recorded in `base_dir` that still run (none: no fleet)."""
    try:
        return Fleet.load(base_dir).running()
    except FleetError:
        return []


def _stay_up(fleet: Fleet) -> None:
    """Until Ctrl-C or SIGTERM (or another invocation's `down`), then take the fleet down."""
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stop.append(signum))
    print("Up in the foreground: Ctrl-C takes it down.", flush=True)
    while not stop and (fleet.base_dir / STATE_FILE).exists():
        time.sleep(0.5)
        fleet.reap()
    if not (fleet.base_dir / STATE_FILE).exists():
        return  # another invocation took it down
    with _locked(fleet.base_dir):
        fleet.refresh()
        print("stopped: " + ", ".join(fleet.down()), flush=True)


def _status(args: argparse.Namespace) -> int:
    fleet = Fleet.load(args.base_dir)
    found = fleet.status()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for name, s in found["services"].items():
        extra = f"  {s['state']}, {s['connections']} connections" if s.get("state") else ""
        state = "running" if s["running"] else "STOPPED"
        print(f"{name:<12} pid {s['pid']:<8} port {s['port']:<6} {state}{extra}")
    for region, servers in found["haproxy"].items():
        seen = ", ".join(f"{n} {status}" for n, status in servers.items())
        print(f"HAProxy {region}: {seen}")
    return 0 if all(s["running"] for s in found["services"].values()) else 3


def _rolling_restart(args: argparse.Namespace) -> int:
    regions = REGIONS if args.region == "all" else (args.region,)
    with _locked(args.base_dir):
        fleet = Fleet.load(args.base_dir)
        if stopped := [s.name for s in fleet.services.values() if not fleet.is_running(s)]:
            raise FleetError(f"not running: {', '.join(stopped)}; run `down`, then `up`")

        def say(r: Restart) -> None:
            print(f"{r.name}: drained in {r.drained_s:.1f} s, pid {r.old_pid} -> {r.new_pid}, "
                  f"back in rotation after {r.total_s:.1f} s", flush=True)
        fleet.rolling_restart(regions, on_restart=say)
    return 0


def _down(args: argparse.Namespace) -> int:
    with _locked(args.base_dir):
        stopped = Fleet.load(args.base_dir).down()
    print("stopped: " + (", ".join(stopped) or "nothing was running"))
    return 0


def _token(args: argparse.Namespace) -> int:
    print(Fleet.load(args.base_dir).token(args.client, args.user, args.device_type))
    return 0


def _summary(fleet: Fleet) -> str:
    """What `up` prints: where things are, a device token, commands to paste."""
    token = fleet.token("demo-device", "demo-user", "web")
    lines = [f"zuulpush fleet up in {fleet.base_dir} (state: {STATE_FILE}, logs: logs/)"]
    for region in REGIONS:
        ends = fleet.endpoints(region)
        lines.append(f"  region {region}: devices {ends['devices']} (HAProxy)   "
                     f"api {ends['api']}   redis {ends['redis']}")
    lb, api = fleet.lb_url("a").removeprefix("http://"), fleet.api_url("a")
    body = json.dumps({"to": {"clients": ["demo-device"]}, "data": {"text": "hello"}})
    lines += [
        "", f"API key: {fleet.secrets.api_key}",
        "Listen as device 'demo-device' through region a's HAProxy:",
        f"  zuulpush listen 'ws://{lb}/ws?token={token}'",
        "Push to it through region a's (or b's) API:",
        f"  curl -X POST {api}/v1/push -H 'Authorization: Bearer {fleet.secrets.api_key}' "
        f"-H 'Content-Type: application/json' -d '{body}'",
        f"Then: python {Path(__file__).resolve().relative_to(ROOT)} "
        "status | rolling-restart | down" + ("" if fleet.base_dir == DEFAULT_BASE_DIR.resolve()
                                             else f"   (with --base-dir {fleet.base_dir})"),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
