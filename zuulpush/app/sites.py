"""The HTTP listeners an app runs beside the edge: the push-send API (`ApiSite`) and a metrics
page of its own (`MetricsSite`), and the URL schemes a listener is reached by (`schemes`)."""

from __future__ import annotations

import ssl

from aiohttp import web

from core.tokens import AuthConfig
from registry.base import Registry
from router.api.app import ApiStats, MetricsPage, create_api_app
from router.api.malformed import JsonErrorsSite, RefusalLog, Refusals
from router.base import BroadcastLog, Inbox, MessageQueue
from router.config import ApiConfig
from router.pages.dashboard import DashboardSources
from router.pages.demo import EdgeUrl, demo_available
from zuulpush.binding import listening
from zuulpush.config import OpsConfig
from zuulpush.tls import optional_context


def schemes(tls: object) -> tuple[str, str]:
    """(http or https, ws or wss) for a listener with or without a TLS context."""
    return ("https", "wss") if tls is not None else ("http", "ws")


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
