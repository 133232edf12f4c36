"""The processes zuulpush runs.

- `EmbeddedApp` (`zuulpush serve`): the edge, the push-send API and a router worker in one process,
  on one event loop, with the in-memory registry, queue, node channel and inbox: the same code
  paths, behind the same seams, that a fleet runs on Redis.
- `EdgeApp` (`zuulpush edge`): one edge node of a fleet, registering its connections in the
  registry on Redis (one region, or replicated across regions), reading its deliveries from its
  node channel and its clients' inboxes on the same Redis (the local region's).
- `ApiApp` (`zuulpush api`): the push-send API, resolving targets in the registry on Redis and
  enqueueing on the queue on Redis; with a device-token secret or public key configured, also
  the devices' inbox pull and ack (`GET /v1/inbox`, `POST /v1/inbox/ack`) on the inboxes there.
- `RouterApp` (`zuulpush router`): N router workers in one process, taking from the queue on
  Redis, storing in inboxes and publishing to node channels there, and, with peer regions,
  forwarding to those regions' queues (below). Stateless: run any number.

Every fleet process opens the seams on one `redis_url` (`redis+cluster://` for a Cluster), under
`router_prefix` (queue, inboxes, node channels) and `registry_prefix` (the registry). The API and
the routers read this region's registry only and run no replicators (the edges do): the registry
there also shows the clients connected in other regions, each with its node's region.

Across regions: a router started with `region` and `peer_regions` (`--region a --peer-region
b=URL`) also opens each peer region's queue, on that region's Redis under the same
`router_prefix`, and forwards there what is for a client connected there (or connected nowhere),
after storing it here; an edge with peer regions hands a client's inbox on to the region it
connected in (`router.handoff`). `router.worker`, `router.regions` and docs/delivery.md have
the details.

Process stats: each `zuulpush api` and `zuulpush router` publishes its counter totals (the API's
enqueued and deduped, the sum of the router's workers' expired, taken, stored and forwarded) to
its region's Redis every few seconds, with a TTL (`router.pages.process_stats`,
`router.pages.stats_publisher`); every API's dashboard sums them, so these numbers are the region's,
not one process's. A process that cannot publish logs it once and serves on.

Metrics: each process has one `zuulpush.metrics.Exporter`, watching what the process runs (the
edge's, API's and workers' plain stats, the queue's depth and lag in `serve` and `router`) and
timing its registry calls (`TimedRegistry`). The page is `GET /metrics` on the edge port and on
the API port, and for `zuulpush router` on `metrics_host:metrics_port` when that is set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from core.tasks import cancel_and_wait
from core.tokens import AuthConfig, TokenVerifier
from registry.base import Registration, Registry
from registry.config import RegistryConfig
from registry.factory import RegistryHandle, open_registry
from registry.memory import MemoryRegistry
from router.api.app import ApiStats, MetricsPage, create_api_app
from router.api.malformed import JsonErrorsSite, RefusalLog, Refusals
from router.base import BroadcastLog, Inbox, MessageQueue, NodeChannel
from router.config import ApiConfig, RouterConfig
from router.handoff import Handoff
from router.pages.dashboard import DashboardSources
from router.pages.demo import EdgeUrl, demo_available, edge_url_for
from router.pages.process_stats import ProcessStats
from router.pages.stats_publisher import StatsPublisher
from router.stores.memory import MemoryBroadcastLog, MemoryInbox, MemoryNodeChannel, MemoryQueue
from router.stores.redis_history import RedisBroadcastLog
from router.stores.redis_inbox import RedisInbox
from router.stores.redis_sessions import RedisSessionRevocations
from router.worker import RouterWorker
from zuulpush.binding import listening
from zuulpush.config import Components, FleetConfig, OpsConfig
from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.server import EdgeServer, default_node_id
from zuulpush.metrics import Exporter
from zuulpush.redis_seams import (
    redis_channel,
    redis_history,
    redis_inbox,
    redis_process_stats,
    redis_queue,
)
from zuulpush.timed_registry import TimedRegistry
from zuulpush.tls import optional_context

log = logging.getLogger("zuulpush")


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


class ApiSite:
    """The push-send API (aiohttp) on its address, over TLS when `api_tls_cert_file` is set
    (`tls` is then its context; a setting that cannot be used raises
    `zuulpush.tls.TlsConfigError` at construction). `await start()`, then `await stop()`."""

    def __init__(self, config: ApiConfig, auth: AuthConfig, queue: MessageQueue,
                 registry: Registry, inbox: Inbox | None = None,
                 history: BroadcastLog | None = None, *, stats: ApiStats | None = None,
                 metrics: MetricsPage | None = None,
                 dashboard: DashboardSources | None = None,
                 edge_url: EdgeUrl | None = None) -> None:
        if demo_available(config, auth) and not config.public_edge_url and edge_url is None:
            raise ValueError("demo: set public_edge_url, the edge's URL the demo page connects "
                             "to (or turn the demo off)")
        self._dashboard = dashboard
        self._edge_url = edge_url
        self._stats = ApiStats() if stats is None else stats
        self._metrics = metrics
        self._config = config
        self._auth = auth
        self._queue = queue
        self._registry = registry
        self._inbox = inbox
        self._history = history
        self._runner: web.AppRunner | None = None
        self.port = config.api_port
        self.tls: ssl.SSLContext | None = optional_context(
            config.api_tls_cert_file, config.api_tls_key_file,
            what="API TLS (api_tls_cert_file, api_tls_key_file)")

    async def start(self) -> None:
        app = create_api_app(config=self._config, auth=self._auth, queue=self._queue,
                             registry=self._registry, inbox=self._inbox, history=self._history,
                             stats=self._stats, metrics=self._metrics,
                             dashboard=self._dashboard, edge_url=self._edge_url)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        refusals = Refusals(self._stats.count_error, RefusalLog())  # `router.api.malformed`
        host, port = self._config.api_host, self._config.api_port
        site = JsonErrorsSite(self._runner, host, port, refusals=refusals, backlog=1024,
                              ssl_context=self.tls, access_log=None)
        with listening("the API (--api-port)", host, port):
            await site.start()
        self.port = site.port

    async def stop(self) -> None:
        """Stop accepting and finish the requests in flight (each one enqueues or fails)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class MetricsSite:
    """`GET /metrics` on `metrics_host:metrics_port` (for a process with no HTTP port of its
    own); nothing when `metrics_port` is -1. `url` once started."""

    def __init__(self, ops: OpsConfig, page: MetricsPage) -> None:
        self._ops = ops
        self._page = page
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    async def start(self) -> None:
        if self._ops.metrics_port < 0:
            return
        page = self._page

        async def metrics(request: web.Request) -> web.Response:
            body, content_type = page()
            return web.Response(body=body, headers={"Content-Type": content_type})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = self._ops.metrics_host, self._ops.metrics_port
        with listening("the metrics page (--metrics-port)", host, port):
            await web.TCPSite(self._runner, host, port).start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self._ops.metrics_host}:{port}/metrics"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class Workers:
    """Router workers as tracked tasks. `start()`, then `await stop()`."""

    def __init__(self, workers: list[RouterWorker]) -> None:
        self.workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(w.run()) for w in self.workers]

    async def stop(self, grace_s: float) -> None:
        """Stop taking; wait up to `grace_s` for the batches in hand, then cancel (a cancelled
        batch is not marked done: another router claims it after `claim_idle_s`)."""
        if not self._tasks:
            return
        for worker in self.workers:
            worker.stop()
        _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
        if pending:
            log.warning("%d router worker(s) did not finish their batch within %.1f s",
                        len(pending), grace_s)
            await cancel_and_wait(pending, what="router worker")
        self._tasks = []


def _local_registry(config: RegistryConfig) -> RegistryHandle:
    """This region's registry alone: the API and routers read, they do not replicate."""
    if not config.redis_url:
        raise ValueError("a fleet process needs redis_url (--redis URL or ZUULPUSH_REDIS_URL)")
    return open_registry(dataclasses.replace(config, peer_regions=()))


@dataclass(frozen=True, slots=True)
class FleetAppConfig(Components):
    """What `zuulpush api` and `zuulpush router` are built from."""

    auth: AuthConfig
    api: ApiConfig
    router: RouterConfig
    registry: RegistryConfig
    fleet: FleetConfig
    ops: OpsConfig = dataclasses.field(default_factory=OpsConfig)



class ApiApp:
    """The push-send API of a fleet, on Redis. `await start()`, then `await stop()`."""

    def __init__(self, config: FleetAppConfig) -> None:
        self.config = config
        self.node_id = default_node_id()
        self.handle = _local_registry(config.registry)
        self.queue = redis_queue(config.registry.redis_url, config.router, config.fleet)
        self.inbox: RedisInbox | None = None
        self.history: RedisBroadcastLog | None = None
        if config.auth.secret or config.auth.public_key:
            # Peered whatever the configuration says: an API may be started without the
            # region flags, and a pull's ack "through" is then safe in any fleet.
            self.inbox = redis_inbox(config.registry.redis_url, config.router, config.fleet,
                                     peered=True)
            self.history = redis_history(config.registry.redis_url, config.router, config.fleet)
        self.exporter = Exporter()
        self.api_stats = ApiStats()
        self.process_stats = redis_process_stats(config.registry.redis_url, config.fleet)
        self.publisher = StatsPublisher(self.process_stats, self.process_record)
        self.sessions = RedisSessionRevocations.from_url(config.registry.redis_url,  # logouts
                                                         prefix=config.fleet.router_prefix)
        self.api = ApiSite(config.api, config.auth, self.queue,
                           TimedRegistry(self.handle.registry, self.exporter.metrics), self.inbox,
                           self.history, stats=self.api_stats, metrics=self.exporter.page,
                           dashboard=DashboardSources(
                               processes=self.process_stats.live,
                               local_processes=lambda: [self.process_record()],
                               sessions=self.sessions))
        self.exporter.watch_api(self.api_stats)

    @property
    def api_port(self) -> int:
        return self.api.port

    def process_record(self) -> ProcessStats:
        """This API's counters as it publishes them (`router.pages.process_stats`)."""
        return ProcessStats.of(self.node_id, "api", self.config.registry.region,
                               self.api_stats.totals())

    async def start(self) -> None:
        await self.handle.start()
        await self.api.start()
        self.publisher.start()
        await self.exporter.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.api.stop()
        await self.publisher.stop()
        await self.exporter.stop()
        await self.queue.close()
        for seam in (self.inbox, self.history, self.process_stats, self.sessions):
            if seam is not None:
                await seam.close()
        await self.handle.close()


NODE_CACHE_S = 1.0
"""How long a router worker trusts an active node's record (`router.node_cache`): one registry
round trip fewer per batch."""


class RouterApp:
    """`router_workers` router workers on Redis, consumers named `<process id>-w<i>`, with the
    queue of each peer region, that they forward to (module docstring). `await start()`,
    then `await stop()`: stop taking, finish the batches in hand, close the seams."""

    def __init__(self, config: FleetAppConfig) -> None:
        if config.fleet.router_workers < 1:
            raise ValueError("router_workers must be at least 1")
        peer_urls = config.registry.peers()  # ValueError on a malformed entry, before opening
        self.config = config
        self.node_id = default_node_id()
        url = config.registry.redis_url
        self.handle = _local_registry(config.registry)
        self.queue = redis_queue(url, config.router, config.fleet)
        self.inbox = redis_inbox(url, config.router, config.fleet)
        self.channel = redis_channel(url, config.fleet)
        self.history = redis_history(url, config.router, config.fleet)
        self.peers = {name: redis_queue(peer_url, config.router, config.fleet)
                      for name, peer_url in peer_urls.items()}
        self.exporter = Exporter()
        timed = TimedRegistry(self.handle.registry, self.exporter.metrics)
        self.workers = Workers([
            RouterWorker(self.queue, timed, self.inbox, self.channel,
                         consumer=f"{self.node_id}-w{i}", config=config.router,
                         history=self.history, region=config.registry.region, peers=self.peers,
                         node_cache_s=NODE_CACHE_S)
            for i in range(config.fleet.router_workers)])
        self.exporter.watch_workers(self.workers.workers)
        self.exporter.watch_queue(self.queue)
        self.metrics_site = MetricsSite(config.ops, self.exporter.page)
        self.process_stats = redis_process_stats(url, config.fleet)
        self.publisher = StatsPublisher(self.process_stats, self.process_record)

    def process_record(self) -> ProcessStats:
        """The sum of this process's workers' counters, as it publishes them
        (`router.pages.process_stats`)."""
        totals: Counter[str] = Counter()
        for worker in self.workers.workers:
            totals.update(worker.stats.totals())
        return ProcessStats.of(self.node_id, "router", self.config.registry.region, totals)

    async def start(self) -> None:
        await self.metrics_site.start()  # first: a port it cannot have fails before the rest
        await self.handle.start()
        self.workers.start()
        self.publisher.start()
        await self.exporter.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.metrics_site.stop()
        await self.workers.stop(grace_s)
        await self.publisher.stop()  # removes the record: dashboards stop counting it
        await self.exporter.stop()
        for seam in (self.queue, self.channel, self.inbox, self.history, self.process_stats):
            await seam.close()
        for peer in self.peers.values():
            await peer.close()
        await self.handle.close()


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
