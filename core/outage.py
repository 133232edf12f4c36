"""`OutageLog`: log a failing dependency once when it starts failing and once when it works again.

A loop that calls Redis (or a peer, or a socket) every second must not write a line every
second while the dependency is down, and must say when it is back. Each such loop holds one
`OutageLog`; `failed(...)` logs the first failure of an outage (and returns True then), later
failures only at debug level; `recovered(...)` logs once if an outage was under way. Both lines
are written at the log's `level` (a warning by default): operators watch for both.
"""

from __future__ import annotations

import logging


class OutageLog:
    """One dependency's outage, seen by one loop: a line at its start and one at its end."""

    __slots__ = ("_level", "_log", "down")

    def __init__(self, log: logging.Logger, *, level: int = logging.WARNING) -> None:
        self._log = log
        self._level = level
        self.down = False
        """True from the first failure until the next success."""

    def failed(self, message: str, *args: object, exc_info: BaseException | None = None) -> bool:
        """Log `message % args` (with `exc_info`'s traceback when given) at the log's level if
        this is the outage's first failure (then True), else at debug level (False)."""
        first = not self.down
        self.down = True
        self._log.log(self._level if first else logging.DEBUG, message, *args,
                      exc_info=exc_info)
        return first

    def recovered(self, message: str = "", *args: object) -> bool:
        """End the outage, logging `message % args` (when given) at the log's level if one was
        under way: True then, False if nothing was failing."""
        was_down, self.down = self.down, False
        if was_down and message:
            self._log.log(self._level, message, *args)
        return was_down
