"""`ApiApp` (`zuulpush api`): the push-send API of a fleet, resolving targets in the registry on
Redis and enqueueing on the queue there; with a device-token secret or public key, also the
devices' inbox pull and ack (`GET /v1/inbox`, `POST /v1/inbox/ack`) on the inboxes there."""

from __future__ import annotations

from router.api.app import ApiStats
from router.pages.dashboard import DashboardSources
from router.pages.process_stats import ProcessStats
from router.pages.stats_publisher import StatsPublisher
from router.stores.redis_history import RedisBroadcastLog
from router.stores.redis_inbox import RedisInbox
from router.stores.redis_sessions import RedisSessionRevocations
from zuulpush import __version__
from zuulpush.app.fleet import FleetAppConfig, local_registry
from zuulpush.app.sites import ApiSite, schemes
from zuulpush.edge.server import default_node_id
from zuulpush.metrics import Exporter
from zuulpush.redis_seams import redis_history, redis_inbox, redis_process_stats, redis_queue
from zuulpush.timed_registry import TimedRegistry


class ApiApp:
    """The push-send API of a fleet, on Redis. `await start()`, then `await stop()`."""

    edge = None
    """It runs no edge node."""

    def __init__(self, config: FleetAppConfig) -> None:
        self.config = config
        self.node_id = default_node_id()
        self.handle = local_registry(config.registry)
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


    def describe(self) -> str:
        """The banner `zuulpush api` prints once this API serves: its address, its dashboard's
        and the `ready:` line."""
        api = f"{schemes(self.api.tls)[0]}://{self.config.api.api_host}:{self.api_port}"
        return "\n".join([
            f"zuulpush {__version__} push-send API {self.node_id} on "
            f"{self.config.registry.redis_url}",
            f"  api:  {api}/v1/push",
            f"  dashboard: {api}/  " + ("(log in with the admin key)"
                                        if self.config.auth.admin_key
                                        else "(off: no admin key, ZUULPUSH_ADMIN_KEY)"),
            f"  ready: api={api} node={self.node_id}",
        ])
