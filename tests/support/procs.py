"""Reaping the asyncio subprocesses a test started."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal


async def wait_or_kill(proc: asyncio.subprocess.Process, timeout_s: float) -> int:
    """Wait up to `timeout_s` for `proc` to exit; if it has not, SIGKILL its PID and wait as
    long again. Its exit status."""
    try:
        return await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        return await asyncio.wait_for(proc.wait(), timeout_s)
