"""The two device transports on aiohttp's client, as strategy objects (Zuul's PushProtocol, from
the device's side): how to open a connection, read what the server sends, ack, and close.

`open()` returns a `Link` or raises `ConnectFailed` carrying the `Failed` outcome (HTTP status,
`Retry-After`). `Link.receive()` returns the next `Frame` (a message's text) or the `Closed`
outcome that ended the connection; the session decides the rest (policy.py). Only this module
and session.py touch aiohttp.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
import logging
import ssl as ssl_module
import time
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson

from zuulpush.client.backoff import parse_retry_after
from zuulpush.client.policy import Closed, Failed
from zuulpush.client.sse import SseParser, SseProtocolError
from zuulpush.client.wire import close_hint, endpoint, hint_ms

log = logging.getLogger("zuulpush.client")

CLOSE_TIMEOUT_S = 2.0
"""How long a closing handshake may take before the socket is dropped."""

MAX_ERROR_BODY = 4096
SslOption = ssl_module.SSLContext | bool
"""aiohttp's `ssl`: True verifies with the default CA store, False does not verify, or a context."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One message's text as received; `event_id` is an SSE event's `id:` (None on WebSocket)."""

    raw: str
    event_id: str | None = None


class ConnectFailed(Exception):
    def __init__(self, outcome: Failed) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


class Link(Protocol):
    """An open device connection."""

    async def receive(self, idle_timeout_s: float | None) -> Frame | Closed:
        """The next message, or how the connection ended (also after `idle_timeout_s` without
        any traffic, heartbeats included). After a Closed, only `close()` may be called."""

    async def send_ack(self, frame: str) -> None:
        """Send one ack frame; a no-op where the transport has no upstream (SSE)."""

    async def close(self) -> None:
        """Close (WebSocket: 1000 and the closing handshake, bounded). Idempotent."""


class Transport(Protocol):
    name: str
    can_ack: bool

    async def open(self, http: aiohttp.ClientSession, base_url: str, token: str, *,
                   last_id: str | None, timeout_s: float, ssl: SslOption) -> Link: ...


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _retry_after(headers: object) -> float | None:
    value = headers.get("Retry-After") if isinstance(headers, collections.abc.Mapping) else None
    return parse_retry_after(value, time.time())


# WebSocket

class WebSocketTransport:
    """`GET /ws` upgraded; the token in `Authorization: Bearer` (kept out of URLs and logs), the
    resume point as `?last_id=`. aiohttp answers the server's pings by itself."""

    name = "ws"
    can_ack = True

    async def open(self, http: aiohttp.ClientSession, base_url: str, token: str, *,
                   last_id: str | None, timeout_s: float, ssl: SslOption) -> Link:
        url = endpoint(base_url, "ws", last_id=last_id)
        try:
            async with asyncio.timeout(timeout_s):
                ws = await http.ws_connect(
                    url, headers={"Authorization": f"Bearer {token}"}, autoping=True,
                    heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S),
                    ssl=ssl)
        except aiohttp.WSServerHandshakeError as exc:
            raise ConnectFailed(_handshake_refused(exc)) from None
        except TimeoutError:
            raise ConnectFailed(Failed(None, f"no handshake within {timeout_s} s")) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectFailed(Failed(None, _describe(exc))) from None
        return WebSocketLink(ws)


def _handshake_refused(exc: aiohttp.WSServerHandshakeError) -> Failed:
    """aiohttp does not read the body of a refused upgrade: the reason is the status phrase."""
    if exc.status == 101:  # switched protocols, then a bad handshake
        return Failed(None, f"bad WebSocket handshake: {exc.message}")
    try:
        reason = http.HTTPStatus(exc.status).phrase
    except ValueError:
        reason = exc.message
    return Failed(exc.status, reason, _retry_after(exc.headers))


class WebSocketLink:
    __slots__ = ("_ws",)

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    async def receive(self, idle_timeout_s: float | None) -> Frame | Closed:
        while True:
            try:
                msg = await self._ws.receive(timeout=idle_timeout_s)
            except TimeoutError:
                return Closed(None, f"no traffic for {idle_timeout_s} s")
            if msg.type is aiohttp.WSMsgType.TEXT:
                return Frame(msg.data)
            if msg.type is aiohttp.WSMsgType.CLOSE:
                reason = msg.extra or ""
                return Closed(msg.data, reason, close_hint(msg.data, reason))
            if msg.type is aiohttp.WSMsgType.ERROR:
                return Closed(None, f"protocol error: {_describe(msg.data)}")
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return Closed(None, "connection lost")
            log.warning("ignoring a %s frame: the server sends text frames only", msg.type.name)

    async def send_ack(self, frame: str) -> None:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await self._ws.send_str(frame)

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, TimeoutError):
            await self._ws.close()


# Server-Sent Events

class SseTransport:
    """`GET /sse` with `Accept: text/event-stream`; the token in `Authorization: Bearer`, the
    resume point in `Last-Event-ID` (which is also the ack: the edge removes everything up to it
    from the inbox). No upstream: `send_ack` does nothing."""

    name = "sse"
    can_ack = False

    async def open(self, http: aiohttp.ClientSession, base_url: str, token: str, *,
                   last_id: str | None, timeout_s: float, ssl: SslOption) -> Link:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache",
                   "Authorization": f"Bearer {token}"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        try:
            async with asyncio.timeout(timeout_s):
                response = await http.get(endpoint(base_url, "sse"), headers=headers, ssl=ssl)
                if response.status != 200:
                    raise ConnectFailed(await _refusal(response))
        except TimeoutError:
            raise ConnectFailed(Failed(None, f"no response within {timeout_s} s")) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectFailed(Failed(None, _describe(exc))) from None
        if response.content_type != "text/event-stream":
            response.close()
            raise ConnectFailed(Failed(None, f"not an event stream: {response.content_type}"))
        return SseLink(response)


async def _refusal(response: aiohttp.ClientResponse) -> Failed:
    """The Failed outcome of a non-200 answer: its status, its JSON error message if it has one,
    and `Retry-After`."""
    try:
        body = await response.content.read(MAX_ERROR_BODY)
    finally:
        response.close()
    reason = response.reason or ""
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
        reason = str(orjson.loads(body)["error"]["message"])
    return Failed(response.status, reason, _retry_after(response.headers))


class SseLink:
    """An open event stream. A `reconnect` event (`{"code", "reason", "reconnect_after_ms"}`)
    ends it at once; the stream's last `retry:` is passed on as a floor for plain ends."""

    __slots__ = ("_frames", "_parser", "_response")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._parser = SseParser()
        self._frames: collections.deque[Frame] = collections.deque()

    async def receive(self, idle_timeout_s: float | None) -> Frame | Closed:
        while not self._frames:
            try:
                async with asyncio.timeout(idle_timeout_s):
                    chunk = await self._response.content.readany()
            except TimeoutError:
                return self._ended(f"no traffic for {idle_timeout_s} s")
            except (aiohttp.ClientError, OSError) as exc:
                return self._ended(f"connection lost: {_describe(exc)}")
            if not chunk:
                return self._ended("stream ended")
            try:
                events = self._parser.feed(chunk)
            except SseProtocolError as exc:
                return self._ended(f"malformed stream: {exc}")
            for event in events:
                if event.event == "reconnect":
                    return _reconnect(event.data)
                if event.event == "message":
                    self._frames.append(Frame(event.data, event.id or None))
        return self._frames.popleft()

    def _ended(self, reason: str) -> Closed:
        return Closed(None, reason, floor_ms=self._parser.retry_ms)

    async def send_ack(self, frame: str) -> None:
        return None

    async def close(self) -> None:
        self._response.close()


def _reconnect(data: str) -> Closed:
    """The Closed outcome an SSE `reconnect` event announces."""
    try:
        hint = orjson.loads(data)
    except orjson.JSONDecodeError:
        hint = None
    if not isinstance(hint, dict):
        return Closed(None, "reconnect event without a JSON object")
    code = hint.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        code = None
    return Closed(code, str(hint.get("reason", "")), hint_ms(data))


TRANSPORTS: dict[str, Transport] = {"ws": WebSocketTransport(), "sse": SseTransport()}
