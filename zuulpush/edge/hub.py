"""`Hub`: the node's local device connections (one per client id, the newer replacing the older)
and their fan-out: what the node channel brings is written to the connections it names, or to
all of them for a broadcast (centrifuge's hub, apart from its node)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from core.clock import ClockMs
from core.ids import id_time_ms
from core.outage import OutageLog
from router.base import Delivery, NodeChannel
from zuulpush.edge.protocol import EdgeConnection, Wrote, fan_out
from zuulpush.edge.stats import EdgeStats
from zuulpush.edge.wire import Outgoing
from zuulpush.edge.wsframes import Close

log = logging.getLogger("zuulpush.edge")

DELIVERY_BATCH = 1024
RETRY_S = 1.0
"""A failing node channel is read again this long after."""


class Hub:
    """Client id -> its current connection (REPLAYING or OPEN), counted by kind."""

    def __init__(self, *, node_id: str, channel: NodeChannel, stats: EdgeStats,
                 wrote: Wrote, wall_clock_ms: ClockMs) -> None:
        """`wrote` records what a write gave a connection (`GivenLedger.wrote`);
        `wall_clock_ms` times deliveries from the API's clock reading in their ids."""
        self.connections: dict[str, EdgeConnection] = {}
        self._by_kind: Counter[tuple[str, str]] = Counter()  # (transport, device type)
        self._node_id = node_id
        self.channel = channel
        self._stats = stats
        self._wrote = wrote
        self.wall_clock_ms = wall_clock_ms
        self.outage = OutageLog(log)

    def add(self, conn: EdgeConnection) -> None:
        """A device connection was accepted: it replaces the client's older one (closed 4003)."""
        reg = conn.registration
        assert reg is not None
        previous = self.connections.get(reg.client_id)
        if previous is not None:
            previous.close(Close.REPLACED, "replaced by a newer connection")
            self._stats.replaced += 1
            self._by_kind[_kind(previous)] -= 1
        self.connections[reg.client_id] = conn
        self._by_kind[_kind(conn)] += 1

    def remove(self, conn: EdgeConnection) -> None:
        """A device connection is gone (nothing to do if a newer one replaced it)."""
        client_id = conn.client_id
        if self.connections.get(client_id) is conn:
            del self.connections[client_id]
            self._by_kind[_kind(conn)] -= 1

    def open_by_kind(self) -> dict[tuple[str, str], int]:
        """Open device connections by (transport, device type): `ws` or `sse`, and the type
        their tokens name."""
        return {kind: n for kind, n in self._by_kind.items() if n > 0}

    def deliver(self, delivery: Delivery, now_ms: int | None = None) -> None:
        """Write one delivery to the local connections it names (or all, for a broadcast), and
        time it from its id; `now_ms` is the wall clock when the caller has read it already
        (the delivery loop, once per batch)."""
        out = Outgoing(delivery.message_id, delivery.payload, not delivery.broadcast)
        if delivery.broadcast:
            types = delivery.device_types
            targets = list(self.connections.values()) if not types else \
                [c for c in self.connections.values()
                 if c.registration.device_type in types]  # type: ignore[union-attr]
        else:
            targets = [c for c in map(self.connections.get, delivery.clients) if c is not None]
        fan_out(targets, out, self._wrote)
        self._stats.delivered += len(targets)
        accepted_ms = id_time_ms(delivery.message_id) if targets else None
        if accepted_ms is not None:
            waited_ms = (self.wall_clock_ms() if now_ms is None else now_ms) - accepted_ms
            self._stats.latency.add(waited_ms if waited_ms > 0 else 0)

    async def receive_loop(self) -> None:
        """Write what the node channel brings. A failing channel is retried, logged once per
        outage: meanwhile messages wait in inboxes, and devices get them when they reconnect."""
        while True:
            try:
                batch = await self.channel.receive(self._node_id, DELIVERY_BATCH, 1.0)
            except Exception as exc:
                self.outage.failed("node channel unreachable (%s: %s); retrying",
                                   type(exc).__name__, exc)
                await asyncio.sleep(RETRY_S)
                continue
            self.outage.recovered("node channel reachable again")
            now_ms = self.wall_clock_ms()
            for delivery in batch:
                self.deliver(delivery, now_ms)


def _kind(conn: EdgeConnection) -> tuple[str, str]:
    """(transport, device type) of an accepted device connection."""
    assert conn.wire is not None and conn.registration is not None
    return conn.wire.name, conn.registration.device_type
