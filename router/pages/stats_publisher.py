"""Publishing one process's counter record (`router.pages.process_stats`) while the process runs.

Publishing never breaks the process: a failed publish (Redis unreachable, or anything else) is
logged once per outage, retried at the next interval, and logged again when it works. `start()`
publishes at once, in the background (a process starts even with Redis down); `stop()` ends
the loop and removes the record, so that dashboards stop counting the process at once (a
record that cannot be removed within `REMOVE_TIMEOUT_S` expires within its TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from core.outage import OutageLog
from core.tasks import cancel_and_wait
from router.pages.process_stats import (
    PUBLISH_INTERVAL_S,
    RECORD_TTL_S,
    ProcessStats,
    ProcessStatsStore,
)

log = logging.getLogger("zuulpush")

REMOVE_TIMEOUT_S = 1.0
"""The longest a stopping process waits to remove its record (an unreachable Redis must not
hold up a shutdown: the record expires anyway)."""


class StatsPublisher:
    """Publishes `record()` to `store` every `interval_s` for `ttl_s`. `start()`, then
    `await stop()`."""

    __slots__ = ("_interval_s", "_outage", "_record", "_store", "_task", "_ttl_s", "publishes")

    def __init__(self, store: ProcessStatsStore, record: Callable[[], ProcessStats], *,
                 interval_s: float = PUBLISH_INTERVAL_S, ttl_s: float = RECORD_TTL_S) -> None:
        self._store = store
        self._record = record
        self._interval_s = interval_s
        self._ttl_s = ttl_s
        self._task: asyncio.Task[None] | None = None
        self._outage = OutageLog(log)
        self.publishes = 0  # successful ones, since start

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """End the loop; remove the record (best effort: it expires anyway)."""
        if self._task is None:
            return
        await cancel_and_wait([self._task], what="stats publisher")
        self._task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._store.remove(self._record().process_id),
                                   REMOVE_TIMEOUT_S)

    async def publish_once(self) -> bool:
        """Publish the current record now; False (logged once per outage) if it failed."""
        try:
            await self._store.publish(self._record(), self._ttl_s)
        except Exception as exc:
            self._outage.failed("process stats not published (%s: %s); retrying every %g s",
                                type(exc).__name__, exc, self._interval_s)
            return False
        self._outage.recovered("process stats published again")
        self.publishes += 1
        return True

    async def _loop(self) -> None:
        while True:
            await self.publish_once()
            await asyncio.sleep(self._interval_s)
