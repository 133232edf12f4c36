"""`EdgeApp` (`zuulpush edge`): one edge node of a fleet, registering its connections in the
registry on Redis (one region, or replicated across regions), reading its deliveries from its
node channel and its clients' inboxes on the same Redis (the local region's); and the banner of
`zuulpush edge --workers N`, whose workers are each an `EdgeApp` (`describe_workers`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.tokens import AuthConfig, TokenVerifier
from registry.base import Registration
from registry.config import RegistryConfig
from registry.factory import RegistryHandle, open_registry
from router.base import BroadcastLog, Inbox, NodeChannel
from router.config import RouterConfig
from router.handoff import Handoff
from router.stores.memory import MemoryBroadcastLog, MemoryInbox, MemoryNodeChannel
from zuulpush import __version__
from zuulpush.app.sites import schemes
from zuulpush.binding import listening
from zuulpush.config import Components, FleetConfig
from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.server import EdgeServer
from zuulpush.metrics import Exporter
from zuulpush.redis_seams import redis_channel, redis_history, redis_inbox, redis_queue
from zuulpush.timed_registry import TimedRegistry

if TYPE_CHECKING:
    import ssl

    from zuulpush.supervisor import Worker


@dataclass(frozen=True, slots=True)
class EdgeAppConfig(Components):
    edge: EdgeConfig
    auth: AuthConfig
    router: RouterConfig
    registry: RegistryConfig
    fleet: FleetConfig = dataclasses.field(default_factory=FleetConfig)


class EdgeApp:
    """One edge node with the configured registry; with `redis_url`, its inbox and node channel
    are on that Redis too (else this process's memory). `await start()`, then `await stop()`."""

    def __init__(self, config: EdgeAppConfig) -> None:
        self.config = config
        url = config.registry.redis_url
        peer_urls = config.registry.peers() if url else {}
        self.inbox: Inbox
        self.channel: NodeChannel
        self.history: BroadcastLog
        if url:
            self.inbox = redis_inbox(url, config.router, config.fleet, peered=bool(peer_urls))
            self.channel = redis_channel(url, config.fleet)
            self.history = redis_history(url, config.router, config.fleet)
        else:
            self.inbox = MemoryInbox(config.router.inbox_max_per_client)
            self.channel = MemoryNodeChannel(config.router.node_channel_max_pending)
            self.history = MemoryBroadcastLog(config.router.broadcast_history_max)
        # With peer regions, this process's replicators hand what waits here for a client that
        # connected in a peer region on to that region's queue (`router.handoff`).
        self.peer_queues = {name: redis_queue(peer_url, config.router, config.fleet)
                            for name, peer_url in peer_urls.items()}
        self.handoff: Handoff | None = None

        async def arrivals(region: str, registrations: Sequence[Registration]) -> None:
            assert self.handoff is not None
            await self.handoff.arrived(region, registrations)

        self.handle: RegistryHandle = open_registry(
            config.registry, on_arrivals=arrivals if peer_urls else None)
        if peer_urls:
            self.handoff = Handoff(self.handle.registry, self.inbox, self.peer_queues,
                                   region=config.registry.region)
        self.exporter = Exporter()
        self.edge = EdgeServer(config.edge, verifier=TokenVerifier(config.auth),
                               registry=TimedRegistry(self.handle.registry,
                                                      self.exporter.metrics),
                               inbox=self.inbox, channel=self.channel, history=self.history,
                               admin_key=config.auth.admin_key)
        self.exporter.watch_edge(self.edge)

    @property
    def node_id(self) -> str:
        """The edge node's id."""
        return self.edge.node_id

    async def start(self) -> None:
        await self.handle.start()
        with listening("the edge (--port)", self.config.edge.host, self.config.edge.port):
            await self.edge.start()  # (its one OSError: its registry's outages are Unavailable)
        await self.exporter.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Drain the node (go-aways, unregister), then close the registry, channel and inbox."""
        await self.edge.shutdown(grace_s)
        await self.exporter.stop()
        await self.handle.close()
        for seam in (self.channel, self.inbox, self.history):
            await seam.close()
        for queue in self.peer_queues.values():
            await queue.close()

    def describe(self) -> str:
        """The banner `zuulpush edge` prints once this node serves: its id, region and peer
        regions, its device URLs and the `ready:` line."""
        config, edge = self.config, self.edge
        http, ws = schemes(edge.tls)
        address = f"{config.edge.host}:{edge.port}"
        return "\n".join([
            f"zuulpush {__version__} edge node {edge.node_id} (region {config.registry.region}, "
            f"peer regions: {_peers(config)})",
            f"  edge: {ws}://{address}/ws   sse: {http}://{address}/sse",
            f"  ready: edge={http}://{address} node={edge.node_id}",
        ])


def describe_workers(config: EdgeAppConfig, base: str, tls: ssl.SSLContext | None,
                     started: list[Worker], port: int) -> str:
    """The banner `zuulpush edge --workers N` prints once its `started` workers all serve on
    `port` (`zuulpush.supervisor`): the nodes `base`-1 .. `base`-N, each worker's pid and the
    `ready:` line."""
    http, ws = schemes(tls)
    address = f"{config.edge.host}:{port}"
    return "\n".join([
        f"zuulpush {__version__} edge: {len(started)} worker processes on one port, nodes "
        f"{started[0].node_id} .. {started[-1].node_id} (region {config.registry.region}, "
        f"peer regions: {_peers(config)})",
        f"  edge: {ws}://{address}/ws   sse: {http}://{address}/sse",
        *(f"  worker: node={w.node_id} pid={w.pid}" for w in started),
        f"  ready: edge={http}://{address} node={base} workers={len(started)}",
    ])


def _peers(config: EdgeAppConfig) -> str:
    return ", ".join(sorted(config.registry.peers())) or "none"
