"""`RouterApp` (`zuulpush router`): N router workers in one process, taking from the queue on
Redis, storing in inboxes and publishing to node channels there, and, with peer regions,
forwarding to those regions' queues (docs/operations.md, "Inside the processes"). Stateless:
run any number."""

from __future__ import annotations

from collections import Counter

from router.pages.process_stats import ProcessStats
from router.pages.stats_publisher import StatsPublisher
from router.worker import RouterWorker
from zuulpush import __version__
from zuulpush.app.fleet import FleetAppConfig, local_registry
from zuulpush.app.sites import MetricsSite
from zuulpush.app.workers import Workers
from zuulpush.edge.server import default_node_id
from zuulpush.metrics import Exporter
from zuulpush.redis_seams import (
    redis_channel,
    redis_history,
    redis_inbox,
    redis_process_stats,
    redis_queue,
)
from zuulpush.timed_registry import TimedRegistry

NODE_CACHE_S = 1.0
"""How long a router worker trusts an active node's record (`router.node_cache`): one registry
round trip fewer per batch."""


class RouterApp:
    """`router_workers` router workers on Redis, consumers named `<process id>-w<i>`, with the
    queue of each peer region, that they forward to (module docstring). `await start()`,
    then `await stop()`: stop taking, finish the batches in hand, close the seams."""

    edge = None
    """It runs no edge node."""

    def __init__(self, config: FleetAppConfig) -> None:
        if config.fleet.router_workers < 1:
            raise ValueError("router_workers must be at least 1")
        peer_urls = config.registry.peers()  # ValueError on a malformed entry, before opening
        self.config = config
        self.node_id = default_node_id()
        url = config.registry.redis_url
        self.handle = local_registry(config.registry)
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


    def describe(self) -> str:
        """The banner `zuulpush router` prints once its workers run: their number, its Redis,
        region and peer regions, its metrics page (if any) and the `ready:` line."""
        n = len(self.workers.workers)
        registry = self.config.registry
        peers = ", ".join(sorted(self.peers)) or "none"
        metrics = [f"  metrics: {self.metrics_site.url}"] if self.metrics_site.url else []
        return "\n".join([
            f"zuulpush {__version__} router {self.node_id}: {n} worker(s) on "
            f"{registry.redis_url} (region {registry.region}, peer regions: {peers})",
            *metrics,
            f"  ready: node={self.node_id} workers={n}",
        ])
