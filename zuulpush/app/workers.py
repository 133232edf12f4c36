"""Router workers run as tracked tasks of an app (`zuulpush serve` and `zuulpush router`)."""

from __future__ import annotations

import asyncio
import logging

from core.tasks import cancel_and_wait
from router.worker import RouterWorker

log = logging.getLogger("zuulpush")


class Workers:
    """Router workers as tracked tasks. `start()`, then `await stop()`."""

    def __init__(self, workers: list[RouterWorker]) -> None:
        self.workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(w.run()) for w in self.workers]

    async def stop(self, grace_s: float) -> None:
        """Stop taking; wait up to `grace_s` for the batches in hand, then cancel (a cancelled
        batch is not marked done: another router claims it after `claim_idle_s`)."""
        if not self._tasks:
            return
        for worker in self.workers:
            worker.stop()
        _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
        if pending:
            log.warning("%d router worker(s) did not finish their batch within %.1f s",
                        len(pending), grace_s)
            await cancel_and_wait(pending, what="router worker")
        self._tasks = []
