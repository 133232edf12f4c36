"""Which regions a router worker hands a message on to.

A fleet may span regions, each with its own Redis: its own queue, node channels, inboxes and
broadcast history, and its own routers. The registry is replicated, so a router in region A sees
clients connected, and nodes running, in region B (`NodeInfo.region`), but with the replication
lag: what it sees of B may be a moment old. What it sees of its own region is current (A's edges
register in A's Redis). So a router never stores or delivers in another region itself: it
FORWARDS the message to that region's queue, marked with where it came from
(`Message.forwarded_from`), and B's routers store it in B's inboxes and locate its clients in B's
registry, which is current for B's connections. The inbox-before-lookup argument
(docs/delivery.md, "Routing a batch") then holds in every region, not just the one the message
was sent in.

`Regions` holds this region's name and each configured peer region's queue, and answers, for a
client's `Location`, a `Route`:

- a client on a node of THIS region (or of any region, when no peer is configured: one region,
  the behaviour of a fleet without regions): delivered live on this region's node channel when
  the node is active; otherwise it waits in this region's inbox.
- a client on a node of a configured PEER region: forwarded to that region.
- a client on a node of a region with no peer configured: not reachable from here; the message
  waits in this region's inbox (the worker counts it and logs the region once).
- a client not connected anywhere, or registered on a dead node: nobody knows where it will
  reconnect, so the message is forwarded to EVERY peer region, to be stored and replayed wherever
  it comes back.

A forwarded message is routed in its region only: its clients there are delivered live or wait
in that region's inbox, and a client its registry places in yet another region is not forwarded
again (so a message crosses at most one region boundary, and never loops). With two regions this
loses nothing: the origin region stores it before its lookup, the other stores it before its own.
With three or more, a device that moves from B to C within the replication lag after the origin
saw it in B finds the message in B's inbox (and the origin's), not in C's: it gets it when it
connects to B again or pulls B's inbox.

Nothing here does I/O: the worker calls the queues.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from registry.base import Location, NodeInfo
from router.base import MessageQueue


@dataclass(frozen=True, slots=True)
class Route:
    """Where one target client's copy of a message goes.

    `live`: reachable now on this region's node channel. `forward_to`: peer regions the message
    is forwarded to for this client. `unroutable`: the client's region, when it is one with no
    peer configured here.
    """

    live: bool = False
    forward_to: tuple[str, ...] = ()
    unroutable: str | None = None


LIVE = Route(live=True)
HELD = Route()


class Regions:
    """This region's name and each configured peer region's queue, by region name."""

    def __init__(self, *, name: str = "local",
                 peers: Mapping[str, MessageQueue] | None = None) -> None:
        """`name` is this region's (`RegistryConfig.region`); it must not be a peer's."""
        peers = dict(peers or {})
        if name in peers:
            raise ValueError(f"region {name!r} is this router's own region, not a peer")
        self.name = name
        self.peers = peers
        # The routes of a batch's clients, made once: route() runs for every target client.
        self._offline = Route(forward_to=tuple(peers))
        self._to_peer = {peer: Route(forward_to=(peer,)) for peer in peers}

    def region_of(self, node: NodeInfo) -> str | None:
        """The region whose routers reach `node`: this one for its own nodes, and for every node
        when no peer is configured; a peer's; None for an unconfigured region."""
        if not self.peers or node.region == self.name:
            return self.name
        return node.region if node.region in self.peers else None

    def route(self, location: Location | None, *, forwarded: bool = False) -> Route:
        """Where a client at `location` (None: not connected anywhere) gets its copy; for a
        `forwarded` message, never another region."""
        if location is None or location.node is None:  # offline, or its node is dead
            return HELD if forwarded else self._offline
        region = self.region_of(location.node)
        if region == self.name:
            return LIVE if location.reachable else HELD
        if region is None:
            return Route(unroutable=location.node.region)
        return HELD if forwarded else self._to_peer[region]
