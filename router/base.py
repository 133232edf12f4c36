"""The router's seams and the values that cross them.

A `Message` is accepted by the push-send API, put on a `MessageQueue`, taken by a router worker,
kept in each target client's `Inbox` until acked, and handed as a `Delivery` over the `NodeChannel`
to every edge node that holds one of its clients. Each seam has an in-memory implementation
(`router.stores.memory`) and, from the Redis issue on, a Redis one; one contract suite tests both.

A broadcast reaches nodes, not inboxes: the worker keeps it in the capped, TTL-bound
`BroadcastLog`, from which a device that resumes after an id gets the broadcasts it missed.

Delivery is at least once: a device may see a message twice (after a reconnect) and drops the
repeat by `id`. Message ids are time-ordered (`core.ids`), so "after id X" is a string compare.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

import orjson


class Priority(IntEnum):
    """Queue priority; a lower value is served first."""

    HIGH = 0
    NORMAL = 1
    LOW = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, label: str) -> Priority:
        """`"high"`, `"normal"` or `"low"`; ValueError otherwise."""
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(label) from None


@dataclass(frozen=True, slots=True)
class Target:
    """Who a message is for: named clients, the devices of named users, or everyone connected,
    narrowed to `device_types` when any are given."""

    clients: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    device_types: frozenset[str] = frozenset()
    broadcast: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    """An accepted push. `payload` is the JSON object devices receive, encoded once:
    `{"id", "topic", "ts", "data"}` with `ts` in milliseconds since the epoch.

    `forwarded_from`: the region whose router handed this message on to this region's queue
    (`router.regions`), None for a message accepted by this region's API."""

    id: str
    topic: str
    payload: bytes
    ts_ms: int
    priority: Priority
    ttl_s: int
    target: Target
    dedup_key: str | None = None
    forwarded_from: str | None = None

    @classmethod
    def create(
        cls,
        *,
        id: str,
        topic: str,
        data: Any,
        ts_ms: int,
        priority: Priority,
        ttl_s: int,
        target: Target,
        dedup_key: str | None = None,
    ) -> Message:
        payload = orjson.dumps({"id": id, "topic": topic, "ts": ts_ms, "data": data})
        return cls(id, topic, payload, ts_ms, priority, ttl_s, target, dedup_key)

    @property
    def expires_at_ms(self) -> int:
        return self.ts_ms + self.ttl_s * 1000

    def expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_at_ms

    def forward(self, from_region: str, clients: tuple[str, ...] = ()) -> Message:
        """This message as this region's router hands it to a peer region's queue: for
        `clients` (a targeted message) or everyone (a broadcast), same id, payload, priority
        and expiry; no dedup key (it was checked where it was sent)."""
        target = self.target
        if not target.broadcast:
            target = Target(clients=clients, device_types=target.device_types)
        return Message(self.id, self.topic, self.payload, self.ts_ms, self.priority, self.ttl_s,
                       target, None, from_region)


@dataclass(frozen=True, slots=True)
class Taken:
    """A message taken from the queue; hand `receipt` to `MessageQueue.done` once handled."""

    message: Message
    receipt: str


@dataclass(frozen=True, slots=True)
class PutResult:
    """What `MessageQueue.put` did with one message: enqueued it (`id` is the message's own), or
    dropped it as a `duplicate` of a dedup key put within the window (`id` is then the ORIGINAL
    message's: the one enqueued under that key, which is what gets delivered). Truthy when
    enqueued, as the `bool` that `put` returned before."""

    id: str
    duplicate: bool = False

    def __bool__(self) -> bool:
        return not self.duplicate


@dataclass(frozen=True, slots=True)
class Delivery:
    """What an edge node receives: one message for some of its clients, or for all of them
    (`broadcast`, narrowed to `device_types` when any are given)."""

    message_id: str
    payload: bytes
    clients: tuple[str, ...] = ()
    broadcast: bool = False
    device_types: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A message waiting in a client's inbox until acked or `expires_at_ms` (wall clock).
    `forwarded`: stored for a message another region's router handed on (a copy may wait in
    that region's inbox too; `Inbox.resume_many`)."""

    id: str
    payload: bytes
    expires_at_ms: int
    forwarded: bool = False


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A broadcast kept in the history until `expires_at_ms` (wall clock), for devices of
    `device_types` (every device when empty)."""

    id: str
    payload: bytes
    expires_at_ms: int
    device_types: frozenset[str] = frozenset()

    def reaches(self, device_type: str) -> bool:
        return not self.device_types or device_type in self.device_types

    def entry(self) -> InboxEntry:
        """The broadcast as a device's replay carries it."""
        return InboxEntry(self.id, self.payload, self.expires_at_ms)


def merge_replay(
    inbox: list[InboxEntry], broadcasts: list[Broadcast], device_type: str
) -> list[InboxEntry]:
    """What a resuming device is replayed: its inbox entries and the broadcasts that reach its
    `device_type`, in id order, each id once (an inbox entry wins over a broadcast of its id)."""
    merged = {entry.id: entry for entry in inbox}
    for broadcast in broadcasts:
        if broadcast.reaches(device_type) and broadcast.id not in merged:
            merged[broadcast.id] = broadcast.entry()
    return sorted(merged.values(), key=lambda entry: entry.id)


class MessageQueue(Protocol):
    """Priority queues of accepted messages, shared by all router workers."""

    async def put(self, message: Message) -> PutResult:
        """Enqueue; `PutResult(message.id)`. If `message.dedup_key` was already put within the
        dedup window, enqueues nothing and returns `PutResult(original_id, duplicate=True)`:
        the id of the message enqueued under that key (the window runs from that put), the same
        for every repeat, whichever process put either. Messages of one priority are taken in
        the order they were put. Raises `Unavailable` when the queue is full or unreachable."""
        ...

    async def put_many(self, messages: Sequence[Message]) -> list[PutResult]:
        """`put` each message in order, in one step where the store allows: one result per
        message (a repeat of a key put earlier in the same call names that earlier message).
        When the queue fills up part way (or, for a batch taking several round trips, becomes
        unreachable), the result is shorter: the messages past it were not enqueued. Raises
        `Unavailable` when it takes none."""
        ...

    async def take(self, consumer: str, max_n: int, timeout_s: float,
                   done: Sequence[str] = ()) -> list[Taken]:
        """Up to `max_n` messages, higher priorities first but weighted so that lower ones never
        starve. Waits up to `timeout_s` for the first one; returns [] on timeout. A message taken
        and not marked `done` is handed to another consumer after the visibility timeout (in
        memory, where a consumer cannot die alone, it is simply considered handled).

        `done`: receipts of the batch handled last, marked done first, in the same round trip
        where the store allows (a consumer's loop saves one call per batch). If `take` raises,
        they may or may not be done: pass them again (`done` is idempotent)."""
        ...

    async def done(self, consumer: str, receipts: Sequence[str]) -> None:
        """Mark taken messages handled. Idempotent."""
        ...

    async def depth(self) -> dict[Priority, int]:
        """Messages waiting per priority (not counting taken ones)."""
        ...

    async def lag(self) -> dict[Priority, float]:
        """Per priority, how long the oldest message waiting (not taken) has waited since it
        was put, in seconds; 0.0 where none waits. For monitoring: one cheap call."""
        ...

    async def close(self) -> None:
        """Release resources. Idempotent."""
        ...


class NodeChannel(Protocol):
    """How router workers reach the edge node that holds a connection."""

    async def publish(self, node_id: str, deliveries: Sequence[Delivery]) -> None:
        """Hand a batch to `node_id`. Per node, batches arrive in the order published. A node
        that is not receiving may lose deliveries (they are in the inbox)."""
        ...

    async def receive(self, node_id: str, max_n: int, timeout_s: float) -> list[Delivery]:
        """The node's next deliveries, in order; waits up to `timeout_s`, [] on timeout."""
        ...

    async def close(self) -> None:
        """Release resources. Idempotent."""
        ...


class Inbox(Protocol):
    """Per-client store of messages not yet acknowledged, capped and TTL-bound.

    What a device has been given. An edge that writes an entry to a device's connection records
    it, once the device's TCP stack has acknowledged the bytes, as *given* with a *mark*: the
    highest id written on that connection up to and including the entry, counting from the
    connection's resume point (`zuulpush.edge.given`). A device that resumes after `L` (the id
    of the last message it processed) has every entry given with a mark below `L`: each was
    written, on the connection that gave it, before anything of id `L` or more (the argument is
    in docs/delivery.md). Entries never given, or given with a mark of `L` or more, are kept
    whatever their id, so a message that reached the inbox out of id order (priorities, a router
    killed with a batch taken, clocks) is never removed unreceived; a device may see it twice.
    """

    async def add(self, client_ids: Iterable[str], entry: InboxEntry) -> None:
        """Store `entry` for each client. Past the per-client cap the oldest entries are dropped.
        Adding an id already present is a no-op (its mark stays)."""
        ...

    async def add_many(self, items: Sequence[tuple[Sequence[str], InboxEntry]]) -> None:
        """`add(client_ids, entry)` for each item, in order, as one batched call (on Redis one
        pipeline): what a router worker stores for a whole batch of messages."""
        ...

    async def after(self, client_id: str, last_id: str | None, limit: int) -> list[InboxEntry]:
        """Up to `limit` unexpired entries with id greater than `last_id` (all when None),
        oldest first: a page cursor, read only."""
        ...

    async def pull(self, client_id: str, last_id: str | None, limit: int) -> list[InboxEntry]:
        """`after`, for a device pulling its inbox over HTTP: each entry returned is also
        marked given with its own id (a page is in id order), so that a later `through` removes
        what the device read."""
        ...

    async def resume_many(self, resumes: Sequence[tuple[str, str | None]],
                          limit: int) -> list[list[InboxEntry]]:
        """For each `(client_id, resume_id)`, in one round trip where the store allows: remove
        `resume_id`'s entry and every entry given with a mark below `resume_id` (nothing when it
        is None), then answer the first `limit` unexpired entries left, oldest first, whatever
        their ids: what a connecting device is replayed (page on with `after`).

        The inbox of one region in a fleet of several (made `peered`), where each region keeps
        its own copies and marks, removes entries other than `resume_id`'s own only when that
        entry is here, marked given, and not `forwarded`: only then did the device have it from
        a connection of this region, which is what the marks here speak of (a device back from
        another region resumes from what it got there)."""
        ...

    async def through(self, client_id: str, last_id: str) -> int:
        """Remove what `resume_many` removes for `last_id`; returns how many entries."""
        ...

    async def given_many(self, items: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> None:
        """Record, per `(client_id, [(entry_id, mark), ...])`, that these entries were given
        with these marks. A mark only rises (the highest recorded stands); entries not present
        (acked, expired, never stored: a broadcast) are skipped. Idempotent."""
        ...

    async def handed_many(self, region: str, items: Sequence[tuple[str, Sequence[str]]]) -> None:
        """Record, per `(client_id, ids)`, that these entries were forwarded to peer `region`
        (its routers store and deliver them there); entries not present are skipped."""
        ...

    async def unhanded_many(self, region: str,
                            client_ids: Sequence[str]) -> list[list[InboxEntry]]:
        """Per client, in order: every unexpired entry not yet handed to `region`, oldest first
        (what `router.handoff` sends there when the client turns up there)."""
        ...

    async def ack(self, client_id: str, ids: Sequence[str]) -> int:
        """Remove these entries; returns how many were present. Idempotent."""
        ...

    async def ack_many(self, acks: Sequence[tuple[str, Sequence[str]]]) -> int:
        """`ack` for many clients at once, `(client_id, ids)` each (one round trip where the
        store allows); returns how many entries were present in all."""
        ...

    async def close(self) -> None:
        """Release resources. Idempotent."""
        ...


class BroadcastLog(Protocol):
    """The recent broadcasts, one history for the whole fleet, capped and TTL-bound, that devices
    resuming after an id are replayed from."""

    async def add(self, broadcast: Broadcast) -> None:
        """Keep `broadcast` until its expiry. Past the cap the oldest are dropped. Adding an id
        already present is a no-op; an already expired broadcast is not kept."""
        ...

    async def after(self, last_id: str, limit: int) -> list[Broadcast]:
        """Up to `limit` unexpired broadcasts with id greater than `last_id`, oldest first, with
        their payloads and device types exactly as added."""
        ...

    async def close(self) -> None:
        """Release resources. Idempotent."""
        ...
