"""The router worker: take messages off the queue, store them in inboxes, deliver them to nodes.

Per batch of taken messages:

1. An expired message is dropped and counted: never stored, never delivered.
2. The targeted messages (their `target.clients` already resolved by the API) are FIRST added
   to every target client's inbox in this region, all of the batch in one batched call, THEN all
   their clients are looked up in this region's registry at once, and a `Delivery` is queued for
   each active node holding some of a message's clients. Clients that are offline, or held by a
   node that is draining or dead, get nothing live: the message waits in their inbox.
3. A broadcast is FIRST kept in the broadcast history (when the worker has one), THEN goes to
   every active node as one `Delivery(broadcast=True)`; it is in no inbox. The same ordering
   argument as below holds for a device resuming with a last id: it either is reachable on a
   node the lookup found, or reads the history after registering and finds the broadcast there.
4. Deliveries are published once per node for the whole batch, then the batch is marked done:
   by the worker's next `take`, which carries the receipts (one round trip fewer per batch).

Why inbox-add comes before lookup: the edge registers a connection *before* it reads that client's
inbox. Take a message M and a device connecting concurrently. If the worker's lookup sees the
registration, M is delivered live. If not, the registration happened after the lookup, hence after
M was added to the inbox, so the edge's inbox read (which follows its registration) finds M. Either
way M arrives; sometimes both ways, which at-least-once delivery allows (devices drop repeats by
id). With the opposite order, a device registering between lookup and add would miss M until its
next resume.

Across regions (`peers`, see `router.regions`): the registry this worker reads is replicated, so
the lookup also finds clients connected in other regions, with their node's region. With peer
regions configured:

- a client on a node of a peer region also gets the message in THAT region's inbox (its edge
  replays and acks there), and a live `Delivery` on THAT region's node channel when its node is
  active. The peer copies of a batch are added in one batched call per region, after the lookup
  (which is what names the region) and before that region's publishes, so an ack on the edge
  there finds the entry to remove. Regions are served concurrently: a slow or unreachable peer
  delays only its own deliveries, and a failing peer is counted and logged once per outage, never
  fails the batch (the message is in this region's inbox regardless).
- a client connected nowhere (or on a dead node) gets a copy in every peer region's inbox too,
  since it may reconnect in any region.
- a client on a node of a region with no peer configured stays in this region's inbox only,
  counted (`unroutable_region`) and logged once per region.
- a broadcast is kept in this region's history and each peer's (all before the node lookup),
  then published to every active node on its own region's channel; nodes of unconfigured regions
  are skipped and counted (`unroutable_nodes`).
- acks are regional: a device acks in the region it is connected to; the copies in other regions'
  inboxes stay until they expire or fall off the cap, so a device that moves may see a message
  again (at least once; devices drop repeats by id).

The ordering argument above holds in this region. For a peer region it is weaker by the
registry's replication lag (typically well under a second): a device that connects in region B
just before the message is routed, and whose registration has not reached this region yet, is
looked up here as offline; the copy still goes to B's inbox, but after B's edge read it, so the
device gets it on its next reconnect or inbox pull there, not live.

Without peers (`zuulpush serve`, a one-region fleet) every node is reached on this region's
channel, whatever its `NodeInfo.region`: the behaviour of a fleet without regions.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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
from router.clock import ClockMs, wall_ms
from router.config import RouterConfig
from router.regions import RegionBatch, Regions, RegionSeams

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkerStats:
    """Running totals of one worker: plain counters, which `zuulpush.metrics` copies into
    Prometheus metrics (`expired` and `delivered` also by priority)."""

    taken: int = 0
    expired: int = 0  # messages dropped because their TTL ran out before handling
    stored: int = 0  # inbox entries added here (one per message per target client)
    stored_remote: int = 0  # inbox entries added in peer regions (one per message per client)
    kept: int = 0  # broadcasts added to the broadcast history
    kept_remote: int = 0  # broadcasts added to peer regions' histories (one per region)
    delivered: int = 0  # deliveries handed to nodes (one per message per node)
    held: int = 0  # target clients not reachable live now (offline, or on a non-active node)
    unroutable_region: int = 0  # target clients on nodes of regions with no peer configured
    unroutable_nodes: int = 0  # broadcast deliveries skipped: nodes of unconfigured regions
    publish_errors: int = 0  # node batches the channel failed to take (messages are in inboxes)
    region_errors: int = 0  # peer-region inbox or history calls that failed
    errors: int = 0  # batches that failed as a whole
    expired_by: Counter[Priority] = field(default_factory=Counter)
    delivered_by: Counter[Priority] = field(default_factory=Counter)


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
        peers: Mapping[str, RegionSeams] | None = None,
    ) -> None:
        """`history`, when given, keeps every broadcast for devices that resume; without it a
        broadcast reaches only the devices connected when it is delivered. `inbox`, `channel`
        and `history` are this region's, named `region`; `peers` are other regions' seams by
        name (module docstring). Without peers every node is reached on `channel`."""
        self._queue = queue
        self._registry = registry
        self._inbox = inbox
        self._history = history
        self._regions = Regions(RegionSeams(channel, inbox, history), name=region, peers=peers)
        self._consumer = consumer
        self._config = config
        self._clock_ms = clock_ms
        self._take_timeout_s = take_timeout_s
        self._stopping = False
        self._unroutable_logged: set[str] = set()
        self._failing_regions: set[str] = set()
        self.stats = WorkerStats()

    async def run(self) -> None:
        """Take and handle batches until `stop()`; returns within one take timeout of it.

        A batch that fails is logged and not marked done (a shared queue hands it to another
        consumer after its visibility timeout); a failing `take` is logged and retried after
        `take_timeout_s`. The loop carries on either way.
        """
        handled: list[str] = []  # receipts of the batch handled last: the next take marks them
        while not self._stopping:
            try:
                batch = await self._queue.take(
                    self._consumer, self._config.worker_batch, self._take_timeout_s, handled
                )
            except Exception:
                self.stats.errors += 1
                log.exception("router worker %s cannot take from the queue", self._consumer)
                await asyncio.sleep(self._take_timeout_s)  # back off; do not spin on a failure
                continue
            handled = await self._handle_logged(batch) if batch else []
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
        """Store and deliver one batch as the module docstring says, then mark it done. (`run`
        leaves the marking to its next take, which carries the receipts.)"""
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
            await self._keep(broadcasts)  # histories first, node lookup second: module docstring
        active = await self._active_nodes() if broadcasts else []
        targeted = [m for m in messages if not m.target.broadcast and m.target.clients]
        locations = await self._store_and_locate(targeted)
        out: dict[str, RegionBatch] = {}
        for message in messages:
            if message.target.broadcast:
                self._broadcast(message, active, out)
            elif message.target.clients:
                self._targeted(message, locations, out)
        priority_of = {m.id: m.priority for m in messages}
        await asyncio.gather(*(self._send(region, batch, priority_of)
                               for region, batch in out.items()))

    async def _store_and_locate(self, messages: list[Message]) -> dict[str, Location]:
        """Store every targeted message of the batch in its clients' inboxes here (one batched
        call), THEN locate all their clients at once: inbox first, lookup second (module
        docstring), two round trips per batch rather than per message."""
        if not messages:
            return {}
        await self._inbox.add_many([(m.target.clients, _entry(m)) for m in messages])
        self.stats.stored += sum(len(m.target.clients) for m in messages)
        clients = dict.fromkeys(c for m in messages for c in m.target.clients)
        return await self._registry.locate_many(clients)

    async def _keep(self, broadcasts: list[Message]) -> None:
        """Keep the broadcasts in this region's history (a failure fails the batch), then in
        each peer region's, concurrently (a failure there is counted and logged)."""
        kept = [Broadcast(m.id, m.payload, m.expires_at_ms, m.target.device_types)
                for m in broadcasts]
        if self._history is not None:
            for broadcast in kept:
                await self._history.add(broadcast)
            self.stats.kept += len(kept)
        await asyncio.gather(*(self._keep_in(region, seams.history, kept)
                               for region, seams in self._regions.peers.items()
                               if seams.history is not None))

    async def _keep_in(self, region: str, history: BroadcastLog, kept: list[Broadcast]) -> None:
        try:
            for broadcast in kept:
                await history.add(broadcast)
        except Exception as exc:
            self._region_failed(region, exc)
            return
        self._region_ok(region)
        self.stats.kept_remote += len(kept)

    async def _active_nodes(self) -> list[NodeInfo]:
        return [n for n in await self._registry.nodes() if n.state is NodeState.ACTIVE]

    def _broadcast(self, message: Message, active: list[NodeInfo],
                   out: dict[str, RegionBatch]) -> None:
        """One delivery per active node, on its own region's channel."""
        delivery = Delivery(
            message.id, message.payload, broadcast=True, device_types=message.target.device_types
        )
        for node in active:
            region = self._regions.region_of(node)
            if region is None:
                self.stats.unroutable_nodes += 1
                self._unroutable(node.region)
            else:
                _batch(out, region).deliver(node.node_id, delivery)

    def _targeted(self, message: Message, locations: dict[str, Location],
                  out: dict[str, RegionBatch]) -> None:
        """Queue the message's peer-region inbox copies and its live deliveries per node."""
        stores, live = self._place(message.target.clients, locations)
        entry = _entry(message)
        for region, clients in stores.items():
            _batch(out, region).stored.append((clients, entry))
        for (region, node_id), node_clients in live.items():
            _batch(out, region).deliver(
                node_id, Delivery(message.id, message.payload, clients=node_clients))
        self.stats.held += len(message.target.clients) - sum(map(len, live.values()))

    def _place(self, clients: Iterable[str], locations: dict[str, Location]
               ) -> tuple[dict[str, tuple[str, ...]], dict[tuple[str, str], tuple[str, ...]]]:
        """For one message's clients, in target order: those to store a copy for, by peer
        region, and those reachable live, by (region, node)."""
        stores: dict[str, list[str]] = {}
        live: dict[tuple[str, str], list[str]] = {}
        for client_id in clients:
            location = locations.get(client_id)
            route = self._regions.route(location)
            for region in route.store_in:
                stores.setdefault(region, []).append(client_id)
            if route.via is not None and location is not None:
                node_id = location.registration.node_id
                live.setdefault((route.via, node_id), []).append(client_id)
            elif route.unroutable is not None:
                self.stats.unroutable_region += 1
                self._unroutable(route.unroutable)
        return ({r: tuple(ids) for r, ids in stores.items()},
                {key: tuple(ids) for key, ids in live.items()})

    async def _send(self, region: str, batch: RegionBatch,
                    priority_of: dict[str, Priority]) -> None:
        """A region's inbox copies first (so an ack on its edge finds them), then its nodes."""
        seams = self._regions.seams(region)
        if batch.stored:
            await self._store_in(region, seams.inbox, batch.stored)
        await self._publish(seams.channel, batch.per_node, priority_of)

    async def _store_in(self, region: str, inbox: Inbox,
                        items: list[tuple[tuple[str, ...], InboxEntry]]) -> None:
        try:
            await inbox.add_many(items)
        except Exception as exc:
            self._region_failed(region, exc)  # the message is in this region's inbox anyway
            return
        self._region_ok(region)
        self.stats.stored_remote += sum(len(clients) for clients, _ in items)

    async def _publish(self, channel: NodeChannel, per_node: dict[str, list[Delivery]],
                       priority_of: dict[str, Priority]) -> None:
        """One batch per node, concurrently; a node that fails does not hold up the others."""
        node_ids = list(per_node)
        results = await asyncio.gather(
            *(channel.publish(n, per_node[n]) for n in node_ids), return_exceptions=True
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

    def _region_failed(self, region: str, exc: Exception) -> None:
        self.stats.region_errors += 1
        if region not in self._failing_regions:
            self._failing_regions.add(region)
            log.error("peer region %s unreachable (%r): its copies of messages and broadcasts "
                      "are not stored there (they are in this region's); retrying with each "
                      "batch", region, exc)

    def _region_ok(self, region: str) -> None:
        if region in self._failing_regions:
            self._failing_regions.discard(region)
            log.warning("peer region %s reachable again", region)


def _entry(message: Message) -> InboxEntry:
    return InboxEntry(message.id, message.payload, message.expires_at_ms)


def _batch(out: dict[str, RegionBatch], region: str) -> RegionBatch:
    batch = out.get(region)
    if batch is None:
        batch = out[region] = RegionBatch()
    return batch
