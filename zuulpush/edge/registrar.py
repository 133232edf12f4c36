"""`Registrar`: the node's registry and inbox writes, batched through one task with rollback
(registrations, then the replay; acks, marks, unregistrations), and its refresh loop: the node's
record, drain requests, and registrations refreshed, or written again if the registry lost them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from core.outage import OutageLog
from registry.base import Connections, NodeControl, NodeInfo, Nodes, NodeState, Registration
from router.base import Inbox
from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.given import GivenLedger
from zuulpush.edge.protocol import EdgeConnection
from zuulpush.edge.replay import Replay
from zuulpush.edge.state import State
from zuulpush.edge.stats import EdgeStats

log = logging.getLogger("zuulpush.edge")

NODE_HEARTBEAT_S = 5.0
RETRY_S = 1.0
"""A failed flush is tried again this long after."""
ACK_FLUSH_S = 0.025
"""Devices' acks wait up to this long to be removed from the inbox together: one pipeline for
every ack of that while, rather than one per event-loop turn. An ack not yet applied costs at
most a repeat, dropped by id, to a device that reconnects within it."""
UNREGISTER_CONCURRENCY = 256
ADMIT_BATCH = 1024
"""New connections registered (and replayed) per flush at most; the rest go in the next one, at
once. In a connect storm this bounds each Redis call, so one node's batch never holds Redis
(shared by the whole region) long enough for other nodes' calls to time out."""


class NodeRegistry(Connections, Nodes, NodeControl, Protocol):
    """What an edge node uses of the registry: its connections' records, its own node record,
    and the drain requests an operator leaves for it (no device records)."""


class RecordedNode(Protocol):
    """What the refresh loop reads of its node (`EdgeServer`), and the drain it may begin."""

    @property
    def state(self) -> NodeState: ...

    def node_info(self) -> NodeInfo: ...

    def start_drain(self, why: str) -> bool: ...


class Registrar:
    """The registry loop and the refresh loop of one node (module docstring)."""

    def __init__(self, config: EdgeConfig, *, node: RecordedNode, node_id: str,
                 registry: NodeRegistry, inbox: Inbox, given: GivenLedger, replay: Replay,
                 connections: Mapping[str, EdgeConnection], stats: EdgeStats,
                 clock: Callable[[], float]) -> None:
        """`connections` is the hub's map (read when refreshing)."""
        self._config = config
        self._node = node
        self._node_id = node_id
        self.registry = registry
        self.inbox = inbox
        self.replay = replay
        self._connections = connections
        self._stats = stats
        self._clock = clock
        self.given = given
        self.admits: list[EdgeConnection] = []
        self._acks: dict[str, list[str]] = {}
        self._ack_timer: asyncio.TimerHandle | None = None
        self._marks: list[tuple[str, Sequence[tuple[str, str]]]] = []
        self._leaves: list[Registration] = []
        self._work = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self.resync = False
        """Whether every registration is to be refreshed at the next round (after an outage)."""
        self.outage = OutageLog(log)
        self._node_recorded = False  # whether a heartbeat has written this node's record yet

    # what connections hand over

    def admit(self, conn: EdgeConnection) -> None:
        """Register `conn` (REPLAYING) at the next flush, then replay it."""
        self.admits.append(conn)
        self._work.set()

    def ack(self, conn: EdgeConnection, ids: list[str]) -> None:
        self._stats.acks += len(ids)
        self._acks.setdefault(conn.client_id, []).extend(ids)
        self.given.acked(conn, ids)
        if self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_FLUSH_S, self._acks_due)

    def _acks_due(self) -> None:
        self._ack_timer = None
        self._work.set()

    def leave(self, conn: EdgeConnection, reg: Registration) -> None:
        """`conn` is gone: its marks are due, its registration is removed if still its own."""
        self.given.closed(conn)
        self._leaves.append(reg)
        self._work.set()

    def marks_due(self) -> None:
        """Hand the marks due (`GivenLedger.due`) to the next flush."""
        due = self.given.due()
        if due:
            self._marks.extend(due)
            self._work.set()

    # the registry loop

    async def run(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            try:
                await self.flush()
            except Exception as exc:
                self.failed(exc)
                await asyncio.sleep(RETRY_S)
                self._work.set()

    async def flush(self) -> None:
        """Write pending registrations (then replay inboxes), acks, marks and unregistrations.
        One flush at a time: the last flush of a shutdown waits for the loop's current one.
        What a failed call left undone is put back, to be retried (every step is idempotent)."""
        async with self._flush_lock:
            await self._flush_once()

    async def last_flush(self) -> None:
        """A stopping node's: acks waiting for their timer go now."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        await self.flush()

    async def _flush_once(self) -> None:
        admits, self.admits = self.admits[:ADMIT_BATCH], self.admits[ADMIT_BATCH:]
        if self.admits:
            self._work.set()  # the rest: the next flush, right after this one
        try:
            await self._admit([conn for conn in admits if conn.state is State.REPLAYING])
        except BaseException:
            self.admits[:0] = [c for c in admits if c.state is State.REPLAYING]
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
        await self._unregister()

    async def _admit(self, conns: list[EdgeConnection]) -> None:
        if not conns:
            return
        regs = [conn.registration for conn in conns]
        await self.registry.register(regs, self._config.registry_ttl_s)  # type: ignore[arg-type]
        await self.replay.opened([conn for conn in conns if conn.state is State.REPLAYING])

    async def _unregister(self) -> None:
        leaves, self._leaves = self._leaves, []
        try:
            for start in range(0, len(leaves), UNREGISTER_CONCURRENCY):
                await asyncio.gather(*(
                    self.registry.unregister(reg.client_id, reg.node_id, reg.version)
                    for reg in leaves[start:start + UNREGISTER_CONCURRENCY]))
        except BaseException:
            self._leaves[:0] = leaves
            raise

    def failed(self, exc: Exception) -> None:
        """Note a failed registry or inbox call: log once per outage, re-register everything once
        it is back. Connections stay open and keep receiving what reaches this node."""
        self._stats.registry_errors += 1
        self.resync = True
        self.outage.failed("registry unreachable (%s: %s); serving on, retrying",
                           type(exc).__name__, exc)

    # the refresh loop

    async def refresh_loop(self) -> None:
        """Heartbeat the node record every few seconds (routers read its state and counts),
        take a drain request an operator left for an active node (and begin the drain), and
        refresh this node's registrations every third of their TTL, or at once after an
        outage."""
        refresh_s = self._config.registry_ttl_s / 3
        next_refresh = self._clock() + refresh_s
        while True:
            await asyncio.sleep(min(NODE_HEARTBEAT_S, refresh_s))
            try:
                await self.heartbeat_node()
                if self._node.state is NodeState.ACTIVE and \
                        await self.registry.take_drain_request(self._node_id):
                    self._node.start_drain("a drain request in the registry")
                if self.resync or self._clock() >= next_refresh:
                    next_refresh = self._clock() + refresh_s
                    await self.refresh_registrations()
            except Exception as exc:
                self.failed(exc)
            else:
                self.outage.recovered("registry reachable again; registrations restored")

    async def heartbeat_node(self) -> None:
        """Write the node's record. Finding it gone, after the first, means the registry lost
        it, and likely this node's registrations with it: they are refreshed at once."""
        had = await self.registry.heartbeat_node(self._node.node_info(),
                                                 self._config.registry_ttl_s)
        if self._node_recorded and not had and not self.resync:
            self.resync = True
            log.warning("node %s: its record was gone from the registry (restarted empty, or "
                        "this node cut off past its TTL); writing its registrations again",
                        self._node_id)
        self._node_recorded = True

    async def remove_node(self) -> None:
        await self.registry.remove_node(self._node_id)

    async def refresh_registrations(self) -> None:
        """Extend this node's registrations. Those the registry lost (its Redis restarted
        empty, or this node was cut off past their TTL) are written again, then each of their
        connections is sent what waits in its inbox (`Replay.redeliver`): a message stored
        while the registry did not know the connection found no node to go to, and waits
        there."""
        self.resync = False
        conns = [c for c in self._connections.values() if c.state is State.OPEN]
        ttl_s = self._config.registry_ttl_s
        try:
            ids = [conn.client_id for conn in conns]
            extended = await self.registry.refresh(self._node_id, ids, ttl_s)
            if extended < len(conns):
                found = await self.registry.lookup_many(ids)
                lost = [conn for conn in conns if conn.client_id not in found]
                await self.registry.register(
                    [c.registration for c in lost if c.registration is not None], ttl_s)
                self._stats.reregistered += len(lost)
                await self.replay.redeliver(lost)
        except BaseException:
            self.resync = True
            raise
