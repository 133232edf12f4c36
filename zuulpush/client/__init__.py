"""zuulpush.client: the device SDK (asyncio, on aiohttp's client).

    from zuulpush.client import PushClient

    async with PushClient("http://127.0.0.1:8080", token) as client:
        async for message in client:          # acked once you ask for the next one
            print(message.topic, message.data)

It keeps one WebSocket (or SSE) connection to an edge up: it reconnects with exponential backoff
and full jitter, honours the server's hints (go-away `reconnect_after_ms`, `Retry-After`, SSE
`retry:`), asks a token provider for a new token after a 401, resumes after the last message it
processed, acks what it processed (batched) and drops repeats by id. See docs/client.md.

Layout: `backoff`, `policy`, `wire`, `dedup` and `sse` are sans I/O (no sockets, no awaits);
`transport` (WebSocket and SSE on aiohttp) and `session` (`PushClient`) do the I/O.
"""

from __future__ import annotations

from zuulpush.client.backoff import Backoff
from zuulpush.client.errors import AuthError, ConnectError, PushClientError, ReplacedError
from zuulpush.client.session import ClientState, ClientStats, PushClient
from zuulpush.client.wire import Message

__all__ = [
    "AuthError",
    "Backoff",
    "ClientState",
    "ClientStats",
    "ConnectError",
    "Message",
    "PushClient",
    "PushClientError",
    "ReplacedError",
]
