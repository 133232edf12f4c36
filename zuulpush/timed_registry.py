"""`TimedRegistry`: a `Registry` that times every call of the one it wraps into the registry
metrics of `zuulpush.metrics` (`zuulpush_registry_op_seconds`, `zuulpush_registry_op_errors`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence

from registry.base import Device, Location, NodeInfo, Registration, Registry
from zuulpush.metrics import Metrics, process_metrics

REGISTRY_OPS = ("register", "refresh", "unregister", "lookup", "lookup_many", "locate_many",
                "devices_many", "devices_of_user", "device", "heartbeat_node", "remove_node",
                "nodes", "request_drain", "take_drain_request", "drain_pending")


class TimedRegistry:
    """A `Registry` that times every call of the one it wraps into
    `zuulpush_registry_op_seconds{op}` (and counts those that raise), observed directly: the
    edge, API and router call the registry in batches, not per message."""

    def __init__(self, inner: Registry, metrics: Metrics | None = None) -> None:
        self.inner = inner
        m = process_metrics() if metrics is None else metrics
        self._latency = {op: m.registry_latency.labels(op) for op in REGISTRY_OPS}
        self._errors = m.registry_op_errors

    @contextlib.contextmanager
    def _timed(self, op: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._errors.labels(op).inc()
            raise
        finally:
            self._latency[op].observe(time.perf_counter() - start)

    async def register(self, registrations: Sequence[Registration], ttl_s: float) -> None:
        with self._timed("register"):
            await self.inner.register(registrations, ttl_s)

    async def refresh(self, node_id: str, client_ids: Sequence[str], ttl_s: float) -> int:
        with self._timed("refresh"):
            return await self.inner.refresh(node_id, client_ids, ttl_s)

    async def unregister(self, client_id: str, node_id: str, version: int) -> bool:
        with self._timed("unregister"):
            return await self.inner.unregister(client_id, node_id, version)

    async def lookup(self, client_id: str) -> Registration | None:
        with self._timed("lookup"):
            return await self.inner.lookup(client_id)

    async def lookup_many(self, client_ids: Iterable[str]) -> dict[str, Registration]:
        with self._timed("lookup_many"):
            return await self.inner.lookup_many(client_ids)

    async def locate_many(self, client_ids: Iterable[str]) -> dict[str, Location]:
        with self._timed("locate_many"):
            return await self.inner.locate_many(client_ids)

    async def devices_many(self, client_ids: Iterable[str]) -> dict[str, Device]:
        with self._timed("devices_many"):
            return await self.inner.devices_many(client_ids)

    async def devices_of_user(self, user_id: str) -> list[Device]:
        with self._timed("devices_of_user"):
            return await self.inner.devices_of_user(user_id)

    async def device(self, client_id: str) -> Device | None:
        with self._timed("device"):
            return await self.inner.device(client_id)

    async def heartbeat_node(self, node: NodeInfo, ttl_s: float) -> bool:
        with self._timed("heartbeat_node"):
            return await self.inner.heartbeat_node(node, ttl_s)

    async def remove_node(self, node_id: str) -> None:
        with self._timed("remove_node"):
            await self.inner.remove_node(node_id)

    async def nodes(self) -> list[NodeInfo]:
        with self._timed("nodes"):
            return await self.inner.nodes()

    async def request_drain(self, node_id: str, ttl_s: float) -> None:
        with self._timed("request_drain"):
            await self.inner.request_drain(node_id, ttl_s)

    async def take_drain_request(self, node_id: str) -> bool:
        with self._timed("take_drain_request"):
            return await self.inner.take_drain_request(node_id)

    async def drain_pending(self, node_id: str) -> bool:
        with self._timed("drain_pending"):
            return await self.inner.drain_pending(node_id)

    async def close(self) -> None:
        await self.inner.close()
