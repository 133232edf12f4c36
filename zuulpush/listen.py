"""`zuulpush listen`: a minimal device for trying a server out, on the client SDK.

Connects to a device URL (`ws://host:port/ws?token=...`, or `http://host:port/sse?token=...` for
Server-Sent Events; `&last_id=ID` resumes after ID), prints each pushed message as one JSON line
on stdout, acknowledges it, and exits when the server closes the connection (printing the close
code and reason on stderr). With `reconnect=True` it instead stays, reconnecting and resuming as
`zuulpush.client.PushClient` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from urllib.parse import parse_qs, urlsplit, urlunsplit

from zuulpush.client import PushClient, PushClientError
from zuulpush.client.transport import SslOption


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
    """Print messages until the server closes, `count` messages arrived or `timeout_s` passed.
    `ssl` is `PushClient`'s (wss:// and https:// URLs). Returns a process exit code: 0 on a
    normal end, 1 if the connection failed."""
    try:
        base, transport, token, last_id = split_device_url(url)
        client = PushClient(base, token, transport=transport, last_id=last_id,
                            reconnect=reconnect, auto_ack=False, ssl=ssl)
    except ValueError as exc:
        print(f"zuulpush listen: {exc}", file=sys.stderr)
        return 1
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
