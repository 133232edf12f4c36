"""Running an app of `zuulpush.app` in the foreground: start it on uvloop, print its banner once
it serves, and on SIGINT or SIGTERM (or once its edge has drained, or its supervisor is gone)
drain its edge and stop it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from core.errors import Unavailable
from zuulpush import logs
from zuulpush.config import ConfigError

if TYPE_CHECKING:
    from zuulpush.edge.server import EdgeServer


class StartError(Exception):
    """A process could not start for a reason outside it (its Redis unreachable): exit 1 with
    one line, for its supervisor to start it again."""


class App(Protocol):
    """What is run: `EmbeddedApp`, `EdgeApp`, `ApiApp` or `RouterApp`."""

    @property
    def node_id(self) -> str: ...

    @property
    def edge(self) -> EdgeServer | None:
        """The edge node it runs (`serve`, `edge`), or None."""

    async def start(self) -> None: ...

    async def stop(self, grace_s: float = 5.0) -> None: ...


A = TypeVar("A", bound=App)


def run_app(make: Callable[[], A], banner: Callable[[A], str],
            lifeline_fd: int | None = None) -> int:
    """Build the app (a ValueError is a configuration error), run it on uvloop until SIGINT or
    SIGTERM (or, for an app with an edge, until a drain asked through the registry or the admin
    API is over, or until `lifeline_fd` reads end of file: a supervisor is gone), and shut it down
    cleanly: an edge drains first. `banner(app)` (its `describe`) is printed once the app
    serves, if not empty."""
    import uvloop

    try:
        app = make()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    logs.add_context(node_id=app.node_id)
    uvloop.run(_run_until_signal(app, banner, lifeline_fd))
    return 0


async def _start(app: App) -> None:
    """`app.start()`; a dependency it cannot reach while starting (`Unavailable`: its seams
    raise their Redis outages so) is a `StartError`, an address it cannot listen on a
    `ConfigError` (`zuulpush.binding`), after what had started is stopped again."""
    from zuulpush.binding import ListenError

    try:
        await app.start()
    except (Unavailable, ListenError) as exc:
        with contextlib.suppress(Exception):
            await app.stop(0.0)
        if isinstance(exc, ListenError):
            raise ConfigError(str(exc)) from None
        raise StartError(f"cannot start: {exc.message}") from None


async def _run_until_signal(app: A, banner: Callable[[A], str],
                            lifeline_fd: int | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if lifeline_fd is not None:  # only ever readable at its end: then stop, as on SIGTERM
        def supervisor_gone() -> None:
            loop.remove_reader(lifeline_fd)
            stop.set()

        loop.add_reader(lifeline_fd, supervisor_gone)
    await _start(app)
    gc.freeze()  # what start-up made lives as long as the process: no collection scans it again
    text = banner(app)
    if text:
        print(text, flush=True)
    edge = app.edge
    waits = [asyncio.ensure_future(stop.wait())]
    if edge is not None:
        waits.append(asyncio.ensure_future(edge.drained.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for waiting in waits:
        waiting.cancel()
    if edge is not None:  # a second signal during the drain cuts it short
        why = "SIGTERM or SIGINT" if stop.is_set() else "drained"
        stop.clear()
        drain = asyncio.ensure_future(edge.drain(why))
        cut = asyncio.ensure_future(stop.wait())
        await asyncio.wait([drain, cut], return_when=asyncio.FIRST_COMPLETED)
        cut.cancel()
    logging.getLogger("zuulpush").info("shutting down")
    await app.stop()
