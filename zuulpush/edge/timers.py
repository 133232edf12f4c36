"""`Timers`: every per-connection deadline of a node, from a few shared structures rather than a
handle each (handshake deadlines, the heartbeat wheel, the heap of lifetime closes), the
loop-lag sampler, and the tick loop that runs them (`run`)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterator

from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.lifetime import Lifetime
from zuulpush.edge.protocol import EdgeConnection
from zuulpush.edge.shedding import LoopLag
from zuulpush.edge.state import LIVE, State
from zuulpush.edge.stats import EdgeStats
from zuulpush.edge.wheel import TimerWheel
from zuulpush.edge.wsframes import Close

TICK_MAX_S = 0.25
"""The tick loop runs at least this often (more often with a short heartbeat interval)."""
HANDSHAKE_GROUP_S = 0.01
"""Handshakes begun within this long of a group's first share its deadline entry (the last
one's deadline: none is cut short, the first waits at most this much longer). In a connect
storm that is a list slot per connection rather than a tuple and a float (80 bytes), alive
for the whole handshake timeout."""
LISTENER_CHECK_S = 1.0
"""How often the tick loop runs the listener's probe (`Listener.check`)."""
GIVEN_FLUSH_S = 1.0
"""Marks of what connections were given (`given`) are handed to the registrar this often, each
at least this long after its write: long enough for a device's ack to make it moot."""


class _Deadline:
    """Handshakes that end together (`HANDSHAKE_GROUP_S`): the first one's deadline, the
    group's, and the connections."""

    __slots__ = ("at", "conns", "first")

    def __init__(self, at: float, conn: EdgeConnection) -> None:
        self.first = self.at = at
        self.conns = [conn]


class Timers:
    """The node's timers (module docstring). Sans I/O but for `run()` and the lag sampler:
    `on_tick(now)` is what one tick does, and tests call it with a fake clock."""

    def __init__(self, config: EdgeConfig, *, clock: Callable[[], float], rng: random.Random,
                 lag: LoopLag, stats: EdgeStats) -> None:
        self._config = config
        self._clock = clock
        self._rng = rng
        self._stats = stats
        self.lag = lag
        self.handshakes: deque[_Deadline] = deque()
        self.wheel: TimerWheel[EdgeConnection] = TimerWheel(config.heartbeat_interval_s,
                                                            now=clock())
        self.lifetime = Lifetime(config.lifetime_min_s if config.lifetime_max_s else 0.0,
                                 config.lifetime_max_s, config.heartbeat_interval_s)
        self.expiring: list[tuple[float, int, EdgeConnection]] = []
        self._expiry_order = itertools.count()
        self._lag_timer: asyncio.TimerHandle | None = None

    # connections

    def handshake_started(self, conn: EdgeConnection) -> None:
        at = self._clock() + self._config.handshake_timeout_s
        handshakes = self.handshakes
        if handshakes and at - handshakes[-1].first < HANDSHAKE_GROUP_S:
            group = handshakes[-1]
            group.at = at
            group.conns.append(conn)
        else:
            handshakes.append(_Deadline(at, conn))

    def handshaking(self) -> Iterator[EdgeConnection]:
        """Connections whose request has not been served yet."""
        for group in self.handshakes:
            yield from (conn for conn in group.conns if conn.state is State.HANDSHAKE)

    def joined(self, conn: EdgeConnection) -> None:
        """`conn` is upgraded: the wheel visits it from now on, first one interval later."""
        conn.placed(self.wheel.add(conn))

    def linger(self, conn: EdgeConnection) -> None:
        """`conn` has sent its close and waits for the peer's: move it to the wheel's last
        bucket, so that its next visit (which aborts it) is a whole interval away. A connection
        closed before its upgrade is in no bucket: its handshake deadline aborts it."""
        if conn.slot >= 0:
            self.wheel.discard(conn, conn.slot)
            conn.placed(self.wheel.add(conn))

    def left(self, conn: EdgeConnection) -> None:
        """`conn`'s transport is gone: the wheel visits it no more."""
        if conn.slot >= 0:
            self.wheel.discard(conn, conn.slot)

    def connections(self) -> list[EdgeConnection]:
        """Every connection not yet gone: upgraded (in the wheel) or still handshaking."""
        conns = list(self.wheel.members())
        conns.extend(self.handshaking())
        return conns

    def open_count(self) -> int:
        return len(self.wheel) + sum(1 for _ in self.handshaking())

    # what the tick loop does

    def on_tick(self, now: float) -> None:
        """What the tick loop does at `now`: handshake deadlines, the wheel's visits (heartbeats,
        lifetimes) and the lifetime closes due."""
        self.expire_handshakes(now)
        for conn in self.wheel.due(now):
            if conn.tick():
                self.check_lifetime(conn, now)
        self._expire_lifetimes(now)

    def expire_handshakes(self, now: float) -> None:
        handshakes = self.handshakes
        while handshakes and handshakes[0].at <= now:
            for conn in handshakes.popleft().conns:
                conn.handshake_due()

    def check_lifetime(self, conn: EdgeConnection, now: float) -> None:
        """At a device connection's accept and at each visit that counts: if its lifetime ends
        within the coming interval, put it in the heap of closes to make (`lifetime`)."""
        if not self.lifetime.enabled:
            return
        delay = self.lifetime.due_in(conn.age, self._rng.random(), self._rng.random())
        if delay is not None:
            conn.expiring()
            heapq.heappush(self.expiring, (now + delay, next(self._expiry_order), conn))

    def _expire_lifetimes(self, now: float) -> None:
        expiring = self.expiring
        while expiring and expiring[0][0] <= now:
            conn = heapq.heappop(expiring)[2]
            if conn.state in LIVE:
                self._stats.lifetime_closes += 1
                conn.goaway(Close.RECONNECT, "lifetime")

    async def run(self, marks_due: Callable[[], None],
                  probe: Callable[[], Awaitable[None]]) -> None:
        """The tick loop: `on_tick` every wheel tick (at most `TICK_MAX_S` apart), `marks_due`
        every `GIVEN_FLUSH_S`, the listener's `probe` every `LISTENER_CHECK_S`."""
        tick_s = min(self.wheel.tick_s, TICK_MAX_S)
        next_check = self._clock() + LISTENER_CHECK_S
        next_marks = self._clock() + GIVEN_FLUSH_S
        while True:
            await asyncio.sleep(tick_s)
            now = self._clock()
            self.on_tick(now)
            if now >= next_marks:
                next_marks = now + GIVEN_FLUSH_S
                marks_due()
            if now >= next_check:
                next_check = now + LISTENER_CHECK_S
                await probe()

    # the loop-lag sampler (`shedding.LoopLag`)

    def start_lag_sampler(self) -> None:
        self.lag.arm(self._clock())
        self._lag_timer = asyncio.get_running_loop().call_later(self.lag.interval_s,
                                                                self._sample_lag)

    def stop_lag_sampler(self) -> None:
        if self._lag_timer is not None:
            self._lag_timer.cancel()
            self._lag_timer = None
            self.lag.disarm()

    def _sample_lag(self) -> None:
        self.lag.sampled(self._clock())
        self._lag_timer = asyncio.get_running_loop().call_later(self.lag.interval_s,
                                                                self._sample_lag)
