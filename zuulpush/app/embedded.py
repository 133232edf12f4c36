"""`EmbeddedApp` (`zuulpush serve`): the edge, the push-send API and a router worker in one
process, on one event loop, with the in-memory registry, queue, node channel and inbox: the
same code paths, behind the same seams, that a fleet runs on Redis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from core.tokens import AuthConfig, TokenVerifier
from registry.memory import MemoryRegistry
from router.api.app import ApiStats
from router.config import ApiConfig, RouterConfig
from router.pages.dashboard import DashboardSources
from router.pages.demo import demo_available, edge_url_for
from router.stores.memory import MemoryBroadcastLog, MemoryInbox, MemoryNodeChannel, MemoryQueue
from router.worker import RouterWorker
from zuulpush.app.serve_banner import serve_banner
from zuulpush.app.sites import ApiSite
from zuulpush.app.workers import Workers
from zuulpush.binding import listening
from zuulpush.config import Components
from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.server import EdgeServer
from zuulpush.metrics import Exporter
from zuulpush.timed_registry import TimedRegistry


@dataclass(frozen=True, slots=True)
class ServeConfig(Components):
    edge: EdgeConfig
    auth: AuthConfig
    api: ApiConfig
    router: RouterConfig


class EmbeddedApp:
    """The whole push path in one process. `await start()`, then `await stop()`."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.registry = MemoryRegistry()
        self.queue = MemoryQueue(config.router.dedup_window_s)
        self.inbox = MemoryInbox(config.router.inbox_max_per_client)
        self.channel = MemoryNodeChannel(config.router.node_channel_max_pending)
        self.history = MemoryBroadcastLog(config.router.broadcast_history_max)
        self.exporter = Exporter()
        timed = TimedRegistry(self.registry, self.exporter.metrics)
        self.edge = EdgeServer(config.edge, verifier=TokenVerifier(config.auth),
                               registry=timed, inbox=self.inbox, channel=self.channel,
                               history=self.history, admin_key=config.auth.admin_key)
        self.worker = RouterWorker(self.queue, timed, self.inbox, self.channel,
                                   consumer=f"{self.edge.node_id}-router", config=config.router,
                                   history=self.history)
        self.api_stats = ApiStats()
        self.api = ApiSite(config.api, config.auth, self.queue, timed, self.inbox,
                           self.history, stats=self.api_stats, metrics=self.exporter.page,
                           dashboard=DashboardSources(
                               mode="serve", local_nodes=lambda: [self.edge.node_info()],
                               counters=self._counters, drain_local=self._drain_local),
                           edge_url=self._edge_url)
        self.workers = Workers([self.worker])
        self.exporter.watch_edge(self.edge)
        self.exporter.watch_api(self.api_stats)
        self.exporter.watch_workers([self.worker])
        self.exporter.watch_queue(self.queue)

    @property
    def node_id(self) -> str:
        """The edge node's id."""
        return self.edge.node_id

    @property
    def api_port(self) -> int:
        return self.api.port

    def _counters(self) -> dict[str, int]:
        """The dashboard's process counters: in one process, the whole deployment's."""
        return {**self.api_stats.totals(), "expired": self.worker.stats.expired}

    def _drain_local(self, node_id: str) -> bool:
        """The dashboard's drain of this process's node (the process exits once drained)."""
        if node_id != self.edge.node_id:
            return False
        self.edge.start_drain("drain from the dashboard")
        return True

    @property
    def demo(self) -> bool:
        """Whether the API serves the demo page (`router.pages.demo`)."""
        return demo_available(self.config.api, self.config.auth)

    def _edge_url(self, request: web.Request) -> str:
        """The demo page's edge when `public_edge_url` is not set: this process's edge (its
        port is known once it has started, before the API starts)."""
        url = edge_url_for(self.config.edge.host, self.edge.port, tls=self.edge.tls is not None)
        return url(request)

    async def start(self) -> None:
        with listening("the edge (--port)", self.config.edge.host, self.config.edge.port):
            await self.edge.start()  # (its one OSError: its registry's outages are Unavailable)
        await self.api.start()
        self.workers.start()
        await self.exporter.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop the API, drain the worker's current batch, close every connection with a
        reconnect hint, then release the seams."""
        await self.api.stop()
        await self.workers.stop(grace_s)
        await self.edge.shutdown(grace_s)
        await self.exporter.stop()
        for seam in (self.queue, self.channel, self.inbox, self.history, self.registry):
            await seam.close()

    def describe(self, generated: Sequence[str] = (), *, config_file: str | None = None) -> str:
        """The banner `zuulpush serve` prints once this app serves (`zuulpush.app.serve_banner`):
        its addresses, then lines to paste. `generated` names the settings made for this run
        (`secret`, `api_keys`, `admin_key`: printed, the configured ones never are);
        `config_file` is the `--config` it read, if any."""
        return serve_banner(self, generated, config_file=config_file)
