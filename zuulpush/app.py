"""The processes zuulpush runs.

- `EmbeddedApp` (`zuulpush serve`): the edge, the push-send API and a router worker in one process,
  on one event loop, with the in-memory registry, queue, node channel and inbox: the same code
  paths, behind the same seams, that a fleet runs on Redis.
- `EdgeApp` (`zuulpush edge`): one edge node of a fleet, registering its connections in the
  registry on Redis (one region, or replicated across regions). Until the router runs on Redis
  too, its inbox and node channel are this process's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from registry.config import RegistryConfig
from registry.factory import RegistryHandle, open_registry
from registry.memory import MemoryRegistry
from router.api import create_api_app
from router.auth import AuthConfig, TokenVerifier
from router.config import ApiConfig, RouterConfig
from router.memory import MemoryInbox, MemoryNodeChannel, MemoryQueue
from router.worker import RouterWorker
from zuulpush.config import build
from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.server import EdgeServer

log = logging.getLogger("zuulpush")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    edge: EdgeConfig
    auth: AuthConfig
    api: ApiConfig
    router: RouterConfig

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> ServeConfig:
        return cls(build(EdgeConfig, settings), build(AuthConfig, settings),
                   build(ApiConfig, settings), build(RouterConfig, settings))


class EmbeddedApp:
    """The whole push path in one process. `await start()`, then `await stop()`."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.registry = MemoryRegistry()
        self.queue = MemoryQueue(config.router.dedup_window_s)
        self.inbox = MemoryInbox(config.router.inbox_max_per_client)
        self.channel = MemoryNodeChannel(config.router.node_channel_max_pending)
        self.edge = EdgeServer(config.edge, verifier=TokenVerifier(config.auth),
                               registry=self.registry, inbox=self.inbox, channel=self.channel)
        self.worker = RouterWorker(self.queue, self.registry, self.inbox, self.channel,
                                   consumer=f"{self.edge.node_id}-router", config=config.router)
        self.api_port = config.api.api_port
        self._runner: web.AppRunner | None = None
        self._worker_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.edge.start()
        app = create_api_app(config=self.config.api, auth=self.config.auth, queue=self.queue,
                             registry=self.registry)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.api.api_host, self.config.api.api_port,
                           backlog=1024)
        await site.start()
        self.api_port = self._runner.addresses[0][1]
        self._worker_task = asyncio.get_running_loop().create_task(self.worker.run())

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop the API, drain the worker's current batch, close every connection with a
        reconnect hint, then release the seams."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._worker_task is not None:
            self.worker.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._worker_task, timeout=grace_s)
            self._worker_task = None
        await self.edge.shutdown(grace_s)
        for seam in (self.queue, self.channel, self.inbox, self.registry):
            await seam.close()


@dataclass(frozen=True, slots=True)
class EdgeAppConfig:
    edge: EdgeConfig
    auth: AuthConfig
    router: RouterConfig
    registry: RegistryConfig

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> EdgeAppConfig:
        return cls(build(EdgeConfig, settings), build(AuthConfig, settings),
                   build(RouterConfig, settings), build(RegistryConfig, settings))


class EdgeApp:
    """One edge node with the configured registry. `await start()`, then `await stop()`."""

    def __init__(self, config: EdgeAppConfig) -> None:
        self.config = config
        self.handle: RegistryHandle = open_registry(config.registry)
        self.inbox = MemoryInbox(config.router.inbox_max_per_client)
        self.channel = MemoryNodeChannel(config.router.node_channel_max_pending)
        self.edge = EdgeServer(config.edge, verifier=TokenVerifier(config.auth),
                               registry=self.handle.registry, inbox=self.inbox,
                               channel=self.channel)

    async def start(self) -> None:
        await self.handle.start()
        await self.edge.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.edge.shutdown(grace_s)
        await self.handle.close()
        for seam in (self.channel, self.inbox):
            await seam.close()
