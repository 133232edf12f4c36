"""`zuulpush listen`: a minimal device for trying a server out, on the client SDK
(docs/client.md, "`zuulpush listen`", says how it behaves).

It prints each pushed message as one JSON line on stdout and acknowledges it; with
`reconnect=True` it reconnects and resumes as `zuulpush.client.PushClient` does (the SDK's own
log lines on stderr), with `reconnect=False` it exits when the server closes the connection.
Whatever stops it for good is said once, on stderr, as `zuulpush listen: <why>` (exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit, urlunsplit

from zuulpush.client import PushClient, PushClientError
from zuulpush.client.transport import SslOption

SDK_LOGGER = "zuulpush.client"


def split_device_url(url: str) -> tuple[str, str, str, str | None]:
    """(edge base URL, transport, token, last id) from a device URL such as
    `ws://127.0.0.1:8080/ws?token=T&last_id=ID`."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    path = parts.path.rstrip("/")
    transport = "sse" if path.endswith("/sse") else "ws"
    base = urlunsplit((parts.scheme, parts.netloc, path.removesuffix("/" + transport), "", ""))
    last_id = query.get("last_id", [None])[0]
    return base, transport, query.get("token", [""])[0], last_id


async def listen(url: str, *, count: int | None = None, timeout_s: float | None = None,
                 reconnect: bool = False, ssl: SslOption = True) -> int:
    """Print messages until the server closes (or, with `reconnect`, until the client stops for
    good), `count` messages arrived or `timeout_s` passed. `ssl` is `PushClient`'s (wss:// and
    https:// URLs). Returns a process exit code: 0 on a normal end, 1 if the client stopped on
    an error (the connection failed, was refused or replaced). While it runs, the SDK's log
    lines go to stderr (module docstring)."""
    try:
        base, transport, token, last_id = split_device_url(url)
        client = PushClient(base, token, transport=transport, last_id=last_id,
                            reconnect=reconnect, auto_ack=False, ssl=ssl)
    except ValueError as exc:
        print(f"zuulpush listen: {exc}", file=sys.stderr)
        return 1
    with _sdk_lines_on_stderr():
        async with client:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_receive(client, count), timeout_s)
    if client.error is not None:
        print(f"zuulpush listen: {client.error}", file=sys.stderr)
        return 1
    return 0


async def _receive(client: PushClient, count: int | None) -> None:
    received = 0
    try:
        async for message in client:
            print(message.raw, flush=True)
            client.ack(message)
            received += 1
            if count is not None and received >= count:
                return
    except PushClientError:
        return  # listen() reports client.error
    stats = client.stats
    print(f"zuulpush listen: closed {stats.last_close_code} {stats.last_close_reason}".rstrip(),
          file=sys.stderr)


class _NotTheStop(logging.Filter):
    """Leaves out the SDK's record of the error that stopped it (`listen` says it itself): the
    one whose argument is a `PushClientError`."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(arg, PushClientError) for arg in args)


@contextlib.contextmanager
def _sdk_lines_on_stderr() -> Iterator[None]:
    """The SDK's log lines (reconnects at INFO and up) on stderr, as `zuulpush listen: ...`, and
    not also through the root logger, for the duration."""
    logger = logging.getLogger(SDK_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("zuulpush listen: %(message)s"))
    handler.addFilter(_NotTheStop())
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
