"""Handoff: what waits in this region's inbox for a device follows it to the region it is in.

A device that moves from region A to region B (a roaming phone whose network vanished, so its
old connection in A is not closed but dies slowly) leaves messages in A's inbox: those A's
routers stored while its registry still placed the device on its old node in A, and delivered
there, to a dead socket. The device, now in B, never reads A's inbox.

So when A's replicator applies B's registration of a client (`registry.replicator`'s
arrivals), and that registration is now A's record of the client (it won: the device is in B,
as far as A knows), `Handoff.arrived` forwards to B's queue what A's inbox holds for the client,
as A's routers forward any message for a client in B (`Message.forwarded_from`), less two kinds
of entry that B has already: those forwarded to A from elsewhere (`InboxEntry.forwarded`: their
origin region keeps its own copy and hands it on itself), and those A's routers forwarded to B
before (noted with `Inbox.handed_many`, as this handoff notes its own). B's routers store them
in B's inbox and deliver them there, live or at the device's next replay.

No message is missed between the two paths: a message stored in A after the handoff's read is
looked up after the registration was applied (a router stores before it looks up), so A's
router finds the device in B and forwards it itself; one stored before is in the read. The
copies stay in A's inbox too, for a device that comes back (it may see them again; devices drop
repeats by id). A client whose registration did not win here (it came back first, or
connected elsewhere again) is left alone: its own newer registration is handled when it
arrives. Arrivals come in batches; one pipelined read covers a batch (an empty inbox costs a
lookup of a key that is not there), and the forwards go in one `put_many` per region.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

from core.ids import id_time_ms
from registry.base import Registration, Registry
from router.base import Inbox, InboxEntry, Message, MessageQueue, Priority, Target

log = logging.getLogger("zuulpush.router")



@dataclass(slots=True)
class HandoffStats:
    """Counters since start."""

    clients: int = 0  # clients whose inbox was handed on (it held something)
    messages: int = 0  # messages forwarded


class Handoff:
    """Forwards this region's inbox for clients that connected in a peer region.

    `registry` is this region's own (it reads what the replicator applied), `inbox` this
    region's, `peers` each peer region's queue, `region` this region's name."""

    def __init__(self, registry: Registry, inbox: Inbox, peers: Mapping[str, MessageQueue],
                 *, region: str) -> None:
        self._registry = registry
        self._inbox = inbox
        self._peers = peers
        self._region = region
        self.stats = HandoffStats()

    async def arrived(self, peer_region: str, registrations: Sequence[Registration]) -> None:
        """`registrations` were made in `peer_region` and applied here. Every client whose
        record here they now are is handed on, wherever this region had it before: one it saw
        go offline may have had messages delivered to its dead connection first. Raises what
        the registry, inbox or queue raise (the replicator then applies the batch again)."""
        queue = self._peers.get(peer_region)
        if queue is None or not registrations:
            return
        current = await self._registry.lookup_many([reg.client_id for reg in registrations])
        moved = [reg.client_id for reg in registrations if current.get(reg.client_id) == reg]
        if not moved:
            return
        pages = await self._inbox.unhanded_many(peer_region, moved)
        forwards = [(client_id, forwarded(entry, client_id, self._region))
                    for client_id, entries in zip(moved, pages, strict=True)
                    for entry in entries if not entry.forwarded]
        if not forwards:
            return
        taken = await queue.put_many([message for _, message in forwards])
        if len(taken) < len(forwards):
            raise RuntimeError(f"region {peer_region}'s queue took {len(taken)} of "
                               f"{len(forwards)} handed-off messages")
        handed: dict[str, list[str]] = {}
        for client_id, message in forwards:
            handed.setdefault(client_id, []).append(message.id)
        await self._inbox.handed_many(peer_region, list(handed.items()))
        self.stats.clients += len(handed)
        self.stats.messages += len(forwards)
        log.info("handed %d message(s) of %d client(s) on to region %s, where they connected",
                 len(forwards), len(handed), peer_region)


def forwarded(entry: InboxEntry, client_id: str, from_region: str) -> Message:
    """`entry` as a message for `client_id` forwarded from `from_region`: the same id, payload
    and expiry, at high priority (it is late already)."""
    shown = orjson.loads(entry.payload)
    ts_ms = id_time_ms(entry.id)
    if ts_ms is None:
        ts_ms = int(shown.get("ts", entry.expires_at_ms))
    topic = shown.get("topic", "")
    ttl_s = max(1, math.ceil((entry.expires_at_ms - ts_ms) / 1000))
    return Message(entry.id, str(topic), entry.payload, ts_ms, Priority.HIGH, ttl_s,
                   Target(clients=(client_id,)), None, from_region)
