"""A listening address that cannot be had (taken by another process, not this host's, a port the
user may not bind): one start-up error naming the address and the setting that chose it.

`zuulpush.cli` prints a `ListenError` as one line and exits 2, as for a configuration error: the
operator has to change something (stop the other process, or choose another port) before a
restart can help, unlike `zuulpush.cli.running.StartError` (exit 1: a Redis that is not up yet).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


class ListenError(Exception):
    """`what` could not listen on `host:port`: `str()` is the operator's one line."""

    def __init__(self, what: str, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {address(host, port)} for {what}: {reason}")
        self.host = host
        self.port = port


def address(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def reason(exc: OSError) -> str:
    """The system's word for a bind failure ("address already in use"), without the
    event loop's wording around it."""
    if exc.errno:
        return os.strerror(exc.errno)[:1].lower() + os.strerror(exc.errno)[1:]
    return str(exc)


@contextlib.contextmanager
def listening(what: str, host: str, port: int) -> Iterator[None]:
    """Raise an OSError from binding inside the block as a `ListenError` for `what` (e.g. "the
    edge (--port)") on `host:port`."""
    try:
        yield
    except OSError as exc:
        raise ListenError(what, host, port, reason(exc)) from None
