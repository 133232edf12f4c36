"""Protocol tests of `EdgeConnection` and `EdgeServer` on a fake transport and a fake clock.

In the spirit of uvicorn's MockTransport/MockLoop: each test builds an `EdgeServer` on the
in-memory seams, makes connections with `EdgeConnection(server.connection_host)` and
`connection_made(fake)`,
feeds bytes with `data_received`, and fires what the server's tasks would (registry flushes,
heartbeat ticks, handshake expiry) by hand at chosen fake times. What the edge writes is read back
with independent parsers: wsproto as the WebSocket client, h11 as the SSE client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import h11
import orjson
import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from core.tokens import AuthConfig, TokenVerifier, issue_token
from registry.base import Registration
from registry.memory import MemoryRegistry
from router.base import BroadcastLog, Delivery, InboxEntry
from router.stores.memory import MemoryInbox, MemoryNodeChannel
from tests.support.clock import FakeClock
from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.protocol import HELD_MAX, EdgeConnection, shed_answer
from zuulpush.edge.server import EdgeServer
from zuulpush.edge.shedding import Shed
from zuulpush.edge.state import State
from zuulpush.edge.wsframes import Close

SECRET = "protocol-test-secret-of-at-least-32-bytes"
NOW_MS = 1_700_000_000_000
WS_KEY = base64.b64encode(b"sixteen byte key")
WS_ACCEPT = base64.b64encode(
    hashlib.sha1(WS_KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
HEARTBEAT_S = 30.0
HANDSHAKE_S = 10.0
M1, M2, M3, M4, M5, M6, M7, M8, M9 = (f"{'0' * 24}M{n}" for n in range(1, 10))
"""Message ids as devices resume from them (well formed, `core.ids`), in id order."""


# fakes


class FakeTransport:
    """Records what a connection does to its transport. Writing after close is a test failure:
    the edge promises to write nothing once it has started closing.

    Flow control works as in asyncio: by default the peer reads everything at once; after
    `stall()` written bytes stay buffered, and the write that takes the buffer over the high-water
    mark calls the protocol's `pause_writing()` from inside `write()`.
    """

    def __init__(self) -> None:
        self.protocol: EdgeConnection | None = None
        self.written = bytearray()
        self.closed = False
        self.half_closed = False
        self.aborted = False
        self.limits: tuple[int, int] | None = None
        self.buffer_size = 0
        self.stalled = False
        self.paused = False
        self.extra: dict[str, Any] = {"peername": ("203.0.113.7", 51000)}

    def write(self, data: bytes) -> None:
        assert not self.closed, f"write after close: {bytes(data)[:60]!r}"
        self.written += data
        if not self.stalled:
            return
        self.buffer_size += len(data)
        if self.limits and self.buffer_size > self.limits[0] and not self.paused:
            self.paused = True
            assert self.protocol is not None
            self.protocol.pause_writing()

    def drain(self) -> None:
        """The peer reads everything buffered; a paused protocol gets `resume_writing()`."""
        self.buffer_size = 0
        if self.paused:
            self.paused = False
            assert self.protocol is not None
            self.protocol.resume_writing()

    def stall(self, buffered: int = 0) -> None:
        """The peer stops reading, with `buffered` bytes already waiting."""
        self.stalled = True
        self.buffer_size = buffered

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Our side is shut (a FIN follows what was written): for these tests the edge is as
        done with the socket as after close(); `half_closed` tells the two apart."""
        self.closed = self.half_closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return self.buffer_size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        assert high is not None and low is not None
        self.limits = (high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)


class TlsFakeTransport(FakeTransport):
    """A TLS transport (uvloop's and asyncio's): no half-close; `close()` sends close_notify and
    reads, discarding, until the peer's."""

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS transports do not half-close")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def parse_response(data: bytes | bytearray) -> Response:
    """A `Connection: close` response with a Content-Length body, or a 101 head."""
    head, sep, rest = bytes(data).partition(b"\r\n\r\n")
    assert sep, f"incomplete response head: {bytes(data)!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    length = int(headers.get("content-length", "0"))
    assert len(rest) >= length
    return Response(int(status), headers, rest[:length])


def request(target: str, headers: Iterable[tuple[str, str]] = (), *,
            method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: edge.test",
             *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


UPGRADE = (("Upgrade", "websocket"), ("Connection", "Upgrade"),
           ("Sec-WebSocket-Key", WS_KEY.decode()), ("Sec-WebSocket-Version", "13"))


def token(client_id: str, device_type: str = "android", user_id: str = "user-1") -> str:
    return issue_token(SECRET, client_id=client_id, user_id=user_id, device_type=device_type)


class Device:
    """A device on one `EdgeConnection`: it sends bytes in and reads what the edge wrote."""

    def __init__(self, server: EdgeServer, *, tls: bool = False) -> None:
        self.transport = TlsFakeTransport() if tls else FakeTransport()
        self.conn = self.transport.protocol = EdgeConnection(server.connection_host)
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        self._frames_out = FrameProtocol(client=True, extensions=[])
        self._frames_in = FrameProtocol(client=True, extensions=[])
        self._read = 0

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)

    def response(self) -> Response:
        return parse_response(self.transport.written)

    def upgrade(self, target: str, extra: Iterable[tuple[str, str]] = ()) -> Response:
        """Send a WebSocket upgrade; on 101, later reads start after the head."""
        self.send(request(target, [*UPGRADE, *extra]))
        return self.response_head()

    def response_head(self) -> Response:
        """The response so far; on 101, frames are read from the end of its head."""
        response = self.response()
        if response.status == 101:
            self._read = bytes(self.transport.written).index(b"\r\n\r\n") + 4
        return response

    def frames(self) -> list[tuple[Opcode, Any]]:
        """Frames written since the last call, as a WebSocket client parses them."""
        new = bytes(self.transport.written[self._read:])
        self._read = len(self.transport.written)
        self._frames_in.receive_bytes(new)
        return [(frame.opcode, frame.payload) for frame in self._frames_in.received_frames()]

    def pushes(self) -> list[Any]:
        """The JSON of text frames written since the last read; fails on any other frame."""
        frames = self.frames()
        assert all(opcode is Opcode.TEXT for opcode, _ in frames), frames
        return [orjson.loads(payload) for _, payload in frames]

    def close_frame(self) -> tuple[int, str]:
        [(opcode, payload)] = self.frames()
        assert opcode is Opcode.CLOSE
        return payload

    def send_text(self, text: str) -> None:
        self.send(bytes(self._frames_out.send_data(text)))

    def send_binary(self, data: bytes) -> None:
        self.send(bytes(self._frames_out.send_data(data)))

    def ack(self, *ids: str) -> None:
        self.send_text(orjson.dumps({"type": "ack", "ids": list(ids)}).decode())

    def ping(self, payload: bytes = b"") -> None:
        self.send(bytes(self._frames_out.ping(payload)))

    def pong(self, payload: bytes = b"") -> None:
        self.send(bytes(self._frames_out.pong(payload)))

    def close(self, code: int | None = 1000, reason: str | None = None) -> None:
        self.send(bytes(self._frames_out.close(code, reason)))

    def lose(self) -> None:
        """What the loop does after a close or abort: tell the protocol the transport is gone."""
        self.conn.connection_lost(None)


class SseDevice:
    """A device reading Server-Sent Events, with h11 as its HTTP client."""

    def __init__(self, server: EdgeServer, target: str,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        self.transport = FakeTransport()
        self.conn = self.transport.protocol = EdgeConnection(server.connection_host)
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        self._h11 = h11.Connection(h11.CLIENT)
        data = self._h11.send(h11.Request(method="GET", target=target,
                                          headers=[("host", "edge.test"), *headers]))
        data += self._h11.send(h11.EndOfMessage())
        self._read = 0
        self.response: h11.Response | None = None
        self.ended = False
        self.conn.data_received(data)

    def read(self) -> bytes:
        """Body bytes written since the last call, de-chunked by h11."""
        new = bytes(self.transport.written[self._read:])
        self._read = len(self.transport.written)
        if new:  # h11 takes b"" to mean the peer closed
            self._h11.receive_data(new)
        body = b""
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                return body
            if isinstance(event, h11.Response):
                self.response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.ended = True
                return body

    def events(self) -> list[dict[str, str]]:
        events = []
        for block in self.read().decode().split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.split("\n")
                          if line and not line.startswith(":"))
            if fields:
                events.append(fields)
        return events


class Edge:
    """An `EdgeServer` on memory seams and a fake clock, and the means to drive it by hand."""

    def __init__(self, *, history: BroadcastLog | None = None, **config: Any) -> None:
        self.clock = FakeClock(5000.0)
        self.registry = MemoryRegistry(clock=self.clock)
        self.inbox = MemoryInbox(1000, clock_ms=lambda: NOW_MS)
        self.channel = MemoryNodeChannel(100)
        settings: dict[str, Any] = {"node_id": "edge-test-1", "heartbeat_interval_s": HEARTBEAT_S,
                                    "handshake_timeout_s": HANDSHAKE_S}
        settings.update(config)
        self.server = EdgeServer(
            EdgeConfig(**settings), verifier=TokenVerifier(AuthConfig(secret=SECRET)),
            registry=self.registry, inbox=self.inbox, channel=self.channel, clock=self.clock,
            history=history, rng=random.Random(0))

    def device(self, *, tls: bool = False) -> Device:
        return Device(self.server, tls=tls)

    def ws(self, client_id: str, *, device_type: str = "android", query: str = "",
           tls: bool = False) -> Device:
        device = self.device(tls=tls)
        response = device.upgrade(f"/ws?token={token(client_id, device_type)}{query}")
        assert response.status == 101, response
        return device

    def sse(self, client_id: str, *, query: str = "",
            headers: Iterable[tuple[str, str]] = ()) -> SseDevice:
        return SseDevice(self.server, f"/sse?token={token(client_id)}{query}", headers)

    async def flush(self) -> None:
        await self.server.registrar.flush()

    async def flush_marks(self) -> None:
        """What two rounds of the tick loop's mark timer write: every mark recorded so far."""
        self.server.registrar.marks_due()
        self.server.registrar.marks_due()
        await self.flush()

    def tick(self, seconds: float = HEARTBEAT_S) -> float:
        """Advance the clock (a heartbeat interval by default) and run what the tick loop
        (`Timers.run`) runs at that time."""
        now = self.clock.advance(seconds)
        self.server.timers.on_tick(now)
        return now

    async def store(self, client_id: str, *ids: str) -> None:
        for message_id in ids:
            await self.inbox.add([client_id], InboxEntry(message_id, payload(message_id),
                                                         NOW_MS + 60_000))

    async def stored(self, client_id: str) -> list[str]:
        return [entry.id for entry in await self.inbox.after(client_id, None, 1000)]

    def deliver(self, message_id: str, *clients: str, **kwargs: Any) -> None:
        self.server.deliver(Delivery(message_id, payload(message_id), clients, **kwargs))


def payload(message_id: str) -> bytes:
    return orjson.dumps({"id": message_id, "topic": "t", "ts": NOW_MS, "data": {"n": message_id}})


@pytest.fixture
def edge() -> Edge:
    return Edge()


# the WebSocket handshake


def test_websocket_handshake_is_answered_with_101_and_the_accept_value(edge: Edge) -> None:
    device = edge.ws("c1")
    response = device.response()
    assert response.status == 101
    assert response.headers["upgrade"].lower() == "websocket"
    assert response.headers["connection"].lower() == "upgrade"
    assert response.headers["sec-websocket-accept"] == WS_ACCEPT
    assert device.conn.state is State.REPLAYING
    assert edge.server.connections == {"c1": device.conn}
    assert edge.server.stats.connects == 1
    assert device.frames() == []  # nothing pushed before the replay


def test_connection_sets_its_write_buffer_limit(edge: Edge) -> None:
    device = edge.device()
    limit = edge.server.config.write_limit_bytes
    assert device.transport.limits == (limit, limit // 4)
    assert device.conn.state is State.HANDSHAKE


def test_handshake_split_over_many_reads(edge: Edge) -> None:
    device = edge.device()
    data = request(f"/ws?token={token('c1')}", UPGRADE)
    for i in range(len(data) - 1):
        device.send(data[i:i + 1])
        assert device.transport.written == b""
    device.send(data[-1:])
    assert device.response().status == 101


def test_frames_in_the_same_read_as_the_handshake_are_handled(edge: Edge) -> None:
    device = edge.device()
    ping = bytes(FrameProtocol(client=True, extensions=[]).ping(b"early"))
    device.send(request(f"/ws?token={token('c1')}", UPGRADE) + ping)
    assert device.response_head().status == 101
    assert device.frames() == [(Opcode.PONG, b"early")]


@pytest.mark.parametrize("extra", [[("Authorization", "Bearer x.y.z")], []],
                         ids=["bad-token", "no-token"])
def test_bad_token_is_401_before_any_upgrade(edge: Edge, extra: list[tuple[str, str]]) -> None:
    device = edge.device()
    response = device.upgrade("/ws", extra)
    assert response.status == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert response.json()["error"]["code"] == "invalid_token"
    assert b"101" not in bytes(device.transport.written).split(b"\r\n")[0]
    assert device.transport.closed and not device.transport.aborted
    assert device.conn.state is State.CLOSING
    assert edge.server.connections == {}
    assert edge.server.stats.rejects == {401: 1}
    device.send(b"more bytes after the answer")  # ignored: nothing written after close
    device.lose()
    assert device.conn.state is State.CLOSED


def test_expired_token_is_401(edge: Edge) -> None:
    old = issue_token(SECRET, client_id="c1", user_id="u", device_type="d", ttl_s=1, now=1.0)
    response = edge.device().upgrade(f"/ws?token={old}")
    assert response.status == 401
    assert "expired" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "target, headers, status",
    [
        ("/nope", UPGRADE, 404),
        ("/echo", UPGRADE, 404),  # echo is off by default
        ("/ws", UPGRADE[1:], 426),
        ("/ws", [*UPGRADE[:3], ("Sec-WebSocket-Version", "8")], 426),
        ("/ws", [UPGRADE[0], *UPGRADE[2:]], 400),
        ("/ws", [*UPGRADE[:2], ("Sec-WebSocket-Key", "short"), UPGRADE[3]], 400),
    ],
    ids=["unknown-path", "echo-disabled", "no-upgrade", "version-8", "no-connection-upgrade",
         "bad-key"],
)
def test_handshake_rejections_carry_their_status_and_json(
    edge: Edge, target: str, headers: list[tuple[str, str]], status: int
) -> None:
    device = edge.device()
    device.send(request(f"{target}?token={token('c1')}", headers))
    response = device.response()
    assert response.status == status
    assert set(response.json()["error"]) >= {"code", "message"}
    assert device.transport.closed
    assert edge.server.stats.rejects == {status: 1}


def test_405_names_the_allowed_method(edge: Edge) -> None:
    device = edge.device()
    device.send(request(f"/ws?token={token('c1')}", UPGRADE, method="POST"))
    response = device.response()
    assert (response.status, response.headers["allow"]) == (405, "GET")


def test_426_for_a_wrong_version_names_13(edge: Edge) -> None:
    device = edge.device()
    device.send(request(f"/ws?token={token('c1')}",
                        [*UPGRADE[:3], ("Sec-WebSocket-Version", "7")]))
    assert device.response().headers["sec-websocket-version"] == "13"


def test_oversized_head_arriving_in_pieces_is_431() -> None:
    edge = Edge(max_header_bytes=1024)
    device = edge.device()
    device.send(b"GET /ws HTTP/1.1\r\nHost: edge.test\r\n")
    for _ in range(20):
        if device.transport.closed:
            break
        device.send(b"X-Filler: " + b"f" * 100 + b"\r\n")
    assert device.response().status == 431
    assert device.transport.closed


def test_oversized_head_arriving_whole_is_431() -> None:
    edge = Edge(max_header_bytes=1024)
    device = edge.device()
    device.send(request(f"/ws?token={token('c1')}", [*UPGRADE, ("X-Filler", "f" * 1200)]))
    assert device.response().status == 431


@pytest.mark.parametrize(
    "data",
    [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",  # TLS hello
     b"GET /ws\r\n\r\n", b"HELLO\r\n\r\n", b"GET /ws HTTP/1.1\r\nbad header\r\n\r\n",
     b"GET /ws HTTP/1.1\r\n\r\n"],  # no Host
    ids=["tls", "http-0.9", "not-http", "bad-header", "no-host"],
)
def test_garbage_is_400(edge: Edge, data: bytes) -> None:
    device = edge.device()
    device.send(data)
    assert device.response().status == 400
    assert device.transport.closed


def test_http_1_0_is_400(edge: Edge) -> None:
    device = edge.device()
    device.send(request(f"/sse?token={token('c1')}", version="1.0"))
    assert device.response().status == 400


def test_handshake_deadline_answers_408(edge: Edge) -> None:
    start = edge.clock()
    slow = edge.device()
    slow.send(b"GET /ws HTTP/1.1\r\n")
    done = edge.ws("c1")
    edge.server.timers.expire_handshakes(start + HANDSHAKE_S - 0.001)
    assert not slow.transport.closed
    edge.server.timers.expire_handshakes(start + HANDSHAKE_S)
    response = slow.response()
    assert response.status == 408
    assert response.json()["error"]["code"] == "request_timeout"
    assert slow.transport.closed
    assert not done.transport.closed  # accepted in time: the deadline no longer applies
    assert not edge.server.timers.handshakes


def test_handshake_deadline_skips_connections_already_gone(edge: Edge) -> None:
    device = edge.device()
    device.lose()
    edge.server.timers.expire_handshakes(edge.clock.advance(HANDSHAKE_S))
    assert device.transport.written == b""


def test_handshake_deadline_fires_from_the_tick(edge: Edge) -> None:
    device = edge.device()
    edge.tick()  # a heartbeat interval is longer than the handshake timeout
    assert device.response().status == 408


# registration and replay


async def test_flush_registers_the_connection(edge: Edge) -> None:
    device = edge.ws("c1", device_type="ios")
    assert await edge.registry.lookup("c1") is None
    await edge.flush()
    reg = await edge.registry.lookup("c1")
    assert reg is not None and reg == device.conn.registration
    assert (reg.client_id, reg.user_id, reg.device_type, reg.node_id) == (
        "c1", "user-1", "ios", "edge-test-1")
    assert device.conn.state is State.OPEN
    assert [d.client_id for d in await edge.registry.devices_of_user("user-1")] == ["c1"]


async def test_flush_replays_the_inbox_in_id_order(edge: Edge) -> None:
    await edge.store("c1", "m3", "m1", "m2")
    await edge.store("other", "x1")
    device = edge.ws("c1")
    await edge.flush()
    assert [p["id"] for p in device.pushes()] == ["m1", "m2", "m3"]
    assert await edge.stored("c1") == ["m1", "m2", "m3"]  # replayed is not acked


async def test_resume_after_last_id_drops_what_the_device_has_seen(edge: Edge) -> None:
    await edge.store("c1", M1, M2, M3, M4)
    first = edge.ws("c1")
    await edge.flush()
    assert [p["id"] for p in first.pushes()] == [M1, M2, M3, M4]
    first.lose()
    await edge.flush()  # what it was given is recorded as it closes
    device = edge.ws("c1", query=f"&last_id={M2}")
    await edge.flush()
    assert [p["id"] for p in device.pushes()] == [M3, M4]
    assert await edge.stored("c1") == [M3, M4]


async def test_live_deliveries_during_replay_are_held_then_sent_without_duplicates(
    edge: Edge,
) -> None:
    await edge.store("c1", "m1", "m2", "m3")
    device = edge.ws("c1")
    edge.deliver("m2", "c1")  # also in the inbox: must not be sent twice
    edge.deliver("m4", "c1")
    edge.deliver("m5", "c1")
    assert device.frames() == []
    await edge.flush()
    assert [p["id"] for p in device.pushes()] == ["m1", "m2", "m3", "m4", "m5"]
    edge.deliver("m6", "c1")
    assert [p["id"] for p in device.pushes()] == ["m6"]


async def test_held_deliveries_are_sent_in_id_order_and_once(edge: Edge) -> None:
    await edge.store("c1", "m1")
    device = edge.ws("c1")
    for message_id in ("m5", "m3", "m1", "m4", "m3"):  # out of order, and m3 twice
        edge.deliver(message_id, "c1")
    await edge.flush()
    assert [p["id"] for p in device.pushes()] == ["m1", "m3", "m4", "m5"]


async def test_a_replay_longer_than_a_page_loses_nothing_on_resume() -> None:
    edge = Edge(replay_page_size=3)
    await edge.store("c1", M1, M2, M3, M4, M5)
    first = edge.sse("c1")
    await edge.flush()
    await edge.store("c1", M6)  # a router stores, then delivers
    edge.deliver(M6, "c1")
    seen = [e["id"] for e in first.events() if "id" in e]
    first.conn.connection_lost(None)
    again = edge.sse("c1", headers=[("last-event-id", seen[-1])])  # what EventSource does
    await edge.flush()
    seen += [e["id"] for e in again.events() if "id" in e]
    assert sorted(set(seen)) == [M1, M2, M3, M4, M5, M6]


async def test_pushes_carry_the_message_payload(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    edge.deliver("m1", "c1")
    assert device.pushes() == [orjson.loads(payload("m1"))]


async def test_deliveries_reach_only_the_named_clients(edge: Edge) -> None:
    one, two = edge.ws("c1"), edge.ws("c2")
    await edge.flush()
    edge.deliver("m1", "c2", "absent")
    assert (one.pushes(), [p["id"] for p in two.pushes()]) == ([], ["m1"])
    assert edge.server.stats.delivered == 1


async def test_broadcast_narrowed_to_device_types(edge: Edge) -> None:
    phone, tv = edge.ws("c1", device_type="ios"), edge.ws("c2", device_type="tv")
    await edge.flush()
    edge.deliver("m1", broadcast=True, device_types=frozenset({"tv"}))
    edge.deliver("m2", broadcast=True)
    assert [p["id"] for p in phone.pushes()] == ["m2"]
    assert [p["id"] for p in tv.pushes()] == ["m1", "m2"]


async def test_ack_frame_removes_inbox_entries_after_the_flush(edge: Edge) -> None:
    await edge.store("c1", "m1", "m2", "m3")
    device = edge.ws("c1")
    await edge.flush()
    device.ack("m1", "m3")
    device.send_text('{"type":"ack","id":"m2"}')
    assert await edge.stored("c1") == ["m1", "m2", "m3"]  # batched until the next flush
    await edge.flush()
    assert await edge.stored("c1") == []
    assert edge.server.stats.acks == 3
    assert not device.transport.closed


async def test_acks_sent_during_the_replay_are_kept(edge: Edge) -> None:
    await edge.store("c1", "m1", "m2")
    device = edge.ws("c1")
    device.ack("m1")
    await edge.flush()
    assert await edge.stored("c1") == ["m2"]


# heartbeats


async def test_heartbeat_pings_then_aborts_a_silent_device(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    edge.tick()
    assert device.frames() == [(Opcode.PING, b"")]
    assert not device.transport.closed
    edge.tick()
    assert device.transport.aborted
    assert edge.server.stats.heartbeat_timeouts == 1


async def test_pong_between_heartbeats_keeps_the_connection(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    for _ in range(3):
        edge.tick()
        assert device.frames() == [(Opcode.PING, b"")]
        device.pong()
    assert not device.transport.closed
    assert edge.server.stats.heartbeat_timeouts == 0


async def test_any_inbound_frame_counts_as_alive(edge: Edge) -> None:
    await edge.store("c1", "m1")
    device = edge.ws("c1")
    await edge.flush()
    device.frames()
    edge.tick()
    device.ack("m1")
    edge.tick()
    assert not device.transport.aborted


async def test_heartbeat_comes_a_full_interval_after_accept(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    now = edge.clock.advance(HEARTBEAT_S - 1.0)
    for conn in edge.server.timers.wheel.due(now):
        conn.tick()
    assert device.frames() == []
    edge.clock.advance(1.0)
    for conn in edge.server.timers.wheel.due(edge.clock()):
        conn.tick()
    assert device.frames() == [(Opcode.PING, b"")]


def test_no_heartbeat_while_replaying(edge: Edge) -> None:
    device = edge.ws("c1")
    device.conn.tick()
    device.conn.tick()
    assert device.frames() == []
    assert not device.transport.closed


async def test_a_close_that_does_not_finish_within_an_interval_is_aborted(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    device.conn.goaway(Close.RECONNECT, "shutdown")
    assert device.transport.closed and not device.transport.aborted
    device.conn.tick()
    assert device.transport.aborted


async def test_a_websocket_close_we_start_lingers_for_the_peers_close(edge: Edge) -> None:
    # Only our side is shut: closing outright while the peer still sends would make the kernel
    # reset the connection and could destroy the close frame before the peer reads it.
    device = edge.ws("c1")
    await edge.flush()
    device.send_text("not json")
    assert device.close_frame()[0] == Close.POLICY_VIOLATION
    assert device.transport.half_closed and not device.transport.aborted
    device.send_text("still sending")  # read and discarded: nothing is written after the close
    assert device.frames() == []
    device.lose()
    assert device.conn.state is State.CLOSED


async def test_an_http_rejection_lingers_until_the_handshake_deadline(edge: Edge) -> None:
    bad = edge.device()
    bad.send(b"GET /nowhere HTTP/1.1\r\nhost: x\r\n\r\n")
    assert bad.transport.written.startswith(b"HTTP/1.1 404")
    assert bad.transport.half_closed and not bad.transport.aborted
    bad.send(b"more of a request body")  # discarded
    edge.tick()  # past the handshake deadline
    assert bad.transport.aborted


async def test_a_handshake_timeout_closes_outright(edge: Edge) -> None:
    slow = edge.device()
    slow.send(b"GET /ws HTTP/1.1\r\n")
    edge.tick()
    assert slow.transport.written.startswith(b"HTTP/1.1 408")
    assert slow.transport.closed and not slow.transport.half_closed


async def test_over_tls_a_close_we_start_closes_whole_and_waits_an_interval(edge: Edge) -> None:
    # No half-close over TLS: close() writes the close frame, then close_notify, and reads until
    # the peer's; the wheel gives that a whole interval before it aborts.
    device = edge.ws("c1", tls=True)
    await edge.flush()
    device.conn.goaway(Close.RECONNECT, "drain")
    assert device.close_frame()[0] == Close.RECONNECT
    assert device.transport.closed and not device.transport.half_closed
    edge.tick(HEARTBEAT_S * 0.9)
    assert not device.transport.aborted
    edge.tick(HEARTBEAT_S * 0.2)
    assert device.transport.aborted


async def test_over_tls_the_answer_to_a_device_close_closes_whole(edge: Edge) -> None:
    device = edge.ws("c1", tls=True)
    device.close(1000)
    assert device.close_frame()[0] == 1000
    assert device.transport.closed and not device.transport.half_closed
    device.lose()
    assert device.conn.state is State.CLOSED


def test_over_tls_a_rejection_closes_whole_and_the_deadline_bounds_it(edge: Edge) -> None:
    bad = edge.device(tls=True)
    bad.send(b"GET /nowhere HTTP/1.1\r\nhost: x\r\n\r\n")
    assert bad.response().status == 404
    assert bad.transport.closed and not bad.transport.half_closed
    edge.tick()
    assert bad.transport.aborted


def test_over_tls_a_shed_connection_gets_its_503_then_a_whole_close() -> None:
    edge = Edge(accept_rate_per_s=1.0, accept_burst=1)
    edge.device(tls=True)
    shed = edge.device(tls=True)
    shed_retry_after(shed, Shed.RATE)  # TLS is up: the request is on its way, or here
    assert shed.transport.closed and not shed.transport.half_closed
    assert edge.server.stats.shed == {"rate": 1}


async def test_device_ping_is_answered_with_its_payload(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    device.ping(b"are you there")
    assert device.frames() == [(Opcode.PONG, b"are you there")]


# closes


async def test_goaway_is_a_4000_close_with_a_jittered_json_hint(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    device.conn.goaway(Close.RECONNECT, "shutdown", base_delay_ms=2000)
    code, reason = device.close_frame()
    hint = orjson.loads(reason)
    assert code == Close.RECONNECT
    assert hint["reason"] == "shutdown"
    assert 1000 <= hint["reconnect_after_ms"] <= 3000
    assert device.transport.closed
    assert device.conn.state is State.CLOSING
    device.conn.goaway(Close.RECONNECT, "again")  # a second go-away writes nothing
    edge.deliver("m1", "c1")  # nor does a push to a closing connection
    assert device.frames() == []


async def test_goaway_during_replay_and_then_the_flush(edge: Edge) -> None:
    await edge.store("c1", "m1")
    device = edge.ws("c1")
    device.conn.goaway(Close.RECONNECT, "draining")
    assert device.close_frame()[0] == Close.RECONNECT
    await edge.flush()  # a closing connection is neither registered nor replayed to
    assert device.frames() == []
    assert await edge.registry.lookup("c1") is None


def test_goaway_during_the_handshake_aborts(edge: Edge) -> None:
    device = edge.device()
    device.conn.goaway(Close.RECONNECT, "shutdown")
    assert device.transport.aborted and device.transport.written == b""


async def test_pause_writing_closes_with_4002_and_keeps_the_inbox(edge: Edge) -> None:
    await edge.store("c1", "m1")
    device = edge.ws("c1")
    await edge.flush()
    device.frames()
    device.conn.pause_writing()
    code, reason = device.close_frame()
    assert code == Close.SLOW_CONSUMER
    assert orjson.loads(reason)["reason"] == "slow consumer"
    assert 500 <= orjson.loads(reason)["reconnect_after_ms"] <= 1500
    assert device.transport.closed
    assert edge.server.stats.slow_consumers == 1
    device.conn.pause_writing()  # closing already: counted once
    assert edge.server.stats.slow_consumers == 1
    assert await edge.stored("c1") == ["m1"]


async def test_push_over_the_write_limit_closes_with_4002() -> None:
    edge = Edge(write_limit_bytes=4096)
    device = edge.ws("c1")
    await edge.flush()
    device.transport.stall()
    for i in range(100):
        edge.deliver(f"m{i:03d}", "c1")
    frames = device.frames()
    assert frames[-1][0] is Opcode.CLOSE and frames[-1][1][0] == Close.SLOW_CONSUMER
    assert all(opcode is Opcode.TEXT for opcode, _ in frames[:-1])
    assert device.transport.closed
    assert edge.server.stats.slow_consumers == 1


async def test_a_replay_over_the_write_limit_waits_for_the_peer_to_read() -> None:
    # A device coming back to a large inbox is not a slow consumer: the replay is written as
    # fast as it reads, then the pushes held back meanwhile, in id order, once each.
    edge = Edge(write_limit_bytes=4096)
    await edge.store("c1", *(f"m{i:03d}" for i in range(100)))  # ~6 KB of frames
    device = edge.ws("c1")
    device.transport.stall()
    edge.deliver("m999", "c1")
    edge.deliver("m050", "c1")  # also in the inbox: written once
    await edge.flush()
    assert device.conn.state is State.REPLAYING  # paused at the limit, not closed
    for _ in range(10):
        device.transport.drain()
    assert device.conn.state is State.OPEN
    ids = [p["id"] for p in device.pushes()]
    assert ids == [f"m{i:03d}" for i in range(100)] + ["m999"]
    assert edge.server.stats.slow_consumers == 0


async def test_a_replay_the_peer_stops_reading_is_closed_after_an_interval() -> None:
    edge = Edge(write_limit_bytes=4096)
    await edge.store("c1", *(f"m{i:03d}" for i in range(100)))
    device = edge.ws("c1")
    device.transport.stall()
    await edge.flush()
    edge.tick()  # paused at this visit ...
    assert device.conn.state is State.REPLAYING
    edge.tick()  # ... and still at the next: the peer read nothing for a whole interval
    frames = device.frames()
    assert frames[-1][0] is Opcode.CLOSE and frames[-1][1][0] == Close.SLOW_CONSUMER
    assert [opcode for opcode, _ in frames].count(Opcode.CLOSE) == 1
    assert 0 < len(frames) - 1 < 100
    assert edge.server.stats.slow_consumers == 1
    assert len(await edge.stored("c1")) == 100  # all still in the inbox for the next connect


async def test_a_replay_that_progresses_between_visits_is_not_closed() -> None:
    edge = Edge(write_limit_bytes=4096)
    await edge.store("c1", *(f"m{i:03d}" for i in range(400)))  # several buffers' worth
    device = edge.ws("c1")
    device.transport.stall()
    await edge.flush()
    edge.tick()
    device.transport.drain()  # the peer read some: it refilled and paused again
    edge.tick()
    assert device.conn.state is State.REPLAYING
    assert edge.server.stats.slow_consumers == 0


async def test_too_many_pushes_held_during_a_replay_make_a_slow_consumer() -> None:
    edge = Edge(write_limit_bytes=4096)
    await edge.store("c1", *(f"m{i:03d}" for i in range(100)))
    device = edge.ws("c1")
    device.transport.stall()
    await edge.flush()
    for i in range(HELD_MAX + 1):
        edge.deliver(f"n{i:05d}", "c1")
    assert device.conn.state is State.CLOSING
    assert device.frames()[-1][1][0] == Close.SLOW_CONSUMER


@pytest.mark.parametrize(
    "close",
    [lambda c: c.goaway(Close.RECONNECT, "shutdown"),
     lambda c: c.close(Close.POLICY_VIOLATION, "x" * 100)],
    ids=["goaway", "close"],
)
async def test_a_close_frame_that_crosses_the_write_limit_is_written_once(close: Any) -> None:
    edge = Edge(write_limit_bytes=4096)
    device = edge.ws("c1")
    await edge.flush()
    device.transport.stall(buffered=4096 - 10)  # the close frame itself crosses the mark
    close(device.conn)
    assert device.transport.paused
    [(opcode, (code, _))] = device.frames()
    assert opcode is Opcode.CLOSE and code in (Close.RECONNECT, Close.POLICY_VIOLATION)
    assert device.transport.closed
    assert device.conn.state is State.CLOSING


async def test_shutdown_goaway_reaches_every_connection_even_near_the_limit() -> None:
    edge = Edge(write_limit_bytes=4096)
    devices = [edge.ws(f"c{i}") for i in range(3)]
    await edge.flush()
    devices[0].transport.stall(buffered=4096 - 10)
    for conn in edge.server.timers.connections():  # what shutdown() does first
        conn.goaway(Close.RECONNECT, "shutdown")
    assert all(d.close_frame()[0] == Close.RECONNECT for d in devices)


async def test_device_close_is_answered_and_closes(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    device.close(1000, "bye")
    assert device.close_frame() == (1000, "")
    assert device.transport.closed
    device.send(b"\x81\x85late!")  # bytes after the close are ignored
    device.lose()
    assert device.conn.state is State.CLOSED


async def test_device_close_without_code_is_answered_without_code(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    device.close(None)
    assert device.close_frame() == (1005, "")


@pytest.mark.parametrize(
    "send, code",
    [
        (lambda d: d.send_binary(b'{"type":"ack","id":"m1"}'), Close.UNSUPPORTED_DATA),
        (lambda d: d.send_text('{"type":"subscribe"}'), Close.POLICY_VIOLATION),
        (lambda d: d.send_text("not json"), Close.POLICY_VIOLATION),
        (lambda d: d.send(b"\x81\x02hi"), Close.PROTOCOL_ERROR),  # unmasked
        (lambda d: d.send(b"\x81\x82\x00\x00\x00\x00\xff\xfe"), Close.INVALID_PAYLOAD),
        (lambda d: d.send_text("x" * 2000), Close.TOO_BIG),
    ],
    ids=["binary", "not-an-ack", "not-json", "unmasked", "bad-utf8", "too-big"],
)
async def test_frame_violations_close_with_their_code(send: Any, code: int) -> None:
    edge = Edge(ws_max_message_bytes=1024)
    device = edge.ws("c1")
    await edge.flush()
    send(device)
    assert device.close_frame()[0] == code
    assert device.transport.closed
    assert edge.server.stats.violations == 1


async def test_inbound_rate_limit_closes_with_1008_and_resets_per_window() -> None:
    edge = Edge(ws_inbound_rate_per_s=1.0, ws_inbound_burst=3)
    device = edge.ws("c1")
    await edge.flush()
    edge.clock.now = 6000.0  # a window boundary: windows are 3 s long here
    for _ in range(3):
        device.ack("m")
    edge.clock.now = 6003.0
    for _ in range(3):
        device.ack("m")
    assert not device.transport.closed
    device.ack("m")
    assert device.close_frame()[0] == Close.POLICY_VIOLATION


async def test_newer_connection_of_a_client_replaces_the_older(edge: Edge) -> None:
    old = edge.ws("c1")
    await edge.flush()
    first = await edge.registry.lookup("c1")
    new = edge.ws("c1")
    assert old.close_frame()[0] == Close.REPLACED
    assert old.transport.closed and not new.transport.closed
    assert edge.server.connections["c1"] is new.conn
    await edge.flush()
    old.lose()  # its unregister must not delete the newer record
    await edge.flush()
    assert edge.server.connections["c1"] is new.conn
    now = await edge.registry.lookup("c1")
    assert now is not None and now == new.conn.registration and now != first
    edge.deliver("m1", "c1")
    assert [p["id"] for p in new.pushes()] == ["m1"]


async def test_replaced_before_the_flush_registers_only_the_newer(edge: Edge) -> None:
    old, new = edge.ws("c1"), edge.ws("c1")
    old.lose()
    await edge.flush()
    assert await edge.registry.lookup("c1") == new.conn.registration
    assert new.conn.state is State.OPEN and old.conn.state is State.CLOSED


async def test_connection_lost_unregisters_after_a_flush(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    device.lose()
    assert device.conn.state is State.CLOSED
    assert edge.server.connections == {}
    assert await edge.registry.lookup("c1") is not None  # until the next flush
    await edge.flush()
    assert await edge.registry.lookup("c1") is None
    assert len(edge.server.timers.wheel) == 0


async def test_connection_lost_leaves_another_nodes_newer_record(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    mine = device.conn.registration
    assert mine is not None
    theirs = Registration("c1", "user-1", "android", "edge-test-2", mine.version + 1)
    await edge.registry.register([theirs], 120.0)
    device.lose()
    await edge.flush()
    assert await edge.registry.lookup("c1") == theirs


async def test_lost_before_the_flush_is_never_registered(edge: Edge) -> None:
    await edge.store("c1", "m1")
    device = edge.ws("c1")
    device.lose()
    await edge.flush()
    assert await edge.registry.lookup("c1") is None
    assert await edge.stored("c1") == ["m1"]


async def test_heartbeat_abort_then_lost_unregisters(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    edge.tick()
    edge.tick()
    assert device.transport.aborted
    device.lose()
    await edge.flush()
    assert await edge.registry.lookup("c1") is None


async def test_node_record_counts_connections_by_device_type(edge: Edge) -> None:
    async def counts() -> tuple[int, dict[str, int]]:
        await edge.server.registrar.heartbeat_node()
        [node] = await edge.registry.nodes()
        return node.connections, dict(node.by_device_type)

    phone = edge.ws("c1", device_type="ios")
    edge.ws("c2", device_type="ios")
    assert await counts() == (2, {"ios": 2})
    edge.ws("c1", device_type="tv")  # c1 moves to a TV: replaced, counted once
    assert await counts() == (2, {"ios": 1, "tv": 1})
    phone.lose()  # the replaced connection going away changes nothing
    assert await counts() == (2, {"ios": 1, "tv": 1})
    for conn in list(edge.server.connections.values()):
        conn.connection_lost(None)
    assert await counts() == (0, {})


def test_open_count_follows_handshakes_and_connections(edge: Edge) -> None:
    waiting = edge.device()
    assert edge.server.open_count() == 1
    device = edge.ws("c1")
    assert edge.server.open_count() == 2
    waiting.lose()
    device.lose()
    assert edge.server.open_count() == 0


# Server-Sent Events


async def test_sse_accept_writes_a_chunked_event_stream_head_and_retry(edge: Edge) -> None:
    device = edge.sse("c1")
    raw = bytes(device.transport.written)
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 200 ")
    assert b"transfer-encoding: chunked" in head
    assert b"content-type: text/event-stream" in head
    assert device.events() == [{"retry": str(edge.server.config.sse_retry_ms)}]
    assert device.response is not None and device.response.status_code == 200
    assert device.conn.state is State.REPLAYING
    await edge.flush()
    assert await edge.registry.lookup("c1") is not None


async def test_sse_push_is_one_event_chunk_with_the_message_id(edge: Edge) -> None:
    await edge.store("c1", "m1")
    device = edge.sse("c1")
    device.read()
    await edge.flush()
    edge.deliver("m2", "c1")
    events = device.events()
    assert [(e["id"], e["event"]) for e in events] == [("m1", "message"), ("m2", "message")]
    assert orjson.loads(events[1]["data"]) == orjson.loads(payload("m2"))


async def test_sse_resumes_from_last_event_id(edge: Edge) -> None:
    await edge.store("c1", M1, M2, M3)
    first = edge.sse("c1")
    await edge.flush()
    assert [e["id"] for e in first.events() if "id" in e] == [M1, M2, M3]
    first.conn.connection_lost(None)
    await edge.flush()
    device = edge.sse("c1", headers=[("last-event-id", M2)])
    device.read()
    await edge.flush()
    assert [e["id"] for e in device.events()] == [M3]


async def test_sse_heartbeat_is_a_keepalive_comment_and_never_times_out(edge: Edge) -> None:
    device = edge.sse("c1")
    device.read()
    await edge.flush()
    for _ in range(3):
        edge.tick()
        assert device.read() == b": keepalive\n\n"
    assert not device.transport.closed


async def test_sse_goaway_sends_reconnect_retry_and_ends_the_body(edge: Edge) -> None:
    device = edge.sse("c1")
    device.read()
    await edge.flush()
    device.conn.goaway(Close.RECONNECT, "shutdown")
    reconnect, retry = device.events()
    hint = orjson.loads(reconnect["data"])
    assert reconnect["event"] == "reconnect"
    assert (hint["code"], hint["reason"]) == (Close.RECONNECT, "shutdown")
    assert 500 <= hint["reconnect_after_ms"] <= 1500
    assert retry == {"retry": str(hint["reconnect_after_ms"])}
    assert device.ended and device.transport.closed


async def test_sse_ignores_bytes_from_the_device(edge: Edge) -> None:
    device = edge.sse("c1")
    device.read()
    await edge.flush()
    device.conn.data_received(b"\x81\x80\x00\x00\x00\x00")
    assert device.read() == b"" and not device.transport.closed


async def test_sse_replaced_by_a_websocket_ends_the_stream(edge: Edge) -> None:
    old = edge.sse("c1")
    old.read()
    edge.ws("c1")
    old.read()
    assert old.ended and old.transport.closed


def test_sse_with_a_bad_token_is_401(edge: Edge) -> None:
    device = SseDevice(edge.server, "/sse?token=nope")
    device.read()
    assert device.response is not None and device.response.status_code == 401
    assert device.transport.closed


async def test_sse_stream_allows_any_origin(edge: Edge) -> None:
    """A page on the API's port (another origin) uses EventSource on the edge: no credentials
    travel (the token is in the URL), so `*` is enough."""
    device = edge.sse("c1", headers=[("Origin", "http://127.0.0.1:8081")])
    head = bytes(device.transport.written).split(b"\r\n\r\n", 1)[0].lower()
    assert b"access-control-allow-origin: *" in head.split(b"\r\n")


@pytest.mark.parametrize("path, status", [("/sse?token=nope", 401), ("/ws", 426)])
def test_a_refused_handshake_is_readable_from_any_origin(edge: Edge, path: str,
                                                         status: int) -> None:
    """So that a browser client can tell a 401 (or a 503's Retry-After) from a network error."""
    device = SseDevice(edge.server, path)
    device.read()
    assert device.response is not None and device.response.status_code == status
    headers = {k.lower(): v for k, v in device.response.headers}
    assert headers[b"access-control-allow-origin"] == b"*"
    assert headers[b"access-control-expose-headers"] == b"retry-after"


def test_a_shed_answer_is_readable_from_any_origin() -> None:
    answer = shed_answer(Shed.RATE, 3).lower()
    assert b"access-control-allow-origin: *\r\n" in answer
    assert b"retry-after: 3\r\n" in answer


# echo


@pytest.fixture
def echo() -> Edge:
    return Edge(echo=True)


def test_echo_needs_no_token_and_echoes_text_and_binary(echo: Edge) -> None:
    device = echo.device()
    assert device.upgrade("/echo").status == 101
    assert device.conn.state is State.ECHO  # nothing to register or replay
    device.send_text("héllo")
    device.send_binary(b"\x00\x01\x02")
    assert device.frames() == [(Opcode.TEXT, "héllo"), (Opcode.BINARY, b"\x00\x01\x02")]
    assert echo.server.connections == {}
    assert echo.server.registrar.admits == []


def test_echo_takes_large_messages(echo: Edge) -> None:
    device = echo.device()
    device.upgrade("/echo")
    big = b"\xab" * 200_000  # past the device limit, within the echo limit
    device.send_binary(big)
    assert device.frames() == [(Opcode.BINARY, big)]


def test_echo_is_never_held_to_heartbeat_pongs(echo: Edge) -> None:
    device = echo.device()
    device.upgrade("/echo")
    echo.tick()
    echo.tick()
    assert device.frames() == [(Opcode.PING, b""), (Opcode.PING, b"")]
    assert not device.transport.aborted


def test_echo_close(echo: Edge) -> None:
    device = echo.device()
    device.upgrade("/echo")
    device.close(1001, "going")
    assert device.close_frame() == (1001, "")
    device.lose()
    assert len(echo.server.timers.wheel) == 0


# registry outages


class Flaky:
    """A memory seam that can be made unreachable; a registry can also lose everything."""

    def __init__(self, inner: Any, clock: FakeClock) -> None:
        self.inner = inner
        self.clock = clock
        self.down = False

    def wipe(self) -> None:
        """A restarted Redis without persistence."""
        self.inner = MemoryRegistry(clock=self.clock)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise ConnectionError("registry unreachable")
            return await method(*args, **kwargs)
        return call


def flaky(edge: Edge) -> Flaky:
    registry = Flaky(edge.registry, edge.clock)
    edge.server.registrar.registry = registry  # type: ignore[assignment]
    return registry


async def test_connections_accepted_while_the_registry_is_down_are_admitted_when_it_returns(
        edge: Edge) -> None:
    registry = flaky(edge)
    registry.down = True
    device = edge.ws("c1")
    with pytest.raises(ConnectionError):
        await edge.flush()
    edge.server.registrar.failed(ConnectionError("down"))
    assert device.conn.state is State.REPLAYING and not device.transport.closed
    registry.down = False
    await edge.flush()  # what the registry loop retries
    assert device.conn.state is State.OPEN
    assert (await registry.inner.lookup("c1")) is not None


async def test_acks_and_unregistrations_that_failed_are_retried(edge: Edge) -> None:
    await edge.store("c1", "m1", "m2")
    device, other = edge.ws("c1"), edge.ws("c2")
    await edge.flush()
    registry, inbox = flaky(edge), Flaky(edge.inbox, edge.clock)
    edge.server.registrar.inbox = edge.server.replay.inbox = inbox  # type: ignore[assignment]
    registry.down = inbox.down = True
    device.ack("m1")
    other.lose()
    with pytest.raises(ConnectionError):
        await edge.flush()
    assert await edge.stored("c1") == ["m1", "m2"]
    registry.down = inbox.down = False
    await edge.flush()
    assert await edge.stored("c1") == ["m2"]
    assert await registry.inner.lookup("c2") is None


async def test_a_registry_that_lost_its_records_gets_them_all_again(edge: Edge) -> None:
    devices = [edge.ws(f"c{i}") for i in range(5)]
    await edge.flush()
    registry = flaky(edge)
    registry.wipe()
    await edge.server.registrar.refresh_registrations()
    assert set(await registry.inner.lookup_many([f"c{i}" for i in range(5)])) == {
        f"c{i}" for i in range(5)}
    assert edge.server.stats.reregistered == 5
    assert all(not d.transport.closed for d in devices)


async def test_an_outage_is_logged_once_and_its_end_triggers_a_resync(
        edge: Edge, caplog: pytest.LogCaptureFixture) -> None:
    edge.ws("c1")
    await edge.flush()
    for _ in range(3):
        edge.server.registrar.failed(ConnectionError("down"))
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and edge.server.stats.registry_errors == 3
    assert edge.server.registrar.resync
    await edge.server.registrar.refresh_registrations()
    assert not edge.server.registrar.resync


async def test_a_failing_node_channel_is_retried_not_fatal(
        edge: Edge, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from zuulpush.edge import hub

    monkeypatch.setattr(hub, "RETRY_S", 0.001)
    device = edge.ws("c1")
    await edge.flush()
    channel = Flaky(edge.channel, edge.clock)
    channel.down = True
    edge.server.hub.channel = channel  # type: ignore[assignment]
    loop_task = asyncio.get_running_loop().create_task(edge.server.hub.receive_loop())
    try:
        for _ in range(5):
            await asyncio.sleep(0.005)  # several failed receives
        assert not loop_task.done()
        channel.down = False
        await edge.channel.publish("edge-test-1", [Delivery("m1", payload("m1"), ("c1",))])
        pushed: list[dict[str, Any]] = []
        for _ in range(200):
            pushed += device.pushes()  # what arrived since the last read
            if pushed:
                break
            await asyncio.sleep(0.005)
        assert [p["id"] for p in pushed] == ["m1"]
    finally:
        loop_task.cancel()
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1


# shedding (zuulpush.edge.shedding): decided at connection_made, before any byte is read


def shed_retry_after(device: Device, reason: Shed) -> int:
    """Check that `device` got exactly the canned 503 for `reason`; its Retry-After."""
    response = device.response()
    assert response.status == 503
    retry_after = int(response.headers["retry-after"])
    assert bytes(device.transport.written) == shed_answer(reason, retry_after)
    assert 1 <= retry_after <= 60
    assert response.headers["connection"] == "close"
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "overloaded" and str(retry_after) in error["message"]
    return retry_after


def test_past_the_accept_rate_a_connection_gets_the_canned_503_and_is_never_served() -> None:
    edge = Edge(accept_rate_per_s=1.0, accept_burst=2)
    served = [edge.device(), edge.device()]
    shed = edge.device()
    shed_retry_after(shed, Shed.RATE)
    assert shed.conn._parser is None  # no parser was made for it
    assert shed.conn.state is State.SHED_UNREAD  # closing: nothing more is written
    # Our side stays open until the request comes: a client that has not sent it yet would
    # take an end of stream for a dropped connection and not read the answer (aiohttp does).
    assert not shed.transport.half_closed and not shed.transport.aborted
    assert edge.server.stats.shed == {"rate": 1}
    assert edge.server.stats.rejects == {}
    assert edge.server.open_count() == 2
    written = bytes(shed.transport.written)
    shed.send(request(f"/ws?token={token('c3')}", UPGRADE))  # its request, read and dropped
    assert bytes(shed.transport.written) == written
    assert shed.transport.half_closed and not shed.transport.aborted  # lingers for the peer
    assert edge.server.connections == {} and edge.server.stats.connects == 0
    assert all(d.conn.state is State.HANDSHAKE for d in served)
    edge.clock.advance(1.0)  # a token again
    assert edge.ws("c4").conn.state is State.REPLAYING


async def test_a_shed_connection_is_never_registered(edge: Edge) -> None:
    edge = Edge(accept_rate_per_s=1.0, accept_burst=1)
    edge.ws("c1")
    shed = edge.device()
    shed.send(request(f"/ws?token={token('c2')}", UPGRADE))
    await edge.flush()
    assert await edge.registry.lookup("c2") is None
    assert list(edge.server.connections) == ["c1"]


def test_a_shed_connection_lingers_until_the_handshake_deadline() -> None:
    edge = Edge(accept_rate_per_s=1.0, accept_burst=1)
    edge.device()
    shed = edge.device()
    edge.tick(HANDSHAKE_S - 1)
    assert not shed.transport.aborted
    edge.tick(1.0)
    assert shed.transport.aborted


def test_max_connections_sheds_with_503_until_one_closes() -> None:
    edge = Edge(max_connections=2)
    first, _ = edge.ws("c1"), edge.device()  # served, in any state
    shed_retry_after(edge.device(), Shed.MAX_CONNECTIONS)
    first.lose()
    assert edge.ws("c3").conn.state is State.REPLAYING
    assert edge.server.stats.shed == {"max_connections": 1}


def test_past_the_hard_ceiling_the_socket_is_closed_at_accept_with_nothing_written() -> None:
    edge = Edge(max_connections=1, hard_max_connections=3)
    edge.ws("c1")
    lingering = [edge.device(), edge.device()]  # 503s still waiting for their peers
    for device in lingering:
        shed_retry_after(device, Shed.MAX_CONNECTIONS)
    closed = edge.device()
    assert closed.transport.aborted and closed.transport.written == b""
    assert closed.conn._parser is None
    assert edge.server.stats.shed == {"max_connections": 2, "hard_limit": 1}
    closed.lose()
    lingering[0].lose()
    shed_retry_after(edge.device(), Shed.MAX_CONNECTIONS)  # room below the hard ceiling again


def test_loop_lag_sheds_new_connections_until_the_loop_is_on_time() -> None:
    edge = Edge(shed_loop_lag_ms=100)
    lag = edge.server.lag
    lag.arm(edge.clock())
    edge.clock.advance(lag.interval_s + 0.2)  # the sampler is 200 ms overdue: a long iteration
    shed_retry_after(edge.device(), Shed.LOOP_LAG)
    lag.sampled(edge.clock())  # it fires, 200 ms late
    edge.clock.advance(0.01)
    shed_retry_after(edge.device(), Shed.LOOP_LAG)
    edge.clock.advance(lag.interval_s - 0.01)
    lag.sampled(edge.clock())  # on time
    assert edge.ws("c1").conn.state is State.REPLAYING
    assert edge.server.stats.shed == {"loop_lag": 2}


def test_a_request_arriving_while_the_loop_runs_late_is_shed_unparsed() -> None:
    edge = Edge(shed_loop_lag_ms=100)
    lag = edge.server.lag
    lag.arm(edge.clock())
    device = edge.device()  # accepted while the loop was on time
    assert device.conn.state is State.HANDSHAKE and edge.server.open_count() == 1
    edge.clock.advance(lag.interval_s + 0.2)  # then a long iteration, in which its request comes
    device.send(request(f"/ws?token={token('c1')}", UPGRADE))
    shed_retry_after(device, Shed.LOOP_LAG)
    assert device.conn._parser is None and edge.server.connections == {}
    assert edge.server.stats.shed == {"loop_lag": 1} and edge.server.stats.connects == 0
    assert (edge.server.gate.served, edge.server.gate.shedding) == (0, 1)
    assert edge.server.open_count() == 0
    device.lose()
    assert (edge.server.gate.served, edge.server.gate.shedding) == (0, 0)


def test_shed_sockets_are_counted_apart_and_nothing_leaks() -> None:
    edge = Edge(max_connections=3, hard_max_connections=5, accept_rate_per_s=0.0)
    devices = [edge.device() for _ in range(8)]  # 3 served, 2 shed with 503, 3 closed
    sse = edge.sse("c9")  # shed too (hard ceiling)
    assert sse.transport.aborted
    assert edge.server.stats.shed == {"max_connections": 2, "hard_limit": 4}
    assert (edge.server.gate.served, edge.server.gate.shedding) == (3, 6)
    assert edge.server.open_count() == 3
    for device in devices:
        device.lose()
    sse.conn.connection_lost(None)
    assert (edge.server.gate.served, edge.server.gate.shedding) == (0, 0)
    assert edge.server.open_count() == 0


def test_an_idle_connection_is_no_bigger_with_a_lifetime(edge: Edge) -> None:
    # 14 slots: the same 128-byte allocation as the 13 it had before lifetimes, and since the
    # high-water id (`given`) came, with one slot for the request head's and frames' parser.
    assert sys.getsizeof(EdgeConnection(edge.server.connection_host)) <= 128


# GET /healthz


def test_healthz_answers_the_nodes_load_as_json_and_closes(edge: Edge) -> None:
    edge.ws("c1")
    device = edge.device()
    device.send(request("/healthz"))
    response = device.response()
    assert response.status == 200 and response.headers["connection"] == "close"
    health = response.json()
    assert health["status"] == "ok" and health["node_id"] == "edge-test-1"
    assert (health["connections"], health["sockets"]) == (1, 2)
    assert health["shed"] == {"hard_limit": 0, "max_connections": 0, "loop_lag": 0, "rate": 0}
    assert health["loop_lag_ms"] == 0.0 and health["loop_lag_ms_peak"] == 0.0
    assert health["max_connections"] < health["hard_max_connections"]
    assert health["fds_exhausted"] is False and health["lifetime_closes"] == 0
    assert device.transport.half_closed
    assert edge.server.connections.keys() == {"c1"}


# connection lifetime: 4000 with a JSON reason, spread over the window


def lifetime_hint(frames: list[tuple[Opcode, Any]]) -> dict[str, Any] | None:
    """The JSON hint of the lifetime close among `frames`, if there is one."""
    closes = [payload for opcode, payload in frames if opcode is Opcode.CLOSE]
    if not closes:
        return None
    [(code, reason)] = closes
    assert code == Close.RECONNECT
    hint = orjson.loads(reason)
    assert hint["reason"] == "lifetime"
    assert 500 <= hint["reconnect_after_ms"] <= 1500
    return hint  # type: ignore[no-any-return]


def answer_pings(device: Device) -> list[tuple[Opcode, Any]]:
    """The frames written since the last read, a ping among them answered with a pong."""
    frames = device.frames()
    if any(opcode is Opcode.PING for opcode, _ in frames):
        device.pong()
    return frames


async def test_a_connection_is_closed_with_4000_within_its_lifetime_window() -> None:
    edge = Edge(lifetime_min_s=60.0, lifetime_max_s=90.0)
    device = edge.ws("c1")
    await edge.flush()
    start = edge.clock()
    while lifetime_hint(answer_pings(device)) is None:
        assert edge.clock() - start < 100
        edge.tick(0.25)
    assert 60.0 - 0.5 <= edge.clock() - start <= 90.0 + 0.5
    assert edge.server.stats.lifetime_closes == 1
    assert device.transport.half_closed  # lingers for the device's close, as any go-away


async def test_lifetime_closes_of_a_storm_are_spread_over_the_window() -> None:
    """1000 devices connect in the same instant; their closes come spread uniformly over the
    lifetime window, never many at once."""
    edge = Edge(lifetime_min_s=60.0, lifetime_max_s=120.0, accept_rate_per_s=0.0,
                heartbeat_interval_s=10.0)
    devices = [edge.ws(f"c{i}") for i in range(1000)]
    await edge.flush()
    start = edge.clock()
    closes: list[float] = []
    open_devices = set(range(1000))
    while open_devices and edge.clock() - start < 130:
        edge.tick(0.25)
        for i in list(open_devices):
            if lifetime_hint(answer_pings(devices[i])) is not None:
                closes.append(edge.clock() - start)
                open_devices.discard(i)
    assert not open_devices and edge.server.stats.lifetime_closes == 1000
    assert min(closes) >= 60.0 - 0.5 and max(closes) <= 120.0 + 0.5
    per_10s = [sum(1 for t in closes if 60 + 10 * k <= t < 70 + 10 * k) for k in range(6)]
    assert all(120 < n < 220 for n in per_10s), per_10s  # about 167 each
    per_second = [sum(1 for t in closes if s <= t < s + 1) for s in range(60, 121)]
    assert max(per_second) < 40, per_second  # about 17 a second: never in lockstep


async def test_sse_lifetime_ends_with_a_reconnect_event_and_retry() -> None:
    edge = Edge(lifetime_min_s=30.0, lifetime_max_s=31.0)
    device = edge.sse("c1")
    device.read()
    await edge.flush()
    for _ in range(4 * 32):
        edge.tick(0.25)
    *_, reconnect, retry = device.events()
    hint = orjson.loads(reconnect["data"])
    assert reconnect["event"] == "reconnect"
    assert (hint["code"], hint["reason"]) == (Close.RECONNECT, "lifetime")
    assert retry == {"retry": str(hint["reconnect_after_ms"])}
    assert device.ended


async def test_lifetime_zero_never_closes() -> None:
    edge = Edge(lifetime_min_s=0.0, lifetime_max_s=0.0)
    device = edge.ws("c1")
    await edge.flush()
    for _ in range(100):
        edge.tick()
        device.frames()
        device.pong()
    assert not device.transport.closed and edge.server.timers.expiring == []


def test_echo_has_no_lifetime() -> None:
    edge = Edge(echo=True, lifetime_min_s=0.0, lifetime_max_s=1.0)
    device = edge.device()
    assert device.upgrade("/echo").status == 101
    for _ in range(20):
        edge.tick(0.25)
    assert not device.transport.closed
