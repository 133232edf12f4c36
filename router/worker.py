"""The router worker: take messages off the queue, store them in inboxes, deliver them to nodes.

Per batch of taken messages:

1. An expired message is dropped and counted: never stored, never delivered.
2. The targeted messages (their `target.clients` already resolved by the API) are FIRST added
   to every target client's inbox, all of the batch in one batched call, THEN all their clients
   are looked up in the registry at once, and a `Delivery` is queued for each active node holding
   some of a message's clients. Clients that are offline, or held by a node
   that is draining or dead, get nothing live: the message waits in their inbox.
3. A broadcast is FIRST kept in the broadcast history (when the worker has one), THEN goes to
   every active node as one `Delivery(broadcast=True)`; it is in no inbox. The same ordering
   argument as below holds for a device resuming with a last id: it either is reachable on a
   node the lookup found, or reads the history after registering and finds the broadcast there.
4. Deliveries are published once per node for the whole batch, then the batch is marked done.

Why inbox-add comes before lookup: the edge registers a connection *before* it reads that client's
inbox. Take a message M and a device connecting concurrently. If the worker's lookup sees the
registration, M is delivered live. If not, the registration happened after the lookup, hence after
M was added to the inbox, so the edge's inbox read (which follows its registration) finds M. Either
way M arrives; sometimes both ways, which at-least-once delivery allows (devices drop repeats by
id). With the opposite order, a device registering between lookup and add would miss M until its
next resume.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from registry.base import Location, NodeState, Registry
from router.base import (
    Broadcast,
    BroadcastLog,
    Delivery,
    Inbox,
    InboxEntry,
    Message,
    MessageQueue,
    NodeChannel,
    Taken,
)
from router.clock import ClockMs, wall_ms
from router.config import RouterConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkerStats:
    """Running totals of one worker (plain counters until metrics arrive)."""

    taken: int = 0
    expired: int = 0  # messages dropped because their TTL ran out before handling
    stored: int = 0  # inbox entries added (one per message per target client)
    kept: int = 0  # broadcasts added to the broadcast history
    delivered: int = 0  # deliveries handed to nodes (one per message per node)
    held: int = 0  # target clients not reachable live now (offline, or on a non-active node)
    publish_errors: int = 0  # node batches the channel failed to take (messages are in inboxes)
    errors: int = 0  # batches that failed as a whole


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
    ) -> None:
        """`history`, when given, keeps every broadcast for devices that resume; without it a
        broadcast reaches only the devices connected when it is delivered."""
        self._queue = queue
        self._registry = registry
        self._inbox = inbox
        self._channel = channel
        self._history = history
        self._consumer = consumer
        self._config = config
        self._clock_ms = clock_ms
        self._take_timeout_s = take_timeout_s
        self._stopping = False
        self.stats = WorkerStats()

    async def run(self) -> None:
        """Take and handle batches until `stop()`; returns within one take timeout of it.

        A batch that fails is logged and not marked done (a shared queue hands it to another
        consumer after its visibility timeout); a failing `take` is logged and retried after
        `take_timeout_s`. The loop carries on either way.
        """
        while not self._stopping:
            try:
                batch = await self._queue.take(
                    self._consumer, self._config.worker_batch, self._take_timeout_s
                )
            except Exception:
                self.stats.errors += 1
                log.exception("router worker %s cannot take from the queue", self._consumer)
                await asyncio.sleep(self._take_timeout_s)  # back off; do not spin on a failure
                continue
            if batch:
                await self._handle_logged(batch)

    async def _handle_logged(self, batch: list[Taken]) -> None:
        try:
            await self.handle(batch)
        except Exception:
            self.stats.errors += 1
            log.exception("router worker %s failed a batch of %d", self._consumer, len(batch))

    def stop(self) -> None:
        """Ask `run()` to return after the batch in hand."""
        self._stopping = True

    async def handle(self, batch: list[Taken]) -> None:
        """Store and deliver one batch as the module docstring says, then mark it done."""
        self.stats.taken += len(batch)
        live = self._drop_expired([t.message for t in batch])
        if live:
            await self._route(live)
        await self._queue.done(self._consumer, [t.receipt for t in batch])

    def _drop_expired(self, messages: list[Message]) -> list[Message]:
        now_ms = self._clock_ms()
        live = [m for m in messages if not m.expired(now_ms)]
        self.stats.expired += len(messages) - len(live)
        return live

    async def _route(self, messages: list[Message]) -> None:
        per_node: dict[str, list[Delivery]] = {}
        broadcasts = [m for m in messages if m.target.broadcast]
        if broadcasts:
            await self._keep(broadcasts)  # history first, node lookup second: module docstring
        active = await self._active_nodes() if broadcasts else frozenset()
        targeted = [m for m in messages if not m.target.broadcast and m.target.clients]
        locations = await self._store_and_locate(targeted)
        for message in messages:
            if message.target.broadcast:
                self._broadcast(message, active, per_node)
            elif message.target.clients:
                self._targeted(message, locations, per_node)
        await self._publish(per_node)

    async def _store_and_locate(self, messages: list[Message]) -> dict[str, Location]:
        """Store every targeted message of the batch in its clients' inboxes (one batched call),
        THEN locate all their clients at once: inbox first, lookup second (module docstring),
        two round trips per batch rather than per message."""
        if not messages:
            return {}
        await self._inbox.add_many([
            (m.target.clients, InboxEntry(m.id, m.payload, m.expires_at_ms)) for m in messages])
        self.stats.stored += sum(len(m.target.clients) for m in messages)
        clients = dict.fromkeys(c for m in messages for c in m.target.clients)
        return await self._registry.locate_many(clients)

    async def _keep(self, broadcasts: list[Message]) -> None:
        if self._history is None:
            return
        for m in broadcasts:
            await self._history.add(
                Broadcast(m.id, m.payload, m.expires_at_ms, m.target.device_types)
            )
        self.stats.kept += len(broadcasts)

    async def _active_nodes(self) -> frozenset[str]:
        nodes = await self._registry.nodes()
        return frozenset(n.node_id for n in nodes if n.state is NodeState.ACTIVE)

    def _broadcast(
        self, message: Message, active: frozenset[str], per_node: dict[str, list[Delivery]]
    ) -> None:
        delivery = Delivery(
            message.id, message.payload, broadcast=True, device_types=message.target.device_types
        )
        for node_id in active:
            per_node.setdefault(node_id, []).append(delivery)

    def _targeted(self, message: Message, locations: dict[str, Location],
                  per_node: dict[str, list[Delivery]]) -> None:
        clients = message.target.clients
        by_node = _group_by_node(clients, locations)
        reached = 0
        for node_id, node_clients in by_node.items():
            per_node.setdefault(node_id, []).append(
                Delivery(message.id, message.payload, clients=node_clients)
            )
            reached += len(node_clients)
        self.stats.held += len(clients) - reached

    async def _publish(self, per_node: dict[str, list[Delivery]]) -> None:
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


def _group_by_node(
    clients: Iterable[str], locations: dict[str, Location]
) -> dict[str, tuple[str, ...]]:
    """Clients reachable live (on an active node), by that node, in target order."""
    grouped: dict[str, list[str]] = {}
    for client_id in clients:
        location = locations.get(client_id)
        if location is not None and location.reachable:
            grouped.setdefault(location.registration.node_id, []).append(client_id)
    return {node_id: tuple(ids) for node_id, ids in grouped.items()}
