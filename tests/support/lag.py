"""How late this process's event loop runs: the test support processes report it."""

from __future__ import annotations

import asyncio


class LagSampler:
    """How late a 50 ms timer fires: this process's event-loop lag, the peak since start."""

    INTERVAL_S = 0.05

    def __init__(self) -> None:
        self.peak_s = 0.0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.INTERVAL_S
        self._handle = loop.call_at(self._due, self._fired)

    def _fired(self) -> None:
        loop = asyncio.get_running_loop()
        self.peak_s = max(self.peak_s, loop.time() - self._due)
        self._due = loop.time() + self.INTERVAL_S
        self._handle = loop.call_at(self._due, self._fired)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
