"""Cheap benchmark devices: raw WebSocket (or SSE) clients on `asyncio.Protocol`, many per process.

The fan-out and connect-cost benchmarks need tens of thousands of devices whose own cost does
not limit what they measure. A `Device` speaks just enough RFC 6455 by hand (perf/rawws.py's
frames, without a StreamReader per socket): it counts the text frames it receives, answers
pings, and with `ack` acknowledges each message by id (`{"type":"ack","id":...}`, masked with a
zero key). An SSE device counts `data:` events.

A `Fleet` (the parent's side) starts the client processes, each on its own loopback source
address, and talks to them over pipes: `connect()` opens every device as fast as the clients can
(at most `concurrency` handshakes in flight per process), `report()` sums what they have
received. A connect the edge sheds (503) is tried again after the answer's `Retry-After` (at
most `MAX_RETRY_AFTER_S`), up to `attempts` tries in all; a device still shed then, or refused
otherwise, counts as failed. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import multiprocessing as mp
import os
import random
import re
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

_UPGRADE = ("GET /ws?token={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
_SSE = "GET /sse?token={token} HTTP/1.1\r\nHost: {host}\r\n\r\n"
_RETRY_AFTER = re.compile(rb"\r\nretry-after:\s*(\d+)", re.IGNORECASE)
MAX_RETRY_AFTER_S = 30.0
"""The longest a shed device waits before its next try, whatever the edge's Retry-After."""


@dataclass(slots=True)
class Tally:
    """What one client process's devices have received so far."""

    messages: int = 0
    first_at: float = 0.0  # time.time() of the first message, 0 if none
    last_at: float = 0.0
    acks: int = 0
    closed: int = 0


class Device(asyncio.Protocol):
    """One device connection: handshake, then count messages (and answer pings, ack).

    `opened` is answered with the handshake's outcome: True (upgraded, or the SSE stream is
    open), False (refused otherwise, or closed first), or for a shed connect (503) the seconds
    its `Retry-After` asks to wait (1.0 without one)."""

    __slots__ = ("_ack", "_buf", "_sse", "_tally", "open", "opened", "request", "transport")

    def __init__(self, request: bytes, tally: Tally, opened: asyncio.Future[bool | float], *,
                 ack: bool, sse: bool) -> None:
        self.request = request
        self._tally = tally
        self._ack = ack
        self._sse = sse
        self._buf = b""
        self.open = False  # the handshake succeeded
        self.opened: asyncio.Future[bool | float] | None = opened
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open:  # closed after it opened (a refused or shed attempt is not counted)
            self._tally.closed += 1
        if self.opened is not None and not self.opened.done():
            self.opened.set_result(False)
        self.opened = None

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        if self.opened is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            outcome = _outcome(buf[:end + 2], self._sse)
            self.open = outcome is True
            if not self.opened.done():
                self.opened.set_result(outcome)
            self.opened = None
            buf = buf[end + 4:]
        self._buf = self._sse_events(buf) if self._sse else self._frames(buf)

    def _sse_events(self, buf: bytes) -> bytes:
        n = buf.count(b"\ndata:") + buf.startswith(b"data:")
        if n:
            self._received(n)
        return b""  # an event cut in two is counted once, by its `data:` line

    def _frames(self, buf: bytes) -> bytes:
        pos, size = 0, len(buf)
        while size - pos >= 2:
            length, head = buf[pos + 1] & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            end = pos + head + length
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 0x1:
                self._received(1)
                if self._ack:
                    self._send_ack(buf[pos + head:end])
            elif opcode == 0x9:
                self._send(0xA, buf[pos + head:end])
            pos = end
        return buf[pos:]

    def _received(self, n: int) -> None:
        tally = self._tally
        now = time.time()
        if not tally.messages:
            tally.first_at = now
        tally.messages += n
        tally.last_at = now

    def _send_ack(self, message: bytes) -> None:
        start = message.find(b'"id":"') + 6
        if start < 6:
            return
        ident = message[start:message.index(b'"', start)]
        self._send(0x1, b'{"type":"ack","id":"' + ident + b'"}')
        self._tally.acks += 1

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and len(payload) < 126:
            self.transport.write(bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0"
                                 + payload)


def _outcome(head: bytes, sse: bool) -> bool | float:
    """What an answer's head means for a device: True open, a float the Retry-After (seconds)
    of a shed connect, False anything else."""
    if head.startswith(b"HTTP/1.1 200" if sse else b"HTTP/1.1 101"):
        return True
    if not head.startswith(b"HTTP/1.1 503"):
        return False
    retry_after = _RETRY_AFTER.search(head)
    return float(retry_after.group(1)) if retry_after else 1.0


# one client process

def _client_main(pipe: Connection, host: str, port: int, source: str, tokens: list[str],
                 options: dict[str, Any]) -> None:
    import uvloop

    uvloop.run(_client(pipe, host, port, source, tokens, options))


async def _client(pipe: Connection, host: str, port: int, source: str, tokens: list[str],
                  options: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    tally = Tally()
    sse = options["transport"] == "sse"
    template = _SSE if sse else _UPGRADE
    devices: list[Device] = []
    commands: asyncio.Queue[Any] = asyncio.Queue()

    def read_command() -> None:
        try:
            commands.put_nowait(pipe.recv())
        except (EOFError, OSError):  # the parent is gone (killed, or died): end, not spin
            loop.remove_reader(pipe.fileno())
            commands.put_nowait("gone")

    loop.add_reader(pipe.fileno(), read_command)
    pipe.send("ready")
    while True:
        command = await commands.get()
        if command == "connect":
            started = time.time()
            opened, failed, sheds = await _open_all(loop, host, port, source, tokens, template,
                                                    tally, options, devices)
            pipe.send({"opened": opened, "failed": failed, "sheds": sheds, "started": started,
                       "done": time.time()})
        elif command == "report":
            pipe.send({"messages": tally.messages, "first_at": tally.first_at,
                       "last_at": tally.last_at, "acks": tally.acks, "closed": tally.closed})
        elif command in ("quit", "gone"):
            for device in devices:
                if device.transport is not None:
                    device.transport.abort()
            await asyncio.sleep(0.1)
            if command == "quit":
                pipe.send("bye")
            return


async def _open_all(loop: asyncio.AbstractEventLoop, host: str, port: int, source: str,
                    tokens: list[str], template: str, tally: Tally, options: dict[str, Any],
                    devices: list[Device]) -> tuple[int, int, int]:
    """Open a device per token; (opened, failed, shed answers received on the way)."""
    sem = asyncio.Semaphore(options["concurrency"])
    timeout_s = options["connect_timeout_s"]
    sheds = 0

    async def attempt(token: str) -> bool | float:
        async with sem:
            key = base64.b64encode(os.urandom(16)).decode()
            request = template.format(token=token, host=host, key=key).encode()
            opened: asyncio.Future[bool | float] = loop.create_future()
            device = Device(request, tally, opened, ack=options["ack"], sse=template is _SSE)
            try:
                await asyncio.wait_for(loop.create_connection(
                    lambda: device, host, port, local_addr=(source, 0)), timeout_s)
                outcome = await asyncio.wait_for(opened, timeout_s)
            except (OSError, TimeoutError):
                outcome = False
            if outcome is True:
                devices.append(device)
            elif device.transport is not None:
                device.transport.abort()
            return outcome

    async def one(token: str) -> bool:
        nonlocal sheds
        for _ in range(options["attempts"]):
            outcome = await attempt(token)
            if isinstance(outcome, bool):
                return outcome
            sheds += 1  # shed: wait as told (a little jitter on the whole seconds), then again
            await asyncio.sleep(min(outcome, MAX_RETRY_AFTER_S) * random.uniform(1.0, 1.1))
        return False

    results = await asyncio.gather(*(one(t) for t in tokens))
    return sum(results), len(results) - sum(results), sheds


# the parent's side

class Fleet:
    """Client processes holding devices; `tokens[i]` is the i-th process's devices' tokens."""

    def __init__(self, host: str, port: int, tokens: list[list[str]], *, transport: str = "ws",
                 ack: bool = False, concurrency: int = 200, connect_timeout_s: float = 30.0,
                 attempts: int = 5, source_base: int = 1) -> None:
        ctx = mp.get_context("spawn")
        options = {"transport": transport, "ack": ack, "concurrency": concurrency,
                   "connect_timeout_s": connect_timeout_s, "attempts": attempts}
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for i, chunk in enumerate(tokens):
            parent, child = ctx.Pipe()
            source = f"127.{source_base}.{1 + i // 200}.{2 + i % 200}"
            proc = ctx.Process(target=_client_main,
                               args=(child, host, port, source, chunk, options), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        for pipe in self.pipes:
            _recv(pipe, 120.0)

    def connect(self, timeout_s: float = 300.0) -> dict[str, Any]:
        """Open every device (all processes at once); opened, failed, shed answers on the way
        (`sheds`), wall seconds."""
        for pipe in self.pipes:
            pipe.send("connect")
        reports = [_recv(pipe, timeout_s) for pipe in self.pipes]
        return {"opened": sum(r["opened"] for r in reports),
                "failed": sum(r["failed"] for r in reports),
                "sheds": sum(r["sheds"] for r in reports),
                "seconds": max(r["done"] for r in reports) - min(r["started"] for r in reports)}

    def report(self) -> dict[str, Any]:
        """Messages received by all devices, first and last arrival (time.time()), acks sent,
        connections closed."""
        for pipe in self.pipes:
            pipe.send("report")
        reports = [_recv(pipe, 30.0) for pipe in self.pipes]
        firsts = [r["first_at"] for r in reports if r["first_at"]]
        return {"messages": sum(r["messages"] for r in reports),
                "first_at": min(firsts, default=0.0),
                "last_at": max(r["last_at"] for r in reports),
                "acks": sum(r["acks"] for r in reports),
                "closed": sum(r["closed"] for r in reports)}

    def wait_for(self, messages: int, timeout_s: float, poll_s: float = 0.005) -> dict[str, Any]:
        """Poll until the devices have received `messages` in all (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            report = self.report()
            if report["messages"] >= messages or time.monotonic() >= deadline:
                return report
            time.sleep(poll_s)

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send("quit")
                _recv(pipe, 30.0)
            except (OSError, EOFError, TimeoutError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


def _recv(pipe: Connection, timeout_s: float) -> Any:
    if not pipe.poll(timeout_s):
        raise TimeoutError("a client process did not answer")
    return pipe.recv()


def split(items: list[str], per_process: int) -> list[list[str]]:
    return [items[i:i + per_process] for i in range(0, len(items), per_process)]
