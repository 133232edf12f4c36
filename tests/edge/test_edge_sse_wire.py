"""Unit tests of `zuulpush.edge.sse` (event and chunk encoding) and `zuulpush.edge.wire` (the
per-transport strategies and the cached encodings of one message).

Chunked bodies are decoded by h11 acting as the client, so the framing is checked by a parser
that is not ours.
"""

from __future__ import annotations

import random
from typing import Any

import h11
import orjson
import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from zuulpush.edge import sse
from zuulpush.edge.wire import SSE, WEBSOCKET, Outgoing, jittered_ms
from zuulpush.edge.wsframes import PING, Close, text_frame

HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def client_reads(body: bytes) -> tuple[bytes, bool]:
    """The data a client decodes from a chunked response body, and whether the body ended."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/sse", headers=[("host", "edge")]))
    client.send(h11.EndOfMessage())
    client.receive_data(HEAD + body)
    data = b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            return data, False
        if isinstance(event, h11.Data):
            data += event.data
        if isinstance(event, h11.EndOfMessage):
            return data, True


def parse_events(stream: bytes) -> list[dict[str, str]]:
    """Events as EventSource sees them: blocks separated by a blank line, comments dropped."""
    events = []
    for block in stream.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        if fields:
            events.append(fields)
    return events


def ws_client_reads(data: bytes) -> list[tuple[Opcode, Any]]:
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(data)
    return [(frame.opcode, frame.payload) for frame in client.received_frames()]


# sse


@pytest.mark.parametrize("size", [0, 1, 15, 16, 255, 256, 4096, 70000])
def test_chunk_framing(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    encoded = sse.chunk(body)
    assert encoded == f"{size:x}".encode() + b"\r\n" + body + b"\r\n"
    if size:  # a zero-length chunk is the terminator, never an event
        assert client_reads(encoded) == (body, False)


def test_end_terminates_the_body() -> None:
    assert sse.END == b"0\r\n\r\n"
    assert client_reads(sse.chunk(b"x") + sse.END) == (b"x", True)


def test_event_formatting() -> None:
    assert sse.event(b'{"a":1}') == sse.chunk(b'data: {"a":1}\n\n')
    assert sse.event(b"d", id="m1") == sse.chunk(b"id: m1\ndata: d\n\n")
    assert sse.event(b"d", name="reconnect") == sse.chunk(b"event: reconnect\ndata: d\n\n")
    assert sse.event(b"d", id="m1", name="x") == sse.chunk(b"id: m1\nevent: x\ndata: d\n\n")


def test_message_is_a_message_event_with_the_id() -> None:
    payload = orjson.dumps({"id": "m7", "topic": "t", "ts": 1, "data": {"k": "v"}})
    stream, _ = client_reads(sse.message("m7", payload))
    assert parse_events(stream) == [{"id": "m7", "event": "message", "data": payload.decode()}]


def test_retry() -> None:
    assert sse.retry(3000) == sse.chunk(b"retry: 3000\n\n")
    assert parse_events(client_reads(sse.retry(250))[0]) == [{"retry": "250"}]


def test_keepalive_is_a_comment_that_eventsource_ignores() -> None:
    stream, ended = client_reads(sse.KEEPALIVE)
    assert stream.startswith(b":") and stream.endswith(b"\n\n")
    assert not ended
    assert parse_events(stream) == []


def test_a_stream_of_chunks_decodes_to_the_events_in_order() -> None:
    body = (sse.retry(1000) + sse.message("1", b"{}") + sse.KEEPALIVE
            + sse.message("2", b"[]") + sse.END)
    stream, ended = client_reads(body)
    assert ended
    assert [e.get("id") for e in parse_events(stream)] == [None, "1", "2"]


def test_headers_name_the_event_stream() -> None:
    headers = dict(sse.HEADERS)
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache"


# wire


def test_outgoing_encodes_each_transport_once() -> None:
    out = Outgoing("m1", b'{"id":"m1"}')
    frame = out.ws_frame()
    event = out.sse_event()
    assert out.ws_frame() is frame
    assert out.sse_event() is event
    assert WEBSOCKET.push(out) is frame
    assert SSE.push(out) is event
    assert frame == text_frame(b'{"id":"m1"}')
    assert event == sse.message("m1", b'{"id":"m1"}')


def test_heartbeats() -> None:
    assert WEBSOCKET.heartbeat() == PING
    assert WEBSOCKET.expects_pong
    assert SSE.heartbeat() == sse.KEEPALIVE
    assert not SSE.expects_pong


def test_websocket_goaway_is_a_4xxx_close_with_a_json_hint() -> None:
    [(opcode, payload)] = ws_client_reads(WEBSOCKET.goaway(Close.RECONNECT, "shutdown", 1234))
    code, reason = payload
    assert (opcode, code) == (Opcode.CLOSE, Close.RECONNECT)
    assert orjson.loads(reason) == {"reason": "shutdown", "reconnect_after_ms": 1234}


def test_websocket_close_has_a_plain_reason() -> None:
    assert ws_client_reads(WEBSOCKET.close(Close.TOO_BIG, "too big")) == [
        (Opcode.CLOSE, (Close.TOO_BIG, "too big"))]


def test_sse_goaway_is_a_reconnect_event_a_retry_and_the_end() -> None:
    stream, ended = client_reads(SSE.goaway(Close.SLOW_CONSUMER, "slow consumer", 900))
    assert ended
    reconnect, retry = parse_events(stream)
    assert reconnect["event"] == "reconnect"
    assert orjson.loads(reconnect["data"]) == {
        "code": Close.SLOW_CONSUMER, "reason": "slow consumer", "reconnect_after_ms": 900}
    assert retry == {"retry": "900"}


def test_sse_close_names_its_code_without_a_hint_and_ends_the_body() -> None:
    stream, ended = client_reads(SSE.close(Close.REPLACED, "replaced"))
    assert ended
    [reconnect] = parse_events(stream)
    assert reconnect["event"] == "reconnect"
    assert orjson.loads(reconnect["data"]) == {"code": Close.REPLACED, "reason": "replaced"}


class _Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize("base", [1, 100, 1000, 30_000])
def test_jittered_ms_stays_within_half_and_three_halves(base: int) -> None:
    rng = random.Random(20240607)
    values = [jittered_ms(base, rng) for _ in range(2000)]
    assert all(base // 2 <= v <= base * 3 // 2 for v in values)
    if base >= 100:
        assert len(set(values)) > 10  # actually spread, not one value


def test_jittered_ms_bounds_exactly() -> None:
    assert jittered_ms(1000, _Fixed(0.0)) == 500
    assert jittered_ms(1000, _Fixed(0.5)) == 1000
    assert jittered_ms(1000, _Fixed(0.999999)) == 1499


def test_jittered_ms_is_reproducible_with_a_seed() -> None:
    one, two = random.Random(7), random.Random(7)
    assert [jittered_ms(1000, one) for _ in range(5)] == [jittered_ms(1000, two) for _ in range(5)]
