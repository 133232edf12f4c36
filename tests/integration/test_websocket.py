"""The WebSocket after the upgrade: heartbeats, what devices may send and the close codes for what
they may not, and the diagnostic `/echo` endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from .clients import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    client_frame,
    http_exchange,
    push_api,
    raw_connection,
    raw_ws_handshake,
    read_close,
    read_frame,
    ws_connect,
    ws_recv_json,
    ws_request,
    ws_url,
)
from .servers import HEARTBEAT_S, ServerProcess

Ids = Callable[[str], str]


async def test_heartbeat_closes_a_peer_that_never_answers_pings(server: ServerProcess, ids: Ids
                                                                ) -> None:
    alive = ids("alive")
    async with (ws_connect(ws_url(server.edge, token=server.token(alive)),
                           ping_interval=None) as live,
                raw_connection(server.edge) as (reader, writer)):
        await raw_ws_handshake(reader, writer, f"/ws?token={server.token(ids('dead'))}")
        started = time.monotonic()

        async def pings_until_eof() -> int:
            for pings in range(100):
                try:
                    opcode, _ = await read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionResetError):
                    return pings
                assert opcode == OP_PING, opcode  # and we never answer it
            raise AssertionError("still open after 100 pings")

        pings = await asyncio.wait_for(pings_until_eof(), 4 * HEARTBEAT_S + 1.0)
        closed_after = time.monotonic() - started
        assert pings >= 1
        assert HEARTBEAT_S <= closed_after <= 4 * HEARTBEAT_S + 1.0, closed_after

        # The websockets client answers pings (its own ping_interval is off, so the server's
        # are the only traffic): it stays open over the same period and still gets pushes.
        await asyncio.sleep(max(0.0, 3 * HEARTBEAT_S - (time.monotonic() - started)))
        assert live.state is State.OPEN
        async with push_api(server.api, server.api_key) as api:
            sent = await api.send("still here", clients=[alive])
        assert (await ws_recv_json(live))["id"] == sent


async def close_code_for(server: ServerProcess, token: str, frame: bytes) -> int:
    """Upgrade by hand, send `frame`, and return the close code the server answers with."""
    async with raw_connection(server.edge) as (reader, writer):
        await raw_ws_handshake(reader, writer, f"/ws?token={token}")
        writer.write(frame)
        await writer.drain()
        code, _ = await read_close(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then it closes the socket
        return code


async def test_invalid_utf8_text_frame_closes_with_1007(server: ServerProcess, ids: Ids) -> None:
    frame = client_frame(OP_TEXT, b'{"type": "ack", "id": "\xff\xfe"}')
    assert await close_code_for(server, server.token(ids("phone")), frame) == 1007


async def test_unmasked_frame_closes_with_1002(server: ServerProcess, ids: Ids) -> None:
    payload = orjson.dumps({"type": "ack", "id": "x"})
    unmasked = bytes((0x80 | OP_TEXT, len(payload))) + payload
    assert await close_code_for(server, server.token(ids("phone")), unmasked) == 1002


async def test_close_frame_from_device_is_answered(server: ServerProcess, ids: Ids) -> None:
    async with raw_connection(server.edge) as (reader, writer):
        await raw_ws_handshake(reader, writer, f"/ws?token={server.token(ids('phone'))}")
        writer.write(client_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"bye"))
        await writer.drain()
        assert await read_close(reader) == (1000, "")
        assert await asyncio.wait_for(reader.read(), 5) == b""


async def expect_close(server: ServerProcess, token: str, message: str | bytes) -> int:
    """Send `message` with the websockets client; the close code the server sent."""
    async with ws_connect(ws_url(server.edge, token=token), max_size=None) as ws:
        await ws.send(message)
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(ws.recv(), 5)
    assert caught.value.rcvd is not None, "no close frame received"
    return caught.value.rcvd.code


@pytest.mark.parametrize(("name", "message", "code"), [
    ("too-big", "x" * (100 * 1024), 1009),
    ("binary", b'{"type": "ack", "id": "x"}', 1003),
    ("not-json", "hello", 1008),
    ("not-an-ack", '{"type": "hello"}', 1008),
    ("ack-without-id", '{"type": "ack"}', 1008),
])
async def test_device_frame_violations_close_with_their_code(
        server: ServerProcess, ids: Ids, name: str, message: str | bytes, code: int) -> None:
    assert await expect_close(server, server.token(ids("phone")), message) == code


@pytest.mark.parametrize("path", ["/ws", "/echo"])
async def test_a_header_announcing_2_63_bytes_is_closed_with_1009_at_once(
        serve_factory: Callable[..., ServerProcess], ids: Ids, path: str) -> None:
    """Only a frame header, announcing 2^63-1 bytes (the largest length RFC 6455 allows): the
    edge answers 1009 from the header alone and shuts the socket. Its heartbeat is 60 s here, so
    nothing but the header can end this connection within the few seconds the reads wait."""
    edge = serve_factory(ZUULPUSH_HEARTBEAT_INTERVAL_S="60", ZUULPUSH_ECHO="1")
    query = f"?token={edge.token(ids('phone'))}" if path == "/ws" else ""
    header = (bytes((0x80 | OP_TEXT, 0x80 | 127)) + ((1 << 63) - 1).to_bytes(8, "big")
              + b"\x37\xfa\x21\x3d")  # FIN text, masked, 8-byte length, the masking key
    async with raw_connection(edge.edge) as (reader, writer):
        await raw_ws_handshake(reader, writer, path + query)
        writer.write(header)
        await writer.drain()
        code, reason = await read_close(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the edge shut the socket
    assert code == 1009, (code, reason)
    assert "larger than" in reason


async def test_a_continuation_header_past_the_limit_is_closed_with_1009_at_once(
        serve_factory: Callable[..., ServerProcess], ids: Ids) -> None:
    """A first fragment within ws_max_message_bytes (64 KiB by default), then a continuation
    header announcing enough to pass it: 1009 before any of the continuation's payload."""
    edge = serve_factory(ZUULPUSH_HEARTBEAT_INTERVAL_S="60")
    first = client_frame(OP_TEXT, b'{"type": "ack", "id": "', fin=False)
    continuation = bytes((0x80, 0x80 | 127)) + (1 << 20).to_bytes(8, "big") + b"\x01\x02\x03\x04"
    async with raw_connection(edge.edge) as (reader, writer):
        await raw_ws_handshake(reader, writer, f"/ws?token={edge.token(ids('phone'))}")
        writer.write(first + continuation)
        await writer.drain()
        code, _ = await read_close(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    assert code == 1009


async def test_too_many_acks_close_with_1008(server: ServerProcess, ids: Ids) -> None:
    # ws_inbound_burst (200) per window of burst / rate (4 s). The 201 acks go in one write, so
    # the server reads them together (within one window) and the device sends nothing after.
    acks = b"".join(client_frame(OP_TEXT, orjson.dumps({"type": "ack", "id": f"m{n}"}))
                    for n in range(201))
    assert await close_code_for(server, server.token(ids("phone")), acks) == 1008


async def test_close_frame_reaches_a_device_that_is_still_sending(server: ServerProcess,
                                                                  ids: Ids) -> None:
    """A device that violates the protocol while it has more bytes on the way (a flood, a big
    upload) must still receive the close frame telling it why."""
    violation = client_frame(OP_BINARY, b"binary is not allowed")
    # 16 MiB more on the way: more than loopback socket buffers hold, so the device is still
    # writing when the server has answered. In frames of 64 KiB (ws_max_message_bytes): one
    # frame announcing 16 MiB would be refused (1009) on its header, in the same read.
    more = client_frame(OP_TEXT, b"x" * (64 << 10)) * 256
    async with raw_connection(server.edge) as (reader, writer):
        await raw_ws_handshake(reader, writer, f"/ws?token={server.token(ids('phone'))}")
        writer.write(violation + more)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await asyncio.wait_for(writer.drain(), 5)
        code, _ = await read_close(reader)
    assert code == 1003


async def test_echo_returns_text_and_binary_including_1_mib(server: ServerProcess) -> None:
    big = os.urandom(1 << 20)
    async with ws_connect(ws_url(server.edge, "/echo"), max_size=2 << 20) as ws:
        for message in ("hello", "ünïcödé", b"\x00\x01binary", big):
            await ws.send(message)
            echoed = await asyncio.wait_for(ws.recv(), 10)
            assert echoed == message


async def test_echo_is_404_without_the_flag(serve_factory: Callable[..., ServerProcess]
                                            ) -> None:
    plain = serve_factory()
    answer = await http_exchange(plain.edge, ws_request("/echo"))
    assert answer.status == 404
    assert answer.json()["error"]["code"] == "not_found"
    with pytest.raises(InvalidStatus) as caught:
        async with ws_connect(ws_url(plain.edge, "/echo")):
            pass
    assert caught.value.response.status_code == 404


async def test_raw_echo_of_fragmented_binary(server: ServerProcess) -> None:
    async with raw_connection(server.edge) as (reader, writer):
        await raw_ws_handshake(reader, writer, "/echo")
        writer.write(client_frame(OP_BINARY, b"ab", fin=False) + client_frame(0x0, b"cd"))
        await writer.drain()
        assert await read_frame(reader) == (OP_BINARY, b"abcd")
