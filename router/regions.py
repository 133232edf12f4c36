"""Where a router worker stores and publishes, by region.

A fleet may span regions, each with its own Redis: its own node channels, inboxes and broadcast
history. The registry is replicated, so a router in region A sees clients connected, and nodes
running, in region B (`NodeInfo.region`); this module tells the worker which region's seams reach
them. `Regions` holds this region's `RegionSeams` and those of each configured peer region, and
answers, for a client's `Location`, a `Route`:

- a client on a node of THIS region (or of any region, when no peer is configured: one region,
  the behaviour of a fleet without regions): nothing is stored elsewhere; delivered live on this
  region's node channel when the node is active.
- a client on a node of a configured PEER region: a copy goes to that region's inbox too (its
  edge replays and acks there); delivered live on THAT region's node channel when the node is
  active.
- a client on a node of a region with no peer configured: not reachable from here; the message
  waits in this region's inbox (the worker counts it and logs the region once).
- a client not connected anywhere, or registered on a dead node: nobody knows where it will
  reconnect, so a copy goes to EVERY peer region's inbox, to be replayed wherever it comes back.

Acks are regional: a device acks in the region it is connected to, which removes the entry from
that region's inbox only. The copies in the other regions' inboxes (this region's always, as the
worker stores there first) are not removed: they expire with the message's TTL or fall off the
per-client cap. A device that later connects in another region may be replayed a message it
already acked; delivery is at least once, and devices drop repeats by id (a resume with a last
id removes everything up to it there first, so a device that keeps its last id sees few).

Nothing here does I/O: the worker calls the seams.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from registry.base import Location, NodeInfo
from router.base import BroadcastLog, Delivery, Inbox, InboxEntry, NodeChannel


@dataclass(frozen=True, slots=True)
class RegionSeams:
    """One region's router seams: its node channel, its inboxes and its broadcast history (None:
    broadcasts are not kept for resuming devices)."""

    channel: NodeChannel
    inbox: Inbox
    history: BroadcastLog | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """Where one target client's copy of a message goes.

    `store_in`: peer regions whose inbox also gets the message (this region's always has it).
    `via`: the region whose node channel reaches the client live, None when it is not reachable
    now (offline, or its node draining or dead). `unroutable`: the client's region, when it is
    one with no seams configured here.
    """

    store_in: tuple[str, ...] = ()
    via: str | None = None
    unroutable: str | None = None


class Regions:
    """This region's seams and each configured peer region's, by region name."""

    def __init__(self, local: RegionSeams, *, name: str = "local",
                 peers: Mapping[str, RegionSeams] | None = None) -> None:
        """`name` is this region's (`RegistryConfig.region`); it must not be a peer's."""
        peers = dict(peers or {})
        if name in peers:
            raise ValueError(f"region {name!r} is this router's own region, not a peer")
        self.name = name
        self.local = local
        self.peers = peers
        # The routes of a batch's clients, made once: route() runs for every target client.
        self._offline = Route(store_in=tuple(peers))
        self._routes = {(name, False): Route(), (name, True): Route(via=name)}
        for peer in peers:
            self._routes[peer, False] = Route(store_in=(peer,))
            self._routes[peer, True] = Route(store_in=(peer,), via=peer)

    def seams(self, region: str) -> RegionSeams:
        """The seams of `region` (this one's or a peer's); KeyError for an unknown one."""
        return self.local if region == self.name else self.peers[region]

    def region_of(self, node: NodeInfo) -> str | None:
        """The region whose node channel reaches `node`: this one for its own nodes, and for
        every node when no peer is configured; a peer's; None for an unconfigured region."""
        if not self.peers or node.region == self.name:
            return self.name
        return node.region if node.region in self.peers else None

    def route(self, location: Location | None) -> Route:
        """Where a client at `location` (None: not connected anywhere) gets its copy."""
        if location is None or location.node is None:
            return self._offline  # offline, or its node is dead: it may come back anywhere
        region = self.region_of(location.node)
        if region is None:
            return Route(unroutable=location.node.region)
        return self._routes[region, location.reachable]


@dataclass(slots=True)
class RegionBatch:
    """What one taken batch sends to one region: inbox entries to add there (a peer region's
    copies; this region's are stored before the lookup), then deliveries per node."""

    stored: list[tuple[tuple[str, ...], InboxEntry]] = field(default_factory=list)
    per_node: dict[str, list[Delivery]] = field(default_factory=dict)

    def deliver(self, node_id: str, delivery: Delivery) -> None:
        self.per_node.setdefault(node_id, []).append(delivery)
