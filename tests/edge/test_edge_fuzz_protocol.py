"""Protocol-level fuzzing (hypothesis) of `EdgeConnection` on the fake transport and clock of
`test_edge_protocol.py`.

After a valid upgrade (then replayed, or still replaying), a device sends a generated mix of
valid frames (acks, pings, pongs, text, binary, fragments, closes) and damaged or random bytes, in
any chunking. Whatever it sends:

- the connection is still open (REPLAYING or OPEN, nothing but pongs and pushes written) or it is
  closing with one close frame whose code is in the README's table (or echoes the device's own);
  nothing is written after the close (the fake transport fails the test);
- once the transport is lost, the server forgets it: `connections`, the wheel, the handshake
  deadlines and the socket count are back to what the other, well-behaved device holds, the
  registration is withdrawn, and `violations` (or `rate_limited`) counts the protocol closes;
- the well-behaved device on the same server still gets its pushes.

The same for arbitrary bytes in place of the request head: an HTTP error with a JSON body, a
101, or (incomplete) nothing, and no leak once lost or past the handshake deadline.
"""

from __future__ import annotations

import asyncio
import struct

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from tests.edge.test_edge_fuzz import _split
from tests.edge.test_edge_protocol import (
    HANDSHAKE_S,
    UPGRADE,
    Device,
    Edge,
    parse_response,
    request,
    token,
)
from zuulpush.edge.state import State
from zuulpush.edge.wsframes import Close

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
VIOLATIONS = frozenset({Close.PROTOCOL_ERROR, Close.UNSUPPORTED_DATA, Close.INVALID_PAYLOAD,
                        Close.POLICY_VIOLATION, Close.TOO_BIG})
MAX_MESSAGE = 512

_client = FrameProtocol(client=True, extensions=[])  # stateless for unfragmented frames


def _masked(first: int, payload: bytes, mask: bytes = b"\x0f\xf0\x55\xaa") -> bytes:
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = bytes((first, 0x80 | len(payload)))
    else:
        head = bytes((first, 0x80 | 126)) + struct.pack("!H", len(payload))
    return head + mask + body


_ack = st.builds(lambda ids: orjson.dumps({"type": "ack", "ids": ids}),
                 st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3))
_close_codes = st.sampled_from([1000, 1001, 1002, 1003, 1004, 1005, 1006, 1011, 1015, 2999,
                                3000, 4000, 4999, 5000, 0, 65535])
_pieces = st.one_of(
    _ack.map(lambda data: _masked(0x81, data)),
    st.binary(max_size=125).map(lambda p: _masked(0x89, p)),  # ping
    st.binary(max_size=125).map(lambda p: _masked(0x8A, p)),  # pong
    st.text(max_size=40).map(lambda t: _masked(0x81, t.encode())),  # text, rarely an ack
    st.binary(max_size=40).map(lambda p: _masked(0x81, p)),  # text, maybe not UTF-8
    st.binary(max_size=40).map(lambda p: _masked(0x82, p)),  # binary
    st.binary(max_size=40).map(lambda p: _masked(0x01, p)),  # unfinished text
    st.binary(max_size=40).map(lambda p: _masked(0x80, p)),  # continuation
    st.binary(max_size=40).map(lambda p: _masked(0x00, p)),  # unfinished continuation
    st.tuples(st.sampled_from([0xC1, 0xA1, 0x91, 0x83, 0x87, 0x8B, 0x8F, 0x09]),
              st.binary(max_size=20)).map(lambda t: _masked(*t)),  # RSV, opcodes, fragmented
    st.binary(max_size=30).map(lambda p: bytes((0x81, len(p))) + p),  # unmasked
    st.just(_masked(0x81, b" " * (MAX_MESSAGE + 1))),  # too big
    st.tuples(_close_codes, st.binary(max_size=10)).map(
        lambda t: _masked(0x88, struct.pack("!H", t[0]) + t[1])),
    st.just(_masked(0x88, b"")),
    st.binary(min_size=1, max_size=30),  # noise
)


def _written_frames(device: Device) -> list[tuple[Opcode, object]]:
    """Every frame written after the 101, parsed as a client would (lenient on codes)."""
    reader = FrameProtocol(client=True, extensions=[])
    head_end = bytes(device.transport.written).index(b"\r\n\r\n") + 4
    reader.receive_bytes(bytes(device.transport.written[head_end:]))
    return [(frame.opcode, frame.payload) for frame in reader.received_frames()]


async def _scenario(pieces: list[bytes], cuts: list[int], flushed: bool) -> None:
    edge = Edge(ws_max_message_bytes=MAX_MESSAGE, ws_inbound_burst=50)
    good = edge.ws("good")
    await edge.flush()
    good.frames()
    fuzzed = edge.ws("fuzzed")
    if flushed:
        await edge.flush()
    data = b"".join(pieces)
    for chunk in _split(data, cuts):
        fuzzed.send(chunk)
    server = edge.server
    frames = _written_frames(fuzzed)
    closes = [payload for opcode, payload in frames if opcode is Opcode.CLOSE]
    if fuzzed.conn.state is State.CLOSING:
        assert len(closes) == 1 and frames[-1][0] is Opcode.CLOSE, frames
        code, _ = closes[0]  # type: ignore[misc]
        event(f"closed {code}")
        if code in VIOLATIONS:  # a protocol violation, or (1008) the inbound rate limit
            assert server.stats.violations + server.stats.rate_limited == 1
        else:  # the device's own close, answered with its code (1005: without one)
            assert server.stats.violations == 0
            assert code == 1005 or 1000 <= code < 5000
    else:
        event(f"still {fuzzed.conn.state.name}")
        assert fuzzed.conn.state in (State.OPEN, State.REPLAYING)
        assert not closes and not fuzzed.transport.closed
        assert {opcode for opcode, _ in frames} <= {Opcode.PONG, Opcode.TEXT}
        assert server.stats.violations == 0
    fuzzed.lose()
    await edge.flush()
    assert fuzzed.conn.state is State.CLOSED
    assert list(server.connections) == ["good"]
    assert len(server.timers.wheel) == 1 and server.gate.served == 1 and server.open_count() == 1
    assert await edge.registry.lookup("fuzzed") is None
    edge.deliver("01FUZZ0000000000000000000A", "good", "fuzzed")
    assert [push["id"] for push in good.pushes()] == ["01FUZZ0000000000000000000A"]
    edge.tick(HANDSHAKE_S + 1)
    assert not list(server.timers.handshaking())


@FUZZ
@given(pieces=st.lists(_pieces, max_size=12), cuts=st.lists(st.integers(0, 600), max_size=10),
       flushed=st.booleans())
def test_any_frames_after_the_upgrade_end_open_or_in_a_documented_close(
        pieces: list[bytes], cuts: list[int], flushed: bool) -> None:
    asyncio.run(_scenario(pieces, cuts, flushed))


_heads = st.one_of(
    st.binary(max_size=300),
    st.builds(request,
              st.sampled_from(["/ws", "/sse", "/echo", "/healthz", "/admin/status", "/nowhere",
                               f"/ws?token={token('c1')}", f"/sse?token={token('c1')}",
                               "/ws?token=a.b.c", "/admin/clients/c1/close?code=9"]),
              st.one_of(st.just(UPGRADE),
                        st.lists(st.sampled_from([*UPGRADE, ("Sec-WebSocket-Version", "8"),
                                                  ("Authorization", "Bearer nope"),
                                                  ("Upgrade", "h2c")]), max_size=5)),
              method=st.sampled_from(["GET", "POST", "PUT"]),
              version=st.sampled_from(["1.1", "1.0"])),
    st.tuples(st.sampled_from([b"GET ", b"POST ", b"GET", b"\r\n", b""]),
              st.sampled_from([b"/ws", b"/sse", b"/echo", b"/healthz", b"/admin/status", b"/x",
                               b"/ws?token=" + token("c1").encode(), b"*", b""]),
              st.sampled_from([b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", b" HTTP/2\r\n", b"\n", b""]),
              st.lists(st.sampled_from([b"Host: h\r\n", b"Host: a\r\nHost: b\r\n",
                                        b"Upgrade: websocket\r\n", b"Connection: Upgrade\r\n",
                                        b"Sec-WebSocket-Version: 13\r\n", b"X: " + b"v" * 9000,
                                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                                        b"Content-Length: 5\r\n", b" folded\r\n", b"\x00\r\n",
                                        b"Transfer-Encoding: chunked\r\n", b"\r\n"]),
                       max_size=8).map(b"".join),
              st.sampled_from([b"\r\n", b"", b"\r\n\x81\x80abcd"])).map(b"".join),
)


async def _head_scenario(data: bytes, cuts: list[int]) -> None:
    edge = Edge(max_header_bytes=4096)
    device = edge.device()
    for chunk in _split(data, cuts):
        if device.conn.state is not State.HANDSHAKE:
            break
        device.send(chunk)
    server = edge.server
    written = bytes(device.transport.written)
    if written:
        response = parse_response(written)
        event(f"answered {response.status}")
        upgraded = response.status == 101 or \
            response.headers.get("content-type", "").startswith("text/event-stream")
        if not upgraded:
            # 501: a transfer coding h11 does not know (RFC 9112 section 6.1)
            assert 400 <= response.status < 500 or response.status in (200, 501), response
            assert response.headers["content-type"].startswith(("application/json", "text/"))
            if response.status >= 400:
                assert orjson.loads(response.body)["error"]["message"]
            assert device.transport.closed
    else:
        assert device.conn.state is State.HANDSHAKE
    edge.tick(HANDSHAKE_S + 1)  # the deadline: answered 408 (or aborted) if still incomplete
    if not written:
        assert device.transport.closed
    device.lose()
    await edge.flush()
    assert server.connections == {} and len(server.timers.wheel) == 0
    assert server.gate.served == 0 and server.open_count() == 0
    assert not list(server.timers.handshaking())


@FUZZ
@given(data=_heads, cuts=st.lists(st.integers(0, 400), max_size=6))
def test_any_request_head_gets_an_answer_and_leaves_nothing(data: bytes, cuts: list[int]) -> None:
    asyncio.run(_head_scenario(data, cuts))


async def test_a_valid_upgrade_split_anywhere_is_accepted() -> None:
    data = request(f"/ws?token={token('c1')}", UPGRADE)
    for cut in range(1, len(data)):
        edge = Edge()
        device = edge.device()
        device.send(data[:cut])
        device.send(data[cut:])
        assert device.response_head().status == 101, cut


async def test_a_ping_flood_from_a_reading_peer_is_closed_by_the_inbound_rate_limit() -> None:
    """Regression: pings were answered without limit; they count as inbound messages now."""
    edge = Edge(ws_inbound_rate_per_s=10.0, ws_inbound_burst=20)
    device = edge.ws("c1")
    await edge.flush()
    edge.clock.now = 6000.0  # a window boundary
    device.send(b"".join(_masked(0x89, b"x") for _ in range(20)))
    assert [opcode for opcode, _ in device.frames()] == [Opcode.PONG] * 20
    device.send(_masked(0x8A, b""))  # a pong counts too
    assert device.close_frame()[0] == Close.POLICY_VIOLATION
    assert (edge.server.stats.rate_limited, edge.server.stats.violations) == (1, 0)


async def test_a_ping_flood_to_a_peer_that_does_not_read_is_a_slow_consumer() -> None:
    edge = Edge(write_limit_bytes=1024)
    device = edge.ws("c1")
    await edge.flush()
    device.transport.stall()
    device.send(b"".join(_masked(0x89, b"p" * 100) for _ in range(50)))
    assert device.transport.closed
    assert edge.server.stats.slow_consumers == 1
    assert b"\x88" in bytes(device.transport.written)[-200:]
