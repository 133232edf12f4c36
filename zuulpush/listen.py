"""`zuulpush listen`: a minimal WebSocket device for trying a server out.

Connects to a device URL (`ws://host:port/ws?token=...`), prints each pushed message as one JSON
line on stdout, acknowledges it, and exits when the server closes the connection (printing the
close code and reason on stderr). The full client, with reconnects and resume, is the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import aiohttp
import orjson


async def listen(url: str, *, count: int | None = None, timeout_s: float | None = None) -> int:
    """Print messages until the server closes, `count` messages arrived or `timeout_s` passed.
    Returns a process exit code: 0 on a normal end, 1 if the connection failed."""
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(url, heartbeat=None, autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            print(f"zuulpush listen: handshake refused: HTTP {exc.status} {exc.message}",
                  file=sys.stderr)
            return 1
        except aiohttp.ClientError as exc:
            print(f"zuulpush listen: cannot connect: {exc}", file=sys.stderr)
            return 1
        async with ws:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_receive(ws, count), timeout_s)
    return 0


async def _receive(ws: aiohttp.ClientWebSocketResponse, count: int | None) -> None:
    received = 0
    while count is None or received < count:
        frame = await ws.receive()
        if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                          aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
            print(f"zuulpush listen: closed {ws.close_code} {frame.extra or ''}".rstrip(),
                  file=sys.stderr)
            return
        if frame.type is not aiohttp.WSMsgType.TEXT:
            continue
        print(frame.data, flush=True)
        message = orjson.loads(frame.data)
        await ws.send_str(orjson.dumps({"type": "ack", "id": message["id"]}).decode())
        received += 1
