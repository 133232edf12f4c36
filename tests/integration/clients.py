"""Client-side helpers for the integration tier: raw sockets, SSE parsing, curl, the push API.

Everything here is bounded: every read has a timeout, every loop a count, and every process we
start is ended by its own PID. Only loopback addresses are used.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.support.procs import wait_or_kill

WAIT_S = 5.0
"""Default bound on any single wait for something the server should do promptly."""

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def host_port(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None, base_url
    return parts.hostname, parts.port


def ws_url(edge: str, path: str = "/ws", **query: str) -> str:
    """`ws://` URL for `edge` (an `http://host:port` base) with a query string."""
    host, port = host_port(edge)
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return f"ws://{host}:{port}{path}" + (f"?{qs}" if qs else "")


# WebSocket clients (the websockets library)

def ws_connect(url: str, **kwargs: Any) -> connect:
    """websockets' client with test-friendly bounds and no proxy lookup."""
    kwargs.setdefault("open_timeout", WAIT_S)
    kwargs.setdefault("close_timeout", 2)
    kwargs.setdefault("proxy", None)
    return connect(url, **kwargs)


async def ws_recv_json(ws: ClientConnection, timeout_s: float = WAIT_S) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout_s)
    message = orjson.loads(raw)
    assert isinstance(message, dict)
    return message


async def ws_recv_ids(ws: ClientConnection, n: int, timeout_s: float = WAIT_S) -> list[str]:
    """The ids of the next `n` messages, all within `timeout_s`."""
    async def collect() -> list[str]:
        return [(await ws_recv_json(ws, timeout_s))["id"] for _ in range(n)]
    return await asyncio.wait_for(collect(), timeout_s)


# The push-send API (aiohttp)

@dataclass
class PushApi:
    """POST /v1/push through one aiohttp session."""

    session: aiohttp.ClientSession
    base: str
    key: str

    async def push(self, body: Any, *, key: str | None = None) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.session.post(
            self.base + "/v1/push", data=data,
            headers={"Authorization": f"Bearer {key or self.key}"},
            timeout=aiohttp.ClientTimeout(total=WAIT_S),
        ) as response:
            assert response.content_type == "application/json", response.content_type
            return response.status, orjson.loads(await response.read())

    async def send(self, data: Any, **to: Any) -> str:
        """Push `data` to the target `to` names; asserts 202 and returns the message id."""
        status, body = await self.push({"to": to, "data": data})
        assert status == 202, body
        return str(body["id"])


@contextlib.asynccontextmanager
async def push_api(base: str, key: str) -> AsyncIterator[PushApi]:
    async with aiohttp.ClientSession() as session:
        yield PushApi(session, base, key)


# Server-Sent Events

@dataclass
class SseEvent:
    id: str | None = None
    event: str = "message"
    data: str = ""
    retry: int | None = None

    def json(self) -> Any:
        return orjson.loads(self.data)


@dataclass
class SseParser:
    """Incremental `text/event-stream` parser (comments and keepalives skipped)."""

    _buffer: str = ""
    _current: dict[str, Any] = field(default_factory=dict)

    def feed(self, text: str) -> list[SseEvent]:
        self._buffer += text
        events: list[SseEvent] = []
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            line = line.rstrip("\r")
            if not line:
                if self._current:
                    events.append(_sse_event(self._current))
                self._current = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data" and "data" in self._current:
                value = self._current["data"] + "\n" + value
            self._current[name] = value
        return events


def _sse_event(fields: dict[str, Any]) -> SseEvent:
    retry = fields.get("retry")
    return SseEvent(id=fields.get("id"), event=fields.get("event", "message"),
                    data=fields.get("data", ""), retry=int(retry) if retry else None)


class SseStream:
    """Events from an aiohttp streaming response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._parser = SseParser()
        self._pending: list[SseEvent] = []

    async def next(self, timeout_s: float = WAIT_S, *, messages_only: bool = True) -> SseEvent:
        """The next event (by default the next one carrying data, skipping `retry:` only ones)."""
        async def read() -> SseEvent:
            for _ in range(100_000):
                while self._pending:
                    event = self._pending.pop(0)
                    if event.data or not messages_only:
                        return event
                chunk = await self.response.content.readline()
                if not chunk:
                    raise EOFError("event stream ended")
                self._pending.extend(self._parser.feed(chunk.decode()))
            raise AssertionError("too many lines without an event")
        return await asyncio.wait_for(read(), timeout_s)


@contextlib.asynccontextmanager
async def sse_stream(
    session: aiohttp.ClientSession, edge: str, token: str, *, last_event_id: str | None = None,
) -> AsyncIterator[SseStream]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with session.get(f"{edge}/sse", params={"token": token}, headers=headers,
                           timeout=aiohttp.ClientTimeout(total=None, sock_connect=WAIT_S)
                           ) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        stream = SseStream(response)
        # The stream opens with a `retry:` event: once it is here the device is connected.
        first = await stream.next(messages_only=False)
        assert first.retry is not None, first
        yield stream


# curl -N

class Curl:
    """A `curl` process (started by argv, never through a shell), reading its stdout as lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.parser = SseParser()
        self._pending: list[SseEvent] = []

    @classmethod
    async def start(cls, *args: str) -> Curl:
        proc = await asyncio.create_subprocess_exec(
            "curl", "--silent", "--show-error", "--noproxy", "*", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        return cls(proc)

    async def next_event(self, timeout_s: float = WAIT_S, *, messages_only: bool = True
                         ) -> SseEvent:
        async def read() -> SseEvent:
            assert self.proc.stdout is not None
            for _ in range(100_000):
                while self._pending:
                    event = self._pending.pop(0)
                    if event.data or not messages_only:
                        return event
                line = await self.proc.stdout.readline()
                if not line:
                    raise EOFError(f"curl ended: {await self.stderr()}")
                self._pending.extend(self.parser.feed(line.decode()))
            raise AssertionError("too many lines without an event")
        return await asyncio.wait_for(read(), timeout_s)

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        with contextlib.suppress(TimeoutError):
            return (await asyncio.wait_for(self.proc.stderr.read(), 1.0)).decode()
        return ""

    async def output(self, timeout_s: float) -> tuple[int, bytes, bytes]:
        """Wait for curl to end by itself; its exit code, stdout and stderr."""
        stdout, stderr = await asyncio.wait_for(self.proc.communicate(), timeout_s)
        assert self.proc.returncode is not None
        return self.proc.returncode, stdout, stderr

    async def stop(self) -> None:
        """End this curl (SIGTERM to its PID, then SIGKILL) and reap it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            await wait_or_kill(self.proc, 3.0)
        # Drain the pipes so their transports close before the loop does.
        await asyncio.wait_for(self.proc.communicate(), 3.0)


@contextlib.asynccontextmanager
async def curl_sse(edge: str, token: str, *, max_time_s: float = 20.0,
                   headers: Sequence[str] = (), extra: Sequence[str] = ()) -> AsyncIterator[Curl]:
    """`curl -N` on the SSE endpoint, connected (its `retry:` event read) when entered; `extra`
    are more curl arguments (e.g. `--cacert FILE`)."""
    args = ["-N", "--max-time", str(max_time_s), *extra]
    for header in headers:
        args += ["-H", header]
    curl = await Curl.start(*args, f"{edge}/sse?token={token}")
    try:
        first = await curl.next_event(messages_only=False)
        assert first.retry is not None, first
        yield curl
    finally:
        await curl.stop()


# Raw sockets: HTTP exchanges and hand-made WebSocket frames

@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self.headers
        return orjson.loads(self.body)


def parse_http_answer(raw: bytes) -> HttpAnswer:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        # Repeated fields combine into one comma-separated value (RFC 9110 section 5.3).
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"]), (headers, body)
    return HttpAnswer(int(status), headers, body)


async def read_to_eof(reader: asyncio.StreamReader, timeout_s: float = WAIT_S,
                      limit: int = 1 << 20) -> bytes:
    """Everything until the server closes, which must happen within `timeout_s`."""
    async def read() -> bytes:
        data = b""
        while len(data) <= limit:
            chunk = await reader.read(65536)
            if not chunk:
                return data
            data += chunk
        raise AssertionError("server sent more than expected without closing")
    return await asyncio.wait_for(read(), timeout_s)


@contextlib.asynccontextmanager
async def raw_connection(base: str) -> AsyncIterator[tuple[asyncio.StreamReader,
                                                           asyncio.StreamWriter]]:
    host, port = host_port(base)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), WAIT_S)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(writer.wait_closed(), WAIT_S)


async def http_exchange(base: str, request: bytes, timeout_s: float = WAIT_S) -> HttpAnswer:
    """Send raw request bytes; the answer the server gives before it closes the connection."""
    async with raw_connection(base) as (reader, writer):
        writer.write(request)
        await writer.drain()
        return parse_http_answer(await read_to_eof(reader, timeout_s))


WS_KEY = base64.b64encode(b"0123456789abcdef").decode()


def ws_request(path: str, *, host: str = "127.0.0.1", extra: Sequence[str] = (),
               upgrade: bool = True) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {WS_KEY}",
                  "Sec-WebSocket-Version: 13"]
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def raw_ws_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           path: str) -> None:
    """Upgrade by hand; asserts 101 and leaves the stream at the first frame."""
    writer.write(ws_request(path))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    assert head.startswith(b"HTTP/1.1 101 "), head


def client_frame(opcode: int, payload: bytes, *, fin: bool = True,
                 mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """A masked client frame (RFC 6455 section 5.2), whatever the payload holds."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


async def read_frame(reader: asyncio.StreamReader, timeout_s: float = WAIT_S
                     ) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""
    async def read() -> tuple[int, bytes]:
        first, second = await reader.readexactly(2)
        assert not second & 0x80, "server frames must not be masked"
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        return first & 0x0F, await reader.readexactly(n)
    return await asyncio.wait_for(read(), timeout_s)


async def read_close(reader: asyncio.StreamReader, timeout_s: float = WAIT_S
                     ) -> tuple[int, str]:
    """Skip data and ping frames up to the close frame; its (code, reason)."""
    for _ in range(1000):
        opcode, payload = await read_frame(reader, timeout_s)
        if opcode == OP_CLOSE:
            assert len(payload) >= 2, payload
            (code,) = struct.unpack("!H", payload[:2])
            return code, payload[2:].decode()
    raise AssertionError("no close frame within 1000 frames")
