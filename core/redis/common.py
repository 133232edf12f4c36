"""What the router's Redis seams share: running scripts, translating outages, waiting on close.

- Scripts go by SHA (EVALSHA); a server that does not know one (restarted, `SCRIPT FLUSH`,
  a cluster node seen for the first time) gets the source once by EVAL, which caches it there.
- Redis being unreachable (connection refused or lost, a timeout, a cluster that is down) is
  raised as `core.errors.Unavailable` (503, transient: retry), the original chained. Every
  other Redis error is a bug or a misconfiguration and propagates as it is.
- Blocking reads (XREAD BLOCK) wait in slices of at most `BLOCK_SLICE_S`, below the client's
  socket timeout (5 s by default, `core.redis.client.connect`), and give way at once when the
  seam is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from redis.exceptions import ClusterError, NoScriptError, OutOfMemoryError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import Unavailable
from core.redis.client import Client
from core.redis.lua import Lua

BLOCK_SLICE_S = 1.0
"""Longest single blocking call; a longer wait is several of them."""

PIPELINE_ITEMS = 5000
"""Script calls sent in one pipeline (one round trip; a cluster pipeline splits it by node)."""

T = TypeVar("T")
_OUTAGES = (RedisConnectionError, RedisTimeoutError, ClusterError)


def as_outage(exc: BaseException) -> Unavailable | None:
    """`exc` as the 503 it means when it is a Redis outage (unreachable, timed out, cluster
    down) or Redis refusing writes for memory (`OOM`, under `noeviction`); None otherwise."""
    if isinstance(exc, _OUTAGES):
        return Unavailable(f"Redis unreachable ({type(exc).__name__}: {exc})")
    if isinstance(exc, OutOfMemoryError):
        return Unavailable(f"Redis refuses writes (OOM): {exc}")
    return None


@contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Raise Redis outages inside the block (those of `as_outage`) as `Unavailable` naming
    `what`."""
    try:
        yield
    except (*_OUTAGES, OutOfMemoryError) as exc:
        raise Unavailable(f"{what}: {as_outage(exc)}") from exc


async def run_script(client: Client, script: Lua, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """EVALSHA `script`; on NOSCRIPT, EVAL its source (which loads it on that server)."""
    try:
        return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.execute_command("EVAL", script.source, len(keys), *keys, *args)


ScriptCall = tuple[Lua, Sequence[str], Sequence[Any]]


async def run_pipelined(client: Client, calls: Sequence[ScriptCall]) -> list[Any]:
    """Results of many script calls, `PIPELINE_ITEMS` per round trip. Calls that met NOSCRIPT
    are repeated by EVAL; any other error is raised (after the whole pipeline has run)."""
    results: list[Any] = []
    for start in range(0, len(calls), PIPELINE_ITEMS):
        results += await _pipeline(client, calls[start:start + PIPELINE_ITEMS])
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


async def _pipeline(client: Client, calls: Sequence[ScriptCall]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    results: list[Any] = await _awaited(pipe.execute(raise_on_error=False))
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        pipe = client.pipeline(transaction=False)
        for i in missing:
            script, keys, args = calls[i]
            pipe.execute_command("EVAL", script.source, len(keys), *keys, *args)
        for i, result in zip(missing, await _awaited(pipe.execute(raise_on_error=False)),
                             strict=True):
            results[i] = result
    return results


async def _awaited(result: Awaitable[T]) -> T:
    return await result


async def unless_closed(closed: asyncio.Event, call: Awaitable[T]) -> tuple[bool, T | None]:
    """Await `call` unless `closed` is set first: (True, its result) or (False, None), the call
    then cancelled (redis-py drops a connection whose command was cancelled)."""
    task = asyncio.ensure_future(call)
    closing = asyncio.ensure_future(closed.wait())
    try:
        await asyncio.wait((task, closing), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        closing.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False, None


async def idle(timeout_s: float) -> None:
    """What a wait on a closed seam does: sit out the timeout, so a looping caller never spins."""
    if timeout_s > 0:
        await asyncio.sleep(timeout_s)


def block_ms(timeout_s: float) -> int:
    """A BLOCK argument for up to `timeout_s` (one slice at most), at least 1 ms (0 is forever)."""
    return max(1, round(min(timeout_s, BLOCK_SLICE_S) * 1000))
