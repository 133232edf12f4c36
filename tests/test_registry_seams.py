"""The registry's seams as its users see them: the narrow protocols and what they add up to, the
wrappers that must cover every operation (timing, replication), and which modules load Redis.

No Redis here: the wrappers run over the memory registry; imports are checked in a fresh
interpreter, so that what this test process already loaded does not count.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry

from registry.memory import MemoryRegistry
from registry.replicated import LOCAL_OPS, ReplicatedRegistry
from tests.support.registry_calls import CALLS, registry_ops
from zuulpush.metrics import Exporter, Metrics
from zuulpush.timed_registry import REGISTRY_OPS, TimedRegistry

REDIS_FREE = ["registry", "registry.base", "registry.memory", "registry.config",
              "registry.factory", "registry.redis_layout"]


def test_the_calls_and_the_timed_operations_are_every_operation_of_the_protocol() -> None:
    assert set(CALLS) == registry_ops() == set(REGISTRY_OPS)
    assert len(REGISTRY_OPS) == len(set(REGISTRY_OPS))


def test_a_replicated_registry_writes_itself_what_it_does_not_leave_to_the_local_one() -> None:
    written = {op for op in registry_ops() if op in vars(ReplicatedRegistry)}
    assert written == {"register", "refresh", "unregister", "heartbeat_node", "remove_node"}
    assert registry_ops() - written == LOCAL_OPS


async def test_every_operation_of_a_timed_registry_is_timed_once() -> None:
    metrics = Metrics(CollectorRegistry())
    timed = TimedRegistry(MemoryRegistry(), metrics)
    for call in CALLS.values():
        await call(timed)  # type: ignore[arg-type]
    await timed.lookup("c1")
    page = Exporter(metrics).page()[0].decode()
    for op in REGISTRY_OPS:
        count = 2 if op == "lookup" else 1
        assert f'zuulpush_registry_op_seconds_count{{op="{op}"}} {count}.0' in page, op
    with pytest.raises(AttributeError):
        timed.not_an_operation  # noqa: B018


@pytest.mark.parametrize("module", REDIS_FREE)
def test_the_seam_and_memory_modules_load_no_redis_module(module: str) -> None:
    """redis-py is loaded by every Redis module of ours (`core.redis.client`, `.common`...)."""
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print('redis' in sys.modules)"],
        capture_output=True, text=True, check=True, timeout=30)
    assert loaded.stdout.strip() == "False"


def test_the_check_sees_a_module_that_loads_redis() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, registry.changes; print('redis' in sys.modules)"],
        capture_output=True, text=True, check=True, timeout=30)
    assert loaded.stdout.strip() == "True"
