"""The router worker: take messages off the queue, store them in inboxes, deliver them to nodes.

Per batch: expired messages are dropped (counted); targeted ones are FIRST added to their clients'
inboxes here, THEN their clients are looked up and each active node holding some gets one
`Delivery`; broadcasts are FIRST kept in the history, THEN delivered to every active node; what
peer regions' clients need is forwarded to those regions' queues (`router.regions`); deliveries
go out once per node, and the next take marks the batch done. Why this order loses nothing, and
the rules across regions: docs/delivery.md, "Routing a batch".
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.clock import ClockMs, wall_ms
from core.errors import Unavailable
from core.outage import OutageLog
from registry.base import Location, NodeInfo, NodeState, Registry
from router.base import (
    Broadcast,
    BroadcastLog,
    Delivery,
    Inbox,
    InboxEntry,
    Message,
    MessageQueue,
    NodeChannel,
    Priority,
    Taken,
)
from router.config import RouterConfig
from router.node_cache import NodeCache
from router.regions import Regions

log = logging.getLogger(__name__)

FORWARD_TIMEOUT_S = 1.0
"""The longest a batch waits for a peer region's queue to take its forwards."""
PEER_RETRY_AFTER_S = 5.0
"""After a peer region failed (or timed out) a forward, its forwards are skipped this long."""
UNSENT_MAX = 10_000
"""Forwards a peer region did not take, kept (per region, newest) to send again once it takes
them: the worker tries at most every `PEER_RETRY_AFTER_S`, between batches too. Past it the
oldest are dropped (counted); expired ones are dropped when their turn comes. Kept in memory:
a router that stops loses them, and they stay what they always are, this region's inbox copies
(a device that resumes here or pulls here gets them)."""


@dataclass(slots=True)
class WorkerStats:
    """Running totals of one worker: plain counters, which `zuulpush.metrics` copies into
    Prometheus metrics (`expired` and `delivered` also by priority)."""

    taken: int = 0
    expired: int = 0  # messages dropped because their TTL ran out before handling
    stored: int = 0  # inbox entries added here (one per message per target client)
    kept: int = 0  # broadcasts added to the broadcast history
    delivered: int = 0  # deliveries handed to nodes (one per message per node)
    held: int = 0  # target clients left in this region's inbox only: not live here, not forwarded
    unroutable_region: int = 0  # target clients on nodes of regions with no peer configured
    unroutable_nodes: int = 0  # broadcast deliveries skipped: nodes of unconfigured regions
    publish_errors: int = 0  # node batches the channel failed to take (messages are in inboxes)
    region_errors: int = 0  # forwards a peer region's queue did not take (at a try)
    unsent_dropped: int = 0  # forwards given up on: `UNSENT_MAX` held for a region already
    handed_errors: int = 0  # forwards whose note in the inbox failed (a handoff may repeat them)
    errors: int = 0  # batches that failed as a whole
    expired_by: Counter[Priority] = field(default_factory=Counter)
    delivered_by: Counter[Priority] = field(default_factory=Counter)
    forwarded: Counter[str] = field(default_factory=Counter)  # messages handed on, by peer region

    def totals(self) -> dict[str, int]:
        """The counters a router publishes for dashboards (`router.pages.process_stats`)."""
        return {"taken": self.taken, "expired": self.expired, "stored": self.stored,
                "forwarded": sum(self.forwarded.values())}


@dataclass(slots=True)
class BatchSends:
    """What one taken batch sends on: deliveries per node of this region, and forwarded
    messages per peer region."""

    per_node: dict[str, list[Delivery]] = field(default_factory=dict)
    forwards: dict[str, list[Message]] = field(default_factory=dict)

    def deliver(self, node_id: str, delivery: Delivery) -> None:
        self.per_node.setdefault(node_id, []).append(delivery)

    def forward(self, region: str, message: Message) -> None:
        self.forwards.setdefault(region, []).append(message)


class RouterWorker:
    """One consumer of the queue. Run many, in one process or many; they share nothing."""

    def __init__(
        self,
        queue: MessageQueue,
        registry: Registry,
        inbox: Inbox,
        channel: NodeChannel,
        *,
        consumer: str,
        config: RouterConfig,
        clock_ms: ClockMs = wall_ms,
        take_timeout_s: float = 1.0,
        history: BroadcastLog | None = None,
        region: str = "local",
        peers: Mapping[str, MessageQueue] | None = None,
        node_cache_s: float = 0.0,
    ) -> None:
        """`history`, when given, keeps every broadcast for devices that resume; without it a
        broadcast reaches only the devices connected when it is delivered. `queue`, `inbox`,
        `channel` and `history` are this region's, named `region`; `peers` are other regions'
        queues by name, that messages for their clients are forwarded to (docs/delivery.md).
        Without peers every node is reached on `channel`. `node_cache_s` > 0: locate clients
        through a `NodeCache` of the active nodes that old (one round trip fewer per batch on
        Redis)."""
        self._queue = queue
        self._registry = registry
        self._inbox = inbox
        self._channel = channel
        self._history = history
        self._regions = Regions(name=region, peers=peers)
        self._locator: NodeCache | Registry = (
            NodeCache(registry, node_cache_s) if node_cache_s > 0 else registry)
        self._consumer = consumer
        self._config = config
        self._clock_ms = clock_ms
        self._take_timeout_s = take_timeout_s
        self._stopping = False
        self._unroutable_logged: set[str] = set()
        # peer regions failing now -> loop time until which their forwards are skipped
        self._failing_regions: dict[str, float] = {}
        # peer region -> forwards it did not take yet (`UNSENT_MAX`)
        self._unsent: dict[str, deque[Message]] = {}
        self.stats = WorkerStats()

    async def run(self) -> None:
        """Take and handle batches until `stop()`; returns within one take timeout of it.

        A batch that fails is logged and not marked done (a shared queue hands it to another
        consumer after its visibility timeout); a failing `take` is logged and retried after
        `take_timeout_s`. The loop carries on either way.
        """
        handled: list[str] = []  # receipts of the batch handled last: the next take marks them
        queue = OutageLog(log)
        while not self._stopping:
            try:
                batch = await self._queue.take(
                    self._consumer, self._config.worker_batch, self._take_timeout_s, handled
                )
            except Unavailable as exc:  # Redis away: once per outage, not once a second
                self.stats.errors += 1
                queue.failed("router worker %s cannot take from the queue (%s); retrying",
                             self._consumer, exc.message)
                await asyncio.sleep(self._take_timeout_s)  # back off; do not spin on a failure
                continue
            except Exception:
                self.stats.errors += 1
                log.exception("router worker %s cannot take from the queue", self._consumer)
                await asyncio.sleep(self._take_timeout_s)
                continue
            queue.recovered("router worker %s takes from the queue again", self._consumer)
            handled = await self._handle_logged(batch) if batch else []
            if not batch and self._unsent:
                await self._retry_unsent()  # a quiet queue: the held forwards still go
        if handled:
            try:
                await self._queue.done(self._consumer, handled)
            except Exception:  # the batch is handled; it may be handed out again, at least once
                log.exception("router worker %s cannot mark its last batch done", self._consumer)

    async def _handle_logged(self, batch: list[Taken]) -> list[str]:
        """The receipts to mark done: the batch's, once handled; none if it failed."""
        try:
            await self._process(batch)
        except Exception:
            self.stats.errors += 1
            log.exception("router worker %s failed a batch of %d", self._consumer, len(batch))
            return []
        return [t.receipt for t in batch]

    def stop(self) -> None:
        """Ask `run()` to return after the batch in hand."""
        self._stopping = True

    async def handle(self, batch: list[Taken]) -> None:
        """Store and deliver one batch (docs/delivery.md, "Routing a batch"), then mark it
        done. (`run` leaves the marking to its next take, which carries the receipts.)"""
        await self._process(batch)
        await self._queue.done(self._consumer, [t.receipt for t in batch])

    async def _process(self, batch: list[Taken]) -> None:
        self.stats.taken += len(batch)
        live = self._drop_expired([t.message for t in batch])
        if live:
            await self._route(live)

    def _drop_expired(self, messages: list[Message]) -> list[Message]:
        now_ms = self._clock_ms()
        live = [m for m in messages if not m.expired(now_ms)]
        if len(live) < len(messages):
            self.stats.expired += len(messages) - len(live)
            for message in messages:
                if message.expired(now_ms):
                    self.stats.expired_by[message.priority] += 1
        return live

    async def _route(self, messages: list[Message]) -> None:
        broadcasts = [m for m in messages if m.target.broadcast]
        if broadcasts:
            await self._keep(broadcasts)  # history first, node lookup second: docs/delivery.md
        active = await self._active_nodes() if broadcasts else []
        targeted = [m for m in messages if not m.target.broadcast and m.target.clients]
        locations = await self._store_and_locate(targeted)
        out = BatchSends()
        for message in messages:
            if message.target.broadcast:
                self._broadcast(message, active, out)
            elif message.target.clients:
                self._targeted(message, locations, out)
        priority_of = {m.id: m.priority for m in messages}
        await asyncio.gather(self._publish(out.per_node, priority_of),
                             *(self._forward(region, forwards)
                               for region, forwards in out.forwards.items()))

    async def _store_and_locate(self, messages: list[Message]) -> dict[str, Location]:
        """Store every targeted message of the batch in its clients' inboxes here (one batched
        call), THEN locate all their clients at once: inbox first, lookup second
        (docs/delivery.md), two round trips per batch rather than per message."""
        if not messages:
            return {}
        await self._inbox.add_many([(m.target.clients, _entry(m)) for m in messages])
        self.stats.stored += sum(len(m.target.clients) for m in messages)
        clients = dict.fromkeys(c for m in messages for c in m.target.clients)
        return await self._locator.locate_many(clients)

    async def _keep(self, broadcasts: list[Message]) -> None:
        """Keep the broadcasts in this region's history, for devices that resume."""
        if self._history is None:
            return
        for m in broadcasts:
            await self._history.add(
                Broadcast(m.id, m.payload, m.expires_at_ms, m.target.device_types))
        self.stats.kept += len(broadcasts)

    async def _active_nodes(self) -> list[NodeInfo]:
        return [n for n in await self._registry.nodes() if n.state is NodeState.ACTIVE]

    def _broadcast(self, message: Message, active: list[NodeInfo], out: BatchSends) -> None:
        """One delivery per active node of this region; forwarded to every peer region."""
        delivery = Delivery(
            message.id, message.payload, broadcast=True, device_types=message.target.device_types
        )
        for node in active:
            region = self._regions.region_of(node)
            if region == self._regions.name:
                out.deliver(node.node_id, delivery)
            elif region is None:
                self.stats.unroutable_nodes += 1
                self._unroutable(node.region)
        if message.forwarded_from is None:
            for peer in self._regions.peers:
                out.forward(peer, message.forward(self._regions.name))

    def _targeted(self, message: Message, locations: dict[str, Location],
                  out: BatchSends) -> None:
        """Queue the message's live deliveries per node here, and its forwards per region."""
        live: dict[str, list[str]] = {}
        forwards: dict[str, list[str]] = {}
        forwarded = message.forwarded_from is not None
        held = 0
        for client_id in message.target.clients:
            location = locations.get(client_id)
            route = self._regions.route(location, forwarded=forwarded)
            if route.live and location is not None:
                live.setdefault(location.registration.node_id, []).append(client_id)
                continue
            held += not route.forward_to
            for region in route.forward_to:
                forwards.setdefault(region, []).append(client_id)
            if route.unroutable is not None:
                self.stats.unroutable_region += 1
                self._unroutable(route.unroutable)
        for node_id, node_clients in live.items():
            out.deliver(node_id, Delivery(message.id, message.payload,
                                          clients=tuple(node_clients)))
        for region, region_clients in forwards.items():
            out.forward(region, message.forward(self._regions.name, tuple(region_clients)))
        self.stats.held += held

    async def _forward(self, region: str, messages: list[Message]) -> None:
        """Hand `messages` (after what the peer did not take before) to a peer region's queue,
        in one call of at most `FORWARD_TIMEOUT_S`; a failure is counted, logged once per outage,
        never raised (the messages are in this region's inboxes), and what was not taken is held
        to send again (`UNSENT_MAX`). A peer that failed is skipped (counted the same) for
        `PEER_RETRY_AFTER_S`, so that a peer that hangs rather than refuses holds up one batch
        per that while, not every batch."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._failing_regions.get(region, 0.0):
            self.stats.region_errors += len(messages)
            self._hold_unsent(region, messages)
            return
        unsent = self._unsent.pop(region, None)
        if unsent:  # the peer is due a try: what it did not take before goes first
            messages = [*self._drop_expired(list(unsent)), *messages]
        if not messages:
            return
        try:
            accepted = len(await asyncio.wait_for(
                self._regions.peers[region].put_many(messages), FORWARD_TIMEOUT_S))
        except Exception as exc:
            self._region_failed(region, exc, len(messages), loop.time() + PEER_RETRY_AFTER_S)
            self._hold_unsent(region, messages)
            return
        self.stats.forwarded[region] += accepted
        await self._handed(region, messages[:accepted])
        if accepted < len(messages):
            self._region_failed(region, Unavailable(f"queue took {accepted} of {len(messages)}"),
                                len(messages) - accepted, loop.time() + PEER_RETRY_AFTER_S)
            self._hold_unsent(region, messages[accepted:])
        else:
            self._region_ok(region)

    async def _handed(self, region: str, messages: list[Message]) -> None:
        """Note in this region's inboxes that these targeted messages were handed to `region`,
        so that `router.handoff` does not send them there again. Best effort: a note that fails
        costs at most a repeat there (counted, not raised: the forward itself succeeded)."""
        items = [(client_id, [m.id]) for m in messages if not m.target.broadcast
                 for client_id in m.target.clients]
        if not items:
            return
        try:
            await self._inbox.handed_many(region, items)
        except Exception:
            self.stats.handed_errors += 1

    def _hold_unsent(self, region: str, messages: list[Message]) -> None:
        unsent = self._unsent.setdefault(region, deque(maxlen=UNSENT_MAX))
        overflow = max(0, len(unsent) + len(messages) - UNSENT_MAX)
        self.stats.unsent_dropped += overflow
        unsent.extend(messages)

    async def _retry_unsent(self) -> None:
        """Send again what peer regions did not take, to those due a try."""
        now = asyncio.get_running_loop().time()
        due = [region for region in self._unsent
               if now >= self._failing_regions.get(region, 0.0)]
        await asyncio.gather(*(self._forward(region, []) for region in due))

    async def _publish(self, per_node: dict[str, list[Delivery]],
                       priority_of: dict[str, Priority]) -> None:
        """One batch per node, concurrently; a node that fails does not hold up the others."""
        node_ids = list(per_node)
        results = await asyncio.gather(
            *(self._channel.publish(n, per_node[n]) for n in node_ids), return_exceptions=True
        )
        for node_id, result in zip(node_ids, results, strict=True):
            if isinstance(result, BaseException):
                self.stats.publish_errors += 1
                log.error("publish to node %s failed: %r", node_id, result)
            else:
                self.stats.delivered += len(per_node[node_id])
                for delivery in per_node[node_id]:
                    self.stats.delivered_by[priority_of[delivery.message_id]] += 1

    def _unroutable(self, region: str) -> None:
        if region not in self._unroutable_logged:
            self._unroutable_logged.add(region)
            log.warning("router in region %r has no peer region %r (--peer-region %s=URL): "
                        "its clients' messages wait in this region's inbox",
                        self._regions.name, region, region)

    def _region_failed(self, region: str, exc: Exception, lost: int,
                       skip_until: float = 0.0) -> None:
        self.stats.region_errors += lost
        if region not in self._failing_regions:
            log.error("peer region %s does not take forwarded messages (%r): they stay in this "
                      "region's inboxes; trying again every %.0f s", region, exc,
                      PEER_RETRY_AFTER_S)
        self._failing_regions[region] = skip_until

    def _region_ok(self, region: str) -> None:
        if self._failing_regions.pop(region, None) is not None:
            log.warning("peer region %s reachable again", region)


def _entry(message: Message) -> InboxEntry:
    return InboxEntry(message.id, message.payload, message.expires_at_ms,
                      message.forwarded_from is not None)
