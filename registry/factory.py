"""Open the registry a `RegistryConfig` names, with whatever runs beside it.

- no `redis_url`: `MemoryRegistry`, this process only;
- `redis_url`: `RedisRegistry` on one Redis or a Redis Cluster;
- `redis_url` and `peer_regions`: a `ReplicatedRegistry` over this region's `RedisRegistry`,
  announcing local writes on this region's change stream, and one `Replicator` per peer region
  applying that region's changes here. Every process of a region may run replicators: a lease
  in Redis lets one of them work per peer region at a time.

The Redis modules are imported only for a registry on Redis: a process with the memory registry
(`zuulpush serve`) never loads redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.tasks import cancel_and_wait
from registry.base import Registry
from registry.config import RegistryConfig
from registry.memory import MemoryRegistry

if TYPE_CHECKING:  # Redis modules load only for a registry on Redis (`_on_redis`)
    from registry.replicator import Arrivals, Replicator

log = logging.getLogger("zuulpush.registry")

STOP_WAIT_S = 5.0
"""How long a replicator has to end by itself once stopped, before it is cancelled."""


@dataclass
class RegistryHandle:
    """An open registry and its replicators. `await start()` runs the replicators; `await
    close()` stops them and closes every client this handle opened."""

    registry: Registry
    replicators: list[Replicator] = field(default_factory=list)
    clients: list[Any] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(r.run()) for r in self.replicators]

    async def close(self) -> None:
        for replicator in self.replicators:
            replicator.stop()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_WAIT_S)
            await cancel_and_wait(pending, what="replicator")
        await self.registry.close()
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.aclose()


def open_registry(config: RegistryConfig, *, on_arrivals: Arrivals | None = None
                  ) -> RegistryHandle:
    """The registry `config` names; ValueError for a malformed URL or peer entry.
    `on_arrivals` is each replicator's (`Replicator`), with peer regions only."""
    if not config.redis_url:
        return RegistryHandle(MemoryRegistry(device_ttl_s=config.device_ttl_s))
    return _on_redis(config, on_arrivals)


def _on_redis(config: RegistryConfig, on_arrivals: Arrivals | None) -> RegistryHandle:
    from core.redis.client import connect
    from registry.changes import ChangeLog
    from registry.redis import RedisRegistry
    from registry.replicated import ReplicatedRegistry
    from registry.replicator import Replicator

    peers = config.peers()
    if not peers:
        return RegistryHandle(RedisRegistry.from_url(
            config.redis_url, prefix=config.registry_prefix, device_ttl_s=config.device_ttl_s))
    local_client = connect(config.redis_url)
    local = RedisRegistry(local_client, prefix=config.registry_prefix,
                          device_ttl_s=config.device_ttl_s)
    registry = ReplicatedRegistry(local, ChangeLog(local_client, prefix=config.registry_prefix),
                                  config.region)
    handle = RegistryHandle(registry, clients=[local_client])
    for name, url in sorted(peers.items()):
        peer_client = connect(url)
        handle.clients.append(peer_client)
        handle.replicators.append(Replicator(local, local_client, name, peer_client,
                                             region=config.region,
                                             prefix=config.registry_prefix,
                                             on_arrivals=on_arrivals))
    return handle
