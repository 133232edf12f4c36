"""`TimedRegistry`: a `Registry` that times every call of the one it wraps into the registry
metrics of `zuulpush.metrics` (`zuulpush_registry_op_seconds`, `zuulpush_registry_op_errors`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from registry.base import Registry
from zuulpush.metrics import Metrics, process_metrics

REGISTRY_OPS = ("register", "refresh", "unregister", "lookup", "lookup_many", "locate_many",
                "devices_many", "devices_of_user", "device", "heartbeat_node", "remove_node",
                "nodes", "request_drain", "take_drain_request", "drain_pending")
"""The operations timed, each the `op` label of its metrics: every `Registry` method but
`close`."""


class TimedRegistry:
    """A `Registry` that times every call of the one it wraps into
    `zuulpush_registry_op_seconds{op}` (and counts those that raise, a cancellation aside),
    observed directly: the edge, API and router call the registry in batches, not per message.

    Each operation of `REGISTRY_OPS` is the wrapped registry's own method, timed: made on first
    use (`__getattr__`) and kept on the instance. For mypy a `TimedRegistry` is a `Registry`
    through that `__getattr__`; its callers hold it as one.
    """

    def __init__(self, inner: Registry, metrics: Metrics | None = None) -> None:
        self.inner = inner
        m = process_metrics() if metrics is None else metrics
        self._latency = {op: m.registry_latency.labels(op) for op in REGISTRY_OPS}
        self._errors = m.registry_op_errors

    def __getattr__(self, op: str) -> Any:
        if op not in REGISTRY_OPS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {op!r}")
        timed = self._timed(op, getattr(self.inner, op))
        setattr(self, op, timed)  # found on the instance from now on, without __getattr__
        return timed

    def _timed(self, op: str, call: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        latency = self._latency[op]

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await call(*args, **kwargs)
            except asyncio.CancelledError:
                raise
            except BaseException:
                self._errors.labels(op).inc()
                raise
            finally:
                latency.observe(time.perf_counter() - start)

        return timed

    async def close(self) -> None:
        await self.inner.close()
