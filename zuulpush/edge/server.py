"""`EdgeServer`: one edge node. It wires its parts (the gate, the timers, the hub, the registrar
and replay, the listener), hands each connection a `ConnectionHost` made of them, and runs start,
drain and shutdown as one path (shutdown is a drain with no window). The parts and how they
work together: docs/edge.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from core.auth_throttle import FailureLimiter
from core.clock import ClockMs, wall_ms
from core.tasks import cancel_and_wait
from core.tokens import TokenVerifier
from registry.base import NodeInfo, NodeState
from router.base import BroadcastLog, Delivery, Inbox, NodeChannel
from zuulpush.edge import admin
from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.gate import Gate
from zuulpush.edge.given import GivenLedger
from zuulpush.edge.hub import Hub
from zuulpush.edge.listener import Listener, edge_tls, fd_limit
from zuulpush.edge.protocol import EdgeConnection, Wrote
from zuulpush.edge.registrar import NodeRegistry, Registrar
from zuulpush.edge.replay import Replay
from zuulpush.edge.request import Accept, Headers, decide
from zuulpush.edge.shedding import LoopLag, Shed
from zuulpush.edge.state import State
from zuulpush.edge.stats import EdgeStats
from zuulpush.edge.timers import Timers
from zuulpush.edge.wsframes import Close

__all__ = ["EdgeServer", "EdgeStats", "default_node_id", "edge_tls"]

log = logging.getLogger("zuulpush.edge")

DRAIN_STEP_S = 0.1
"""A drain closes a batch of connections this often: its share of the window so far."""
GONE_POLL_S = 0.05
"""How often a drain or shutdown looks whether the connections are gone."""


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class EdgeServer:
    """An edge node. `await start()`, then `await shutdown()`; `port` is the bound port."""

    def __init__(
        self,
        config: EdgeConfig,
        *,
        verifier: TokenVerifier,
        registry: NodeRegistry,
        inbox: Inbox,
        channel: NodeChannel,
        clock: Callable[[], float] = time.monotonic,
        history: BroadcastLog | None = None,
        rng: random.Random | None = None,
        admin_key: str = "",
        wall_clock_ms: ClockMs = wall_ms,
    ) -> None:
        """Without `history`, resuming devices get their inbox only (no missed broadcasts).
        `rng` draws lifetimes and Retry-After jitter (tests pass a seeded one). Without an
        `admin_key`, the admin routes are refused. `wall_clock_ms` times deliveries from the
        API's clock reading in their ids. A TLS setting that cannot be used raises
        `zuulpush.tls.TlsConfigError` here, before anything listens."""
        self.config = config
        self.verifier = verifier
        self.admin_key = admin_key
        self.admin_throttle = FailureLimiter("edge_admin", config.edge_admin_failures_max,
                                             config.edge_admin_failures_window_s)
        self.origins = config.origin_allow_list()
        self.clock = clock
        self.node_id = config.node_id or default_node_id()
        self.state = NodeState.ACTIVE
        self.stats = stats = EdgeStats()
        self.metrics_page: admin.MetricsPage | None = None
        """`GET /metrics`: the exposition and its content type (set by an app that exports
        metrics; without it, 404)."""
        rng = rng or random.Random()
        self.lag = LoopLag()
        self.given = GivenLedger()
        self.gate = Gate(config, fd_limit=fd_limit(), clock=clock, lag=self.lag, rng=rng,
                         stats=stats)
        self.timers = Timers(config, clock=clock, rng=rng, lag=self.lag, stats=stats)
        self.hub = Hub(node_id=self.node_id, channel=channel, stats=stats,
                       wrote=self.given.wrote, wall_clock_ms=wall_clock_ms)
        self.replay = Replay(inbox, history, page_size=config.replay_page_size, stats=stats)
        self.registrar = Registrar(config, node=self, node_id=self.node_id, registry=registry,
                                   inbox=inbox, given=self.given, replay=self.replay,
                                   connections=self.hub.connections, stats=stats, clock=clock)
        self.connection_host = NodeHost(self)
        self.listener = Listener(config, lambda: EdgeConnection(self.connection_host),
                                 tls=edge_tls(config), stats=stats,
                                 served=lambda: self.gate.served)
        self.drained = asyncio.Event()  # set once a drain has closed what it could
        self._drain_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def tls(self) -> ssl.SSLContext | None:
        return self.listener.tls

    @property
    def connections(self) -> dict[str, EdgeConnection]:
        """Client id -> its current connection (REPLAYING or OPEN)."""
        return self.hub.connections

    @property
    def wall_clock_ms(self) -> ClockMs:
        return self.hub.wall_clock_ms

    @wall_clock_ms.setter
    def wall_clock_ms(self, clock: ClockMs) -> None:
        self.hub.wall_clock_ms = clock

    # start, drain and shutdown

    async def start(self) -> None:
        await self.listener.listen()
        self.listener.warn_about_fd_limit(self.gate.limits.hard_max_connections)
        self.timers.start_lag_sampler()
        await self.registrar.heartbeat_node()
        for loop in (self.timers.run(self.registrar.marks_due, self._probe),
                     self.registrar.run(), self.hub.receive_loop(),
                     self.registrar.refresh_loop()):
            self._spawn(loop)
        log.info("edge node %s listening on %s:%d", self.node_id, self.config.host, self.port)

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """A drain with no window: stop accepting, send every connection a go-away with a
        reconnect hint, wait up to `grace_s` for them to close; then abort the rest, write
        what is left to write (their unregistrations), cancel every task and remove the
        node's record. A drain under way is cut short first."""
        if self.listener.server is None:
            return
        if self._drain_task is not None:
            await cancel_and_wait([self._drain_task], what="drain")
        await self._wind_down("shutdown", window_s=0.0, wait_s=grace_s)
        for conn in self.timers.connections():
            conn.abort()
        await asyncio.sleep(0)
        self.timers.stop_lag_sampler()
        await self.registrar.last_flush()
        await cancel_and_wait(self._tasks, what="edge task")
        with contextlib.suppress(Exception):
            await self.registrar.remove_node()
        await self.listener.closed()

    def start_drain(self, why: str) -> bool:
        """Begin draining over `drain_window_s` (`_wind_down`), unless already draining; True
        if this call began it. `drained` is set when it is over."""
        if self._drain_task is not None or self.listener.server is None:
            return False
        log.warning("draining node %s (%s): %d connection(s) over %.0f s", self.node_id, why,
                    len(self.connections), self.config.drain_window_s)
        self._drain_task = self._spawn(self._drain())
        return True

    async def drain(self, why: str = "drain") -> None:
        """Drain (or wait for the drain under way) until it is over."""
        self.start_drain(why)
        if self._drain_task is not None:
            await asyncio.shield(self._drain_task)

    async def _drain(self) -> None:
        """The window, plus one heartbeat interval for the last ones' closing handshakes."""
        try:
            await self._wind_down("drain", window_s=self.config.drain_window_s,
                                  wait_s=self.config.heartbeat_interval_s, count=True)
            log.warning("node %s drained: %d connection(s) left", self.node_id,
                        self.open_count())
        finally:
            self.drained.set()

    async def _wind_down(self, reason: str, *, window_s: float, wait_s: float,
                         count: bool = False) -> None:
        """The one path of drain and shutdown: turn draining (the node's record says so at
        once, so routers stop targeting it; `/healthz` answers 503), stop accepting, send the
        connections the go-away in batches spread evenly over `window_s` (all at once for 0;
        `count`: in `drain_closes`), then wait until they are gone or `wait_s` more is over."""
        self.state = NodeState.DRAINING
        with contextlib.suppress(Exception):
            await self.registrar.heartbeat_node()
        self.listener.close()
        conns = self.timers.connections()
        start = self.clock()
        sent = 0
        while sent < len(conns):
            elapsed = self.clock() - start
            due = len(conns) if window_s <= 0 else \
                min(len(conns), math.ceil(len(conns) * (elapsed + DRAIN_STEP_S) / window_s))
            for conn in conns[sent:due]:
                conn.goaway(Close.RECONNECT, reason)
            if count:
                self.stats.drain_closes += due - sent
            sent = due
            if sent < len(conns):
                await asyncio.sleep(DRAIN_STEP_S)
        deadline = start + window_s + wait_s
        while self.open_count() and self.clock() < deadline:
            await asyncio.sleep(GONE_POLL_S)

    def admin_drain(self) -> tuple[int, dict[str, object]]:
        """`POST /admin/drain` (admin key checked): 202 and the drain's outline."""
        began = self.start_drain("POST /admin/drain")
        return 202, {"status": "draining", "node_id": self.node_id, "began": began,
                     "connections": len(self.connections),
                     "drain_window_s": self.config.drain_window_s}

    # what the node says about itself

    def open_count(self) -> int:
        """Connections not yet gone: upgraded, or still handshaking."""
        return self.timers.open_count()

    def open_by_kind(self) -> dict[tuple[str, str], int]:
        """Open device connections by (transport, device type)."""
        return self.hub.open_by_kind()

    def health(self) -> tuple[int, dict[str, object]]:
        """`GET /healthz`: 200 while active (503 while draining) and the node's load."""
        active = self.state is NodeState.ACTIVE
        limits = self.gate.limits
        stats = self.stats
        return (200 if active else 503), {
            "status": "ok" if active else "draining",
            "node_id": self.node_id,
            "connections": len(self.connections),
            "sockets": self.gate.served,
            "max_connections": limits.max_connections,
            "hard_max_connections": limits.hard_max_connections,
            "loop_lag_ms": round(self.lag.current(self.clock()) * 1000, 1),
            "loop_lag_ms_peak": round(self.lag.peak_s * 1000, 1),
            "connects": stats.connects,
            "shed": {reason.value: stats.shed[reason] for reason in Shed},
            "lifetime_closes": stats.lifetime_closes,
            "fds_exhausted": self.listener.fds_exhausted,
            "fd_exhaustion_episodes": stats.fd_exhaustion_episodes,
            "relistens": stats.relistens,
            "drain_closes": stats.drain_closes,
        }

    def node_info(self) -> NodeInfo:
        """This node's record as its heartbeat writes it: state, connections by device type
        and by transport, and its counters since start (`NodeInfo.totals`)."""
        by_type_counts: Counter[str] = Counter()
        by_transport_counts: Counter[str] = Counter()
        for (transport, device_type), n in self.hub.open_by_kind().items():
            by_type_counts[device_type] += n
            by_transport_counts[transport] += n
        by_type = tuple(by_type_counts.items())
        by_transport = tuple(sorted(by_transport_counts.items()))
        stats = self.stats
        totals = (("delivered", stats.delivered), ("shed", sum(stats.shed.values())),
                  ("connects", stats.connects), ("acks", stats.acks))
        return NodeInfo(self.node_id, f"{self.config.host}:{self.port}", self.config.region,
                        self.state, len(self.connections), by_type, by_transport, totals)

    def deliver(self, delivery: Delivery, now_ms: int | None = None) -> None:
        """Write one delivery to the local connections it names (`Hub.deliver`)."""
        self.hub.deliver(delivery, now_ms)

    # tasks

    async def _probe(self) -> None:
        await self.listener.check(relisten=self.state is NodeState.ACTIVE)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("edge task failed", exc_info=task.exception())


class NodeHost:
    """The `ConnectionHost` of a node's connections, wired once from its parts: a call goes
    straight to the part that answers it (a bound method held here), but for the few that take
    several parts (`accepted`, `lost`) or the node's settings (`decide`, `answer`)."""

    __slots__ = ("_gate", "_hub", "_node", "_registrar", "_timers", "ack", "admit", "clock",
                 "config", "handshake_started", "linger", "node_id", "retry_after_s",
                 "shed_late", "shed_lost", "stats", "wrote")

    config: EdgeConfig
    stats: EdgeStats
    node_id: str
    clock: Callable[[], float]
    admit: Callable[[], Shed | None]
    shed_late: Callable[[], bool]
    retry_after_s: Callable[[], int]
    shed_lost: Callable[[], None]
    handshake_started: Callable[[EdgeConnection], None]
    linger: Callable[[EdgeConnection], None]
    ack: Callable[[EdgeConnection, list[str]], None]
    wrote: Wrote

    def __init__(self, node: EdgeServer) -> None:
        self._node = node
        self._gate, self._timers = node.gate, node.timers
        self._hub, self._registrar = node.hub, node.registrar
        self.config, self.stats, self.node_id, self.clock = (node.config, node.stats,
                                                             node.node_id, node.clock)
        self.admit, self.shed_late = node.gate.admit, node.gate.shed_late
        self.retry_after_s, self.shed_lost = node.gate.retry_after_s, node.gate.shed_closed
        self.handshake_started, self.linger = (node.timers.handshake_started,
                                               node.timers.linger)
        self.ack, self.wrote = node.registrar.ack, node.given.wrote

    def decide(self, method: bytes, target: bytes, headers: Headers,
               source: Callable[[], str]) -> Accept:
        node = self._node
        return decide(method, target, headers, verifier=node.verifier,
                      echo_enabled=self.config.echo, admin_key=node.admin_key,
                      origins=node.origins, admin_throttle=node.admin_throttle, source=source,
                      now=self.clock())

    def answer(self, accept: Accept) -> bytes:
        return admin.answer(self._node, accept)

    def accepted(self, conn: EdgeConnection) -> None:
        self.stats.connects += 1
        self._timers.joined(conn)
        if conn.state is State.ECHO:
            return  # nothing to register, replay or live for
        self._timers.check_lifetime(conn, self.clock())
        self._hub.add(conn)
        self._registrar.admit(conn)

    def lost(self, conn: EdgeConnection) -> None:
        self._gate.served_closed()
        self._timers.left(conn)
        reg = conn.registration
        if reg is None:
            return  # never registered: rejected, answered, or an echo
        self._hub.remove(conn)
        self._registrar.leave(conn, reg)

