"""One edge node: listening socket, the connections it holds, and the few tasks that serve them.

All per-connection timing runs from shared structures: a deque of handshake deadlines (fixed
timeout, so arrival order is deadline order) and a timer wheel for heartbeats. Registry and inbox
work is batched through one task: registrations of connections accepted since the last round are
written in one call, then each new connection's inbox is read and replayed. Registering before
reading the inbox is what makes delivery gap-free: a router stores a message in the inbox before it
looks up the client, so a message is either found by that lookup (and delivered live) or already
in the inbox when the connection reads it.

Broadcasts are in no inbox. With a broadcast history (`history`), a device that resumes WITH a
last id is replayed its inbox after that id merged with the history after it narrowed to its
device type, in id order, each id once (`merge_replay`); the same registration-first argument
covers them, as a router keeps a broadcast in the history before it looks up nodes. A device
connecting WITHOUT a last id gets no old broadcasts: it has no point to resume from, and a new
device is not sent the fleet's recent announcements as if it had missed them.

Guards against herds (`shedding`, `lifetime`): every accepted socket is first put to the
`Admission` policy (ceilings, loop lag from a 50 ms sampler, a token bucket); lifetimes run from
the heartbeat wheel's visits, and the few connections in their last interval wait in a heap.

Drain (`start_drain`, for SIGTERM, `POST /admin/drain` and a drain request taken from the
registry at a heartbeat): the node turns draining (its record says so at once, so routers stop
targeting it; `/healthz` answers 503), closes its listening socket, and sends its connections the
go-away in batches spread evenly over `drain_window_s`; `drained` is set once they are gone or
the window (plus a heartbeat interval) is over, and the process then shuts down.

Running out of file descriptors: under uvloop, libuv answers EMFILE/ENFILE on accept with its
reserve-descriptor trick (it closes a spare descriptor, accepts and closes every pending
connection, reopens the spare) silently, and only if that fails reports the error, on which
uvloop closes the listening socket for good without a word. Plain asyncio logs each failure and
pauses accepting for a second. Neither spins. The node therefore (1) keeps its hard ceiling below
the descriptor limit by default, so that it sheds, counted, before the kernel has to; (2) probes
once a second whether a descriptor can still be had (counted and logged once per episode, and in
`GET /healthz`); (3) checks in the same probe that its listening socket still listens, and
listens again if it was closed under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import itertools
import logging
import math
import os
import random
import resource
import socket
import ssl
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.auth_throttle import FailureLimiter
from core.clock import ClockMs, wall_ms
from core.errors import AuthThrottled, Forbidden, InvalidToken, Unauthorized, ZuulpushError
from core.ids import id_time_ms
from core.tasks import cancel_and_wait
from core.tokens import TokenVerifier
from registry.base import NodeInfo, NodeState, Registration, Registry
from router.base import (
    Broadcast,
    BroadcastLog,
    Delivery,
    Inbox,
    InboxEntry,
    NodeChannel,
    merge_replay,
)
from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.given import GivenLedger
from zuulpush.edge.lifetime import Lifetime
from zuulpush.edge.protocol import SHED_SLOT, SHED_UNREAD, EdgeConnection
from zuulpush.edge.shedding import Admission, Limits, LoopLag, Shed, derive_ceilings
from zuulpush.edge.state import State
from zuulpush.edge.wheel import TimerWheel
from zuulpush.edge.wire import WEBSOCKET, Outgoing
from zuulpush.edge.wsframes import Close
from zuulpush.errors import HandshakeRejected, OriginRefused
from zuulpush.tally import DEPTH_BOUNDS, LATENCY_BOUNDS_MS, Buckets
from zuulpush.tls import optional_context

log = logging.getLogger("zuulpush.edge")

DELIVERY_BATCH = 1024
NODE_HEARTBEAT_S = 5.0
REGISTRY_RETRY_S = 1.0
GIVEN_FLUSH_S = 1.0
"""Marks of what connections were given (`given`) are written to the inbox this often, each at
least this long after its write: long enough for a device's ack to make it moot."""
ACK_FLUSH_S = 0.025
"""Devices' acks wait up to this long to be removed from the inbox together: one pipeline for
every ack of that while, rather than one per event-loop turn. An ack not yet applied costs at
most a repeat, dropped by id, to a device that reconnects within it."""
UNREGISTER_CONCURRENCY = 256
ADMIT_SLICE = 64
"""Connections replayed between two yields to the loop (memory seams never yield by themselves)."""
ADMIT_BATCH = 1024
"""New connections registered (and replayed) per flush at most; the rest go in the next one, at
once. In a connect storm this bounds each Redis call, so one node's batch never holds Redis
(shared by the whole region) long enough for other nodes' calls to time out."""
HANDSHAKE_GROUP_S = 0.01
"""Handshakes begun within this long of a group's first share its deadline entry (the last
one's deadline: none is cut short, the first waits at most this much longer). In a connect
storm that is a list slot per connection rather than a tuple and a float (80 bytes), alive
for the whole handshake timeout."""
LISTENER_CHECK_S = 1.0
DRAIN_STEP_S = 0.1
"""A drain closes a batch of connections this often: its share of the window so far."""
EXPIRING = -1
"""`age` of a connection in its last interval, waiting in the lifetime heap."""


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(slots=True)
class EdgeStats:
    """Counters since start: plain numbers, cheap on the hot paths; `zuulpush.metrics` copies
    them into Prometheus metrics once a second."""

    connects: int = 0
    rejects: Counter[int] = field(default_factory=Counter)
    violations: int = 0  # protocol violations closed (1002, 1003, 1007, 1008, 1009)
    rate_limited: int = 0  # closed for sending past the inbound rate (1008)
    replaced: int = 0  # closed for a newer connection of the same client id (4003)
    origin_refused: int = 0  # refused for a browser origin not on the allow list (403)
    auth_throttled: int = 0  # admin requests refused unchecked: their source is over (429)
    heartbeat_timeouts: int = 0
    slow_consumers: int = 0
    delivered: int = 0
    acks: int = 0
    registry_errors: int = 0
    reregistered: int = 0
    shed: Counter[str] = field(default_factory=Counter)
    lifetime_closes: int = 0
    fd_exhaustion_episodes: int = 0
    relistens: int = 0
    drain_closes: int = 0  # go-aways sent by a drain
    replayed: int = 0  # messages written by replays (inbox entries and missed broadcasts)
    redelivered: int = 0  # inbox entries written to open connections whose registration was lost
    auth_failures: Counter[str] = field(default_factory=Counter)  # device_token, admin_key
    latency: Buckets = field(default_factory=lambda: Buckets(LATENCY_BOUNDS_MS))
    """Milliseconds from the API's accepting a message (its id) to its live write here, one
    observation per delivery (a message for this node), however many sockets it went to."""
    inbox_depth: Buckets = field(default_factory=lambda: Buckets(DEPTH_BOUNDS))
    """Messages replayed to each connection as it opened: its inbox's depth then."""

    def count_reject(self, error: ZuulpushError) -> None:
        self.rejects[error.http_status] += 1
        if isinstance(error, OriginRefused):
            self.origin_refused += 1
        elif isinstance(error, AuthThrottled):
            self.auth_throttled += 1
        if isinstance(error, InvalidToken):
            self.auth_failures["device_token"] += 1
        elif isinstance(error, Unauthorized | Forbidden):  # only admin routes check a key
            self.auth_failures["admin_key"] += 1


def fd_limit() -> int | None:
    """This process's soft limit of open files (None: unlimited or unknown)."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def edge_tls(config: EdgeConfig) -> ssl.SSLContext | None:
    """The edge's TLS context (None without `tls_cert_file`); `TlsConfigError` if the files or
    ciphers cannot be used."""
    return optional_context(config.tls_cert_file, config.tls_key_file,
                            what="edge TLS (tls_cert_file, tls_key_file)",
                            ciphers=config.tls_ciphers)


def listener_status(server: asyncio.Server | None, port: int) -> str:
    """"ok" if the server's socket still listens on `port`; "exhausted" if no file descriptor
    can be had to look (EMFILE/ENFILE); "gone" if it was closed."""
    sockets = server.sockets if server is not None else ()
    if not sockets:
        return "gone"
    try:
        fd = os.dup(sockets[0].fileno())
    except OSError as exc:
        return "exhausted" if exc.errno in (errno.EMFILE, errno.ENFILE) else "gone"
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return "gone"
    with sock:
        try:
            listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
            return "ok" if listening and sock.getsockname()[1] == port else "gone"
        except OSError:
            return "gone"


class EdgeServer:
    """An edge node. `await start()`, then `await shutdown()`; `port` is the bound port."""

    def __init__(
        self,
        config: EdgeConfig,
        *,
        verifier: TokenVerifier,
        registry: Registry,
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
        self.tls = edge_tls(config)
        self.verifier = verifier
        self.registry = registry
        self.inbox = inbox
        self.channel = channel
        self.history = history
        self.admin_key = admin_key
        self.admin_throttle = FailureLimiter("edge_admin", config.edge_admin_failures_max,
                                             config.edge_admin_failures_window_s)
        self.origins = config.origin_allow_list()
        self.clock = clock
        self.wall_clock_ms = wall_clock_ms
        self.node_id = config.node_id or default_node_id()
        self.state = NodeState.ACTIVE
        self.stats = EdgeStats()
        self.port = config.port
        # client id -> its current connection (REPLAYING or OPEN)
        self.connections: dict[str, EdgeConnection] = {}
        # open device connections by (transport, device type)
        self._by_kind: Counter[tuple[str, str]] = Counter()
        self.metrics_page: Callable[[], tuple[bytes, str]] | None = None
        """`GET /metrics`: the exposition and its content type (set by an app that exports
        metrics; without it, 404)."""
        self._handshakes: deque[_Deadline] = deque()
        self._wheel: TimerWheel[EdgeConnection] = TimerWheel(
            config.heartbeat_interval_s, now=clock())
        self._admits: list[EdgeConnection] = []
        self._acks: dict[str, list[str]] = {}
        self._ack_timer: asyncio.TimerHandle | None = None
        self.given = GivenLedger()
        self._marks: list[tuple[str, Sequence[tuple[str, str]]]] = []
        self._leaves: list[Registration] = []
        self._work = asyncio.Event()
        self._registry_down = False
        self._resync = False
        self._flush_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._rng = rng or random.Random()
        soft, hard = derive_ceilings(fd_limit(), config.max_connections,
                                     config.hard_max_connections)
        self.lag = LoopLag()
        self.admission = Admission(
            Limits(soft, hard, config.accept_rate_per_s, config.accept_burst,
                   config.shed_loop_lag_ms / 1000, config.shed_retry_after_s),
            now=clock(), lag=self.lag, rng=self._rng)
        self._served = 0  # sockets admitted and not yet closed, in any state
        self._shedding = 0  # sockets shed and not yet closed (lingering 503s)
        self.lifetime = Lifetime(config.lifetime_min_s if config.lifetime_max_s else 0.0,
                                 config.lifetime_max_s, config.heartbeat_interval_s)
        self._expiring: list[tuple[float, int, EdgeConnection]] = []
        self._expiry_order = itertools.count()
        self._lag_timer: asyncio.TimerHandle | None = None
        self._fds_exhausted = False
        self._relisten_failing = False
        self._drain_task: asyncio.Task[None] | None = None
        self.drained = asyncio.Event()  # set once a drain has closed what it could
        self._node_recorded = False  # whether a heartbeat has written this node's record yet

    # lifecycle

    async def start(self) -> None:
        self._server = await self._listen(self.config.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self._warn_about_fd_limit()
        self.lag.arm(self.clock())
        self._lag_timer = asyncio.get_running_loop().call_later(self.lag.interval_s,
                                                                self._sample_lag)
        await self._heartbeat_node()
        for loop_fn in (self._tick_loop, self._registry_loop, self._delivery_loop,
                        self._refresh_loop):
            self._spawn(loop_fn())
        log.info("edge node %s listening on %s:%d", self.node_id, self.config.host, self.port)

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop accepting, send every connection a go-away with a reconnect hint, wait up to
        `grace_s` for them to close, abort the rest, unregister them and the node."""
        if self._server is None:
            return
        if self._drain_task is not None and not self._drain_task.done():
            self._drain_task.cancel()  # cut short: what is left goes away at once
        self.state = NodeState.DRAINING
        with contextlib.suppress(Exception):
            await self._heartbeat_node()
        self._server.close()
        if self._lag_timer is not None:
            self._lag_timer.cancel()
            self.lag.disarm()
        for conn in self._all_connections():
            conn.goaway(Close.RECONNECT, "shutdown")
        deadline = self.clock() + grace_s
        while self.open_count() and self.clock() < deadline:
            await asyncio.sleep(0.05)
        for conn in self._all_connections():
            conn.abort()
        await asyncio.sleep(0)
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        await self._flush_registry_work()
        await cancel_and_wait(self._tasks, what="edge task")
        with contextlib.suppress(Exception):
            await self.registry.remove_node(self.node_id)
        await self._server.wait_closed()
        self._server = None

    def start_drain(self, why: str) -> bool:
        """Begin draining over `drain_window_s` (module docstring), unless already draining;
        True if this call began it. `drained` is set when it is over."""
        if self._drain_task is not None or self._server is None:
            return False
        log.warning("draining node %s (%s): %d connection(s) over %.0f s", self.node_id, why,
                    len(self.connections), self.config.drain_window_s)
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        return True

    async def drain(self, why: str = "drain") -> None:
        """Drain (or wait for the drain under way) until it is over."""
        self.start_drain(why)
        if self._drain_task is not None:
            await asyncio.shield(self._drain_task)

    async def _drain(self) -> None:
        """Turn draining (routers stop targeting the node; readiness turns false), stop
        accepting, close the connections in batches spread evenly over the drain window with
        reconnect hints, and wait for them to go until the window (plus one heartbeat interval
        for the last ones' closing handshakes) is over."""
        try:
            self.state = NodeState.DRAINING
            with contextlib.suppress(Exception):
                await self._heartbeat_node()
            if self._server is not None:
                self._server.close()
            window_s = self.config.drain_window_s
            conns = self._all_connections()
            start = self.clock()
            sent = 0
            while sent < len(conns):
                elapsed = self.clock() - start
                due = len(conns) if window_s <= 0 else \
                    min(len(conns), math.ceil(len(conns) * (elapsed + DRAIN_STEP_S) / window_s))
                for conn in conns[sent:due]:
                    conn.goaway(Close.RECONNECT, "drain")
                self.stats.drain_closes += due - sent
                sent = due
                if sent < len(conns):
                    await asyncio.sleep(DRAIN_STEP_S)
            deadline = start + window_s + self.config.heartbeat_interval_s
            while self.open_count() and self.clock() < deadline:
                await asyncio.sleep(0.05)
            log.warning("node %s drained: %d connection(s) left", self.node_id,
                        self.open_count())
        finally:
            self.drained.set()

    def admin_drain(self) -> tuple[int, dict[str, object]]:
        """`POST /admin/drain` (admin key checked): 202 and the drain's outline."""
        began = self.start_drain("POST /admin/drain")
        return 202, {"status": "draining", "node_id": self.node_id, "began": began,
                     "connections": len(self.connections),
                     "drain_window_s": self.config.drain_window_s}

    def open_count(self) -> int:
        return len(self._wheel) + sum(1 for conn in self._handshaking())

    def health(self) -> tuple[int, dict[str, object]]:
        """`GET /healthz`: 200 while active (503 while draining) and the node's load."""
        active = self.state is NodeState.ACTIVE
        limits = self.admission.limits
        stats = self.stats
        return (200 if active else 503), {
            "status": "ok" if active else "draining",
            "node_id": self.node_id,
            "connections": len(self.connections),
            "sockets": self._served,
            "max_connections": limits.max_connections,
            "hard_max_connections": limits.hard_max_connections,
            "loop_lag_ms": round(self.lag.current(self.clock()) * 1000, 1),
            "loop_lag_ms_peak": round(self.lag.peak_s * 1000, 1),
            "connects": stats.connects,
            "shed": {reason.value: stats.shed[reason] for reason in Shed},
            "lifetime_closes": stats.lifetime_closes,
            "fds_exhausted": self._fds_exhausted,
            "fd_exhaustion_episodes": stats.fd_exhaustion_episodes,
            "relistens": stats.relistens,
            "drain_closes": stats.drain_closes,
        }

    # callbacks from connections

    def admit(self) -> Shed | None:
        """A socket was accepted: None to serve it, else why it is shed (counted)."""
        reason = self.admission.decide(self.clock(), served=self._served,
                                       shedding=self._shedding)
        if reason is None:
            self._served += 1
        else:
            self._shedding += 1
            self.stats.shed[reason] += 1
        return reason

    def shed_late(self, conn: EdgeConnection) -> bool:
        """`conn` (served, its request just arrived) is to be shed because the loop runs too
        late: counted as shed from now on. False to go on with the handshake."""
        if not self.admission.late(self.clock()):
            return False
        conn.slot = SHED_SLOT
        self._served -= 1
        self._shedding += 1
        self.stats.shed[Shed.LOOP_LAG] += 1
        return True

    def retry_after_s(self) -> int:
        return self.admission.retry_after_s(self.clock())

    def handshake_started(self, conn: EdgeConnection) -> None:
        at = self.clock() + self.config.handshake_timeout_s
        handshakes = self._handshakes
        if handshakes and at - handshakes[-1].first < HANDSHAKE_GROUP_S:
            group = handshakes[-1]
            group.at = at
            group.conns.append(conn)
        else:
            handshakes.append(_Deadline(at, conn))

    def _handshaking(self) -> Iterator[EdgeConnection]:
        """Connections whose request has not been served yet."""
        for group in self._handshakes:
            yield from (conn for conn in group.conns if conn.state is State.HANDSHAKE)

    def accepted(self, conn: EdgeConnection) -> None:
        self.stats.connects += 1
        conn.slot = self._wheel.add(conn)
        reg = conn.registration
        if reg is None:
            return
        self._check_lifetime(conn, self.clock())
        previous = self.connections.get(reg.client_id)
        if previous is not None:
            previous.close(Close.REPLACED, "replaced by a newer connection")
            self.stats.replaced += 1
            self._by_kind[_kind(previous)] -= 1
        self.connections[reg.client_id] = conn
        self._by_kind[_kind(conn)] += 1
        self._admits.append(conn)
        self._work.set()

    def linger(self, conn: EdgeConnection) -> None:
        """`conn` has sent its close and waits for the peer's: move it to the wheel's last
        bucket, so that its next visit (which aborts it) is a whole interval away. A connection
        rejected before its upgrade has no slot: its handshake deadline aborts it."""
        if conn.slot >= 0:
            self._wheel.discard(conn, conn.slot)
            conn.slot = self._wheel.add(conn)

    def ack(self, conn: EdgeConnection, ids: list[str]) -> None:
        self.stats.acks += len(ids)
        self._acks.setdefault(conn.client_id, []).extend(ids)
        self.given.acked(conn, ids)
        if self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_FLUSH_S, self._acks_due)

    def _acks_due(self) -> None:
        self._ack_timer = None
        self._work.set()

    def connection_lost(self, conn: EdgeConnection) -> None:
        if conn.slot in (SHED_SLOT, SHED_UNREAD):
            self._shedding -= 1
            return
        self._served -= 1
        if conn.slot >= 0:
            self._wheel.discard(conn, conn.slot)
        reg = conn.registration
        if reg is None:
            return
        if self.connections.get(reg.client_id) is conn:
            del self.connections[reg.client_id]
            self._by_kind[_kind(conn)] -= 1
        self.given.closed(conn)
        self._leaves.append(reg)
        self._work.set()

    # deliveries

    def wrote(self, conn: EdgeConnection, out: Outgoing) -> None:
        """`out` was just written to `conn` (a push, or part of its replay)."""
        self.given.wrote(conn, out.id, stored=out.stored)

    def deliver(self, delivery: Delivery, now_ms: int | None = None) -> None:
        """Write one delivery to the local connections it names (or all, for a broadcast), and
        time it from its id; `now_ms` is the wall clock when the caller has read it already
        (the delivery loop, once per batch)."""
        mid, stored = delivery.message_id, not delivery.broadcast
        out = Outgoing(mid, delivery.payload, stored)
        if delivery.broadcast:
            types = delivery.device_types
            targets = list(self.connections.values()) if not types else \
                [c for c in self.connections.values()
                 if c.registration.device_type in types]  # type: ignore[union-attr]
        else:
            targets = [c for c in map(self.connections.get, delivery.clients) if c is not None]
        # The same bytes to every open WebSocket, with no call per socket but the write; SSE and
        # connections still replaying take the general path.
        # Each write raises the connection's high-water id and, for an inbox entry, records its
        # mark (`given`): inline for a broadcast's many sockets.
        frame, open_, ws, wrote = out.ws_frame(), State.OPEN, WEBSOCKET, self.given.wrote
        for conn in targets:
            if conn.state is open_ and conn.wire is ws:
                conn.transport.write(frame)  # type: ignore[union-attr]
                if stored:
                    wrote(conn, mid, stored=True)
                elif mid > conn.hw:
                    conn.hw = mid
            else:
                conn.deliver(out)
        self.stats.delivered += len(targets)
        accepted_ms = id_time_ms(delivery.message_id) if targets else None
        if accepted_ms is not None:
            waited_ms = (self.wall_clock_ms() if now_ms is None else now_ms) - accepted_ms
            self.stats.latency.add(waited_ms if waited_ms > 0 else 0)

    # tasks

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("edge task failed", exc_info=task.exception())

    async def _tick_loop(self) -> None:
        tick_s = min(self._wheel.tick_s, 0.25)
        next_check = self.clock() + LISTENER_CHECK_S
        next_marks = self.clock() + GIVEN_FLUSH_S
        while True:
            await asyncio.sleep(tick_s)
            now = self.clock()
            self.on_tick(now)
            if now >= next_marks:
                next_marks = now + GIVEN_FLUSH_S
                self.marks_due()
            if now >= next_check:
                next_check = now + LISTENER_CHECK_S
                await self._check_listener()

    def marks_due(self) -> None:
        """Hand the marks due (`GivenLedger.due`) to the next registry flush."""
        due = self.given.due()
        if due:
            self._marks.extend(due)
            self._work.set()

    def on_tick(self, now: float) -> None:
        """What the tick loop does at `now`: handshake deadlines, the wheel's visits (heartbeats,
        lifetimes) and the lifetime closes due."""
        self._expire_handshakes(now)
        for conn in self._wheel.due(now):
            conn.tick()
            if conn.age >= 0 and conn.state in (State.REPLAYING, State.OPEN):
                conn.age += 1
                self._check_lifetime(conn, now)
        self._expire_lifetimes(now)

    def _check_lifetime(self, conn: EdgeConnection, now: float) -> None:
        """At accept and at each visit: if the connection's lifetime ends within the coming
        interval, put it in the heap of closes to make (`lifetime`'s docstring)."""
        if conn.registration is None or not self.lifetime.enabled:
            return
        delay = self.lifetime.due_in(conn.age, self._rng.random(), self._rng.random())
        if delay is not None:
            conn.age = EXPIRING
            heapq.heappush(self._expiring, (now + delay, next(self._expiry_order), conn))

    def _expire_lifetimes(self, now: float) -> None:
        expiring = self._expiring
        while expiring and expiring[0][0] <= now:
            conn = heapq.heappop(expiring)[2]
            if conn.state in (State.REPLAYING, State.OPEN):
                self.stats.lifetime_closes += 1
                conn.goaway(Close.RECONNECT, "lifetime")

    # the listening socket, file descriptors, loop lag

    async def _listen(self, port: int) -> asyncio.Server:
        """Listen on `port`; with TLS, a socket's TLS handshake comes before `connection_made`
        (and so before admission) and must end within `handshake_timeout_s`."""
        loop = asyncio.get_running_loop()
        config = self.config
        return await loop.create_server(
            lambda: EdgeConnection(self), config.host, port, backlog=4096,
            reuse_port=config.reuse_port, ssl=self.tls,
            ssl_handshake_timeout=config.handshake_timeout_s if self.tls else None)

    def _sample_lag(self) -> None:
        self.lag.sampled(self.clock())
        self._lag_timer = asyncio.get_running_loop().call_later(self.lag.interval_s,
                                                                self._sample_lag)

    async def _check_listener(self) -> None:
        """Once a second: note running out of file descriptors (once per episode), and listen
        again if the listening socket was closed under us (module docstring)."""
        status = listener_status(self._server, self.port)
        if status == "exhausted" and not self._fds_exhausted:
            self._fds_exhausted = True
            self.stats.fd_exhaustion_episodes += 1
            log.warning("out of file descriptors with %d connections (limit %s): new "
                        "connections are closed at accept until some close",
                        self._served, fd_limit())
        elif status != "exhausted" and self._fds_exhausted:
            self._fds_exhausted = False
            log.warning("file descriptors available again")
        if status == "gone" and self.state is NodeState.ACTIVE and self._server is not None:
            await self._listen_again()

    async def _listen_again(self) -> None:
        old = self._server
        try:
            self._server = await self._listen(self.port)
        except OSError as exc:
            if not self._relisten_failing:  # logged once; retried every check
                log.error("the listening socket on port %d is gone and listening again failed "
                          "(%s); retrying", self.port, exc)
            self._relisten_failing = True
            return
        self._relisten_failing = False
        self.stats.relistens += 1
        log.error("the listening socket on port %d was closed under us; listening again",
                  self.port)
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()

    def _warn_about_fd_limit(self) -> None:
        limit = fd_limit()
        hard = self.admission.limits.hard_max_connections
        if limit is not None and hard > limit - 16:
            log.warning("hard_max_connections %d is at or above the file-descriptor limit %d: "
                        "past it, the kernel refuses accepts (EMFILE) and they are dropped "
                        "uncounted; raise the limit (ulimit -n) or lower the ceiling",
                        hard, limit)

    def _expire_handshakes(self, now: float) -> None:
        handshakes = self._handshakes
        while handshakes and handshakes[0].at <= now:
            for conn in handshakes.popleft().conns:
                if conn.state is State.HANDSHAKE:
                    conn.reject(HandshakeRejected(408, "handshake not completed in time",
                                                  code="request_timeout"), linger=False)
                elif conn.state is State.CLOSING and conn.slot < 0:
                    conn.abort()  # rejected before its upgrade and still lingering

    async def _registry_loop(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            try:
                await self._flush_registry_work()
            except Exception as exc:
                self._registry_failed(exc)
                await asyncio.sleep(REGISTRY_RETRY_S)
                self._work.set()

    async def _flush_registry_work(self) -> None:
        """Write pending registrations (then replay inboxes), acks and unregistrations. One flush
        at a time: shutdown's final flush waits for the loop's current one. What a failed call
        left undone is put back, to be retried (every step is idempotent)."""
        async with self._flush_lock:
            await self._flush_once()

    async def _flush_once(self) -> None:
        admits, self._admits = self._admits[:ADMIT_BATCH], self._admits[ADMIT_BATCH:]
        if self._admits:
            self._work.set()  # the rest: the next flush, right after this one
        try:
            await self._admit([conn for conn in admits if conn.state is State.REPLAYING])
        except BaseException:
            self._admits[:0] = [c for c in admits if c.state is State.REPLAYING]
            raise
        acks, self._acks = self._acks, {}
        try:
            await self.inbox.ack_many(list(acks.items()))
        except BaseException:
            for client_id, ids in acks.items():
                self._acks.setdefault(client_id, []).extend(ids)
            raise
        marks, self._marks = self._marks + self.given.ready(), []
        try:
            await self.inbox.given_many(marks)
        except BaseException:
            self._marks[:0] = marks
            raise
        leaves, self._leaves = self._leaves, []
        try:
            for start in range(0, len(leaves), UNREGISTER_CONCURRENCY):
                await asyncio.gather(*(
                    self.registry.unregister(reg.client_id, reg.node_id, reg.version)
                    for reg in leaves[start:start + UNREGISTER_CONCURRENCY]))
        except BaseException:
            self._leaves[:0] = leaves
            raise

    def _registry_failed(self, exc: Exception) -> None:
        """Note a failed registry or inbox call: log once per outage, re-register everything once
        it is back. Connections stay open and keep receiving what reaches this node."""
        self.stats.registry_errors += 1
        self._resync = True
        if not self._registry_down:
            self._registry_down = True
            log.warning("registry unreachable (%s: %s); serving on, retrying",
                        type(exc).__name__, exc)

    async def _admit(self, conns: list[EdgeConnection]) -> None:
        if not conns:
            return
        regs = [conn.registration for conn in conns]
        await self.registry.register(regs, self.config.registry_ttl_s)  # type: ignore[arg-type]
        # Then the whole batch's inboxes in one call (each resume removes what the device has,
        # `Inbox.resume_many`, and answers the first page of the rest), the broadcast history
        # once from the oldest resume point (not a round trip each).
        conns = [conn for conn in conns if conn.state is State.REPLAYING]
        reads = [(conn.client_id, conn.resume_after) for conn in conns]
        page_size = self.config.replay_page_size
        pages = await self.inbox.resume_many(reads, page_size)
        resumes = [last_id for _, last_id in reads if last_id is not None]
        missed: list[Broadcast] = []
        if resumes and self.history is not None:
            missed = await self._missed_broadcasts(self.history, min(resumes))
        for i, (conn, (client_id, last_id), entries) in enumerate(zip(conns, reads, pages,
                                                                        strict=True)):
            if i % ADMIT_SLICE == ADMIT_SLICE - 1:
                await asyncio.sleep(0)  # a storm's batch must not hold the loop
            if conn.state is not State.REPLAYING:
                continue  # closed meanwhile
            entries = await self._whole(client_id, entries)
            replay = [Outgoing(entry.id, entry.payload) for entry in entries]
            if last_id is not None and missed:
                after = [b for b in missed if b.id > last_id]
                device_type = conn.registration.device_type  # type: ignore[union-attr]
                stored = {entry.id for entry in entries}
                replay = [Outgoing(entry.id, entry.payload, entry.id in stored)
                          for entry in merge_replay(entries, after, device_type)]
            conn.replayed(replay)
            self.stats.replayed += len(replay)
            self.stats.inbox_depth.add(len(replay))

    async def _whole(self, client_id: str, first: list[InboxEntry]) -> list[InboxEntry]:
        """`first`, the first page of a client's inbox, with the rest of it, read a page at a
        time. All of it: a replay cut short and followed by newer live pushes would make the
        device's next resume point skip what was left out. The inbox's per-client cap bounds
        it."""
        page_size = self.config.replay_page_size
        entries, page = list(first), first
        while len(page) == page_size:
            page = await self.inbox.after(client_id, page[-1].id, page_size)
            entries.extend(page)
        return entries

    async def _missed_broadcasts(self, history: BroadcastLog, last_id: str) -> list[Broadcast]:
        """The whole broadcast history after `last_id`, a page at a time (its cap bounds it)."""
        page_size = self.config.replay_page_size
        found: list[Broadcast] = []
        while True:
            page = await history.after(last_id, page_size)
            found.extend(page)
            if len(page) < page_size:
                return found
            last_id = page[-1].id

    async def _delivery_loop(self) -> None:
        """Write what the node channel brings. A failing channel is retried, logged once per
        outage: meanwhile messages wait in inboxes, and devices get them when they reconnect."""
        failing = False
        while True:
            try:
                batch = await self.channel.receive(self.node_id, DELIVERY_BATCH, 1.0)
            except Exception as exc:
                if not failing:
                    log.warning("node channel unreachable (%s: %s); retrying",
                                type(exc).__name__, exc)
                failing = True
                await asyncio.sleep(REGISTRY_RETRY_S)
                continue
            if failing:
                log.warning("node channel reachable again")
                failing = False
            now_ms = self.wall_clock_ms()
            for delivery in batch:
                self.deliver(delivery, now_ms)

    async def _refresh_loop(self) -> None:
        """Heartbeat the node record every few seconds (routers read its state and counts) and
        refresh this node's registrations every third of their TTL, or at once after an outage."""
        refresh_s = self.config.registry_ttl_s / 3
        next_refresh = self.clock() + refresh_s
        while True:
            await asyncio.sleep(min(NODE_HEARTBEAT_S, refresh_s))
            try:
                await self._heartbeat_node()
                if self.state is NodeState.ACTIVE and \
                        await self.registry.take_drain_request(self.node_id):
                    self.start_drain("a drain request in the registry")
                if self._resync or self.clock() >= next_refresh:
                    next_refresh = self.clock() + refresh_s
                    await self._refresh_registrations()
            except Exception as exc:
                self._registry_failed(exc)
            else:
                if self._registry_down:
                    self._registry_down = False
                    log.warning("registry reachable again; registrations restored")

    async def _refresh_registrations(self) -> None:
        """Extend this node's registrations. Those the registry lost (its Redis restarted
        empty, or this node was cut off past their TTL) are written again, then each of their
        connections is sent what waits in its inbox (`_redeliver`): a message stored while the
        registry did not know the connection found no node to go to, and waits there."""
        self._resync = False
        conns = [c for c in self.connections.values() if c.state is State.OPEN]
        ttl_s = self.config.registry_ttl_s
        try:
            ids = [conn.client_id for conn in conns]
            extended = await self.registry.refresh(self.node_id, ids, ttl_s)
            if extended < len(conns):
                found = await self.registry.lookup_many(ids)
                lost = [conn for conn in conns if conn.client_id not in found]
                await self.registry.register(
                    [c.registration for c in lost if c.registration is not None], ttl_s)
                self.stats.reregistered += len(lost)
                await self._redeliver(lost)
        except BaseException:
            self._resync = True
            raise

    async def _redeliver(self, conns: list[EdgeConnection]) -> None:
        """Write to each connection, as live pushes, what waits in its inbox (some of it it may
        have had: at least once). Only after its registration is back: a message stored later
        is found by its router's lookup instead."""
        page_size = self.config.replay_page_size
        for start in range(0, len(conns), ADMIT_BATCH):
            batch = conns[start:start + ADMIT_BATCH]
            pages = await self.inbox.resume_many([(c.client_id, None) for c in batch], page_size)
            for conn, first in zip(batch, pages, strict=True):
                entries = await self._whole(conn.client_id, first)
                for entry in entries:
                    conn.deliver(Outgoing(entry.id, entry.payload))
                self.stats.redelivered += len(entries)

    def open_by_kind(self) -> dict[tuple[str, str], int]:
        """Open device connections by (transport, device type): `ws` or `sse`, and the type
        their tokens name."""
        return {kind: n for kind, n in self._by_kind.items() if n > 0}

    def node_info(self) -> NodeInfo:
        """This node's record as its heartbeat writes it: state, connections by device type
        and by transport, and its counters since start (`NodeInfo.totals`)."""
        by_type_counts: Counter[str] = Counter()
        by_transport_counts: Counter[str] = Counter()
        for (transport, device_type), n in self._by_kind.items():
            by_type_counts[device_type] += n
            by_transport_counts[transport] += n
        by_type = tuple((t, n) for t, n in by_type_counts.items() if n > 0)
        by_transport = tuple((t, n) for t, n in sorted(by_transport_counts.items()) if n > 0)
        stats = self.stats
        totals = (("delivered", stats.delivered), ("shed", sum(stats.shed.values())),
                  ("connects", stats.connects), ("acks", stats.acks))
        return NodeInfo(self.node_id, f"{self.config.host}:{self.port}", self.config.region,
                        self.state, len(self.connections), by_type, by_transport, totals)

    async def _heartbeat_node(self) -> None:
        """Write the node's record. Finding it gone, after the first, means the registry lost
        it, and likely this node's registrations with it: they are refreshed at once."""
        had = await self.registry.heartbeat_node(self.node_info(), self.config.registry_ttl_s)
        if self._node_recorded and not had and not self._resync:
            self._resync = True
            log.warning("node %s: its record was gone from the registry (restarted empty, or "
                        "this node cut off past its TTL); writing its registrations again",
                        self.node_id)
        self._node_recorded = True

    def _all_connections(self) -> list[EdgeConnection]:
        conns = list(self._wheel.members())
        conns.extend(self._handshaking())
        return conns


class _Deadline:
    """Handshakes that end together (`HANDSHAKE_GROUP_S`): the first one's deadline, the
    group's, and the connections."""

    __slots__ = ("at", "conns", "first")

    def __init__(self, at: float, conn: EdgeConnection) -> None:
        self.first = self.at = at
        self.conns = [conn]


def _kind(conn: EdgeConnection) -> tuple[str, str]:
    """(transport, device type) of an accepted device connection."""
    assert conn.wire is not None and conn.registration is not None
    return conn.wire.name, conn.registration.device_type
