"""WebSocket framing for the edge, sans I/O.

Outbound: server frames are never masked and we negotiate no extension, so a frame's bytes are the
same for every connection: a push is encoded once and written to every socket. The encoder is a
few lines of RFC 6455 section 5.2 and needs no per-connection state.

Inbound: wsproto's `FrameProtocol` parses and validates client frames (masking, opcodes, reserved
bits, control-frame rules, UTF-8 of text, close codes). A `FrameReader` holding one is created when
bytes arrive and dropped again as soon as no frame or message is half-received, so an idle socket
keeps no parser at all.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import cast

from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from zuulpush.errors import FrameViolation


class Close(IntEnum):
    """Close codes we send. 1xxx from RFC 6455; 4xxx are ours and come with a JSON reason."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    RECONNECT = 4000
    SLOW_CONSUMER = 4002
    REPLACED = 4003


def _header(opcode: int, length: int) -> bytes:
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def text_frame(payload: bytes) -> bytes:
    """One unfragmented server text frame carrying `payload` (UTF-8)."""
    return _header(Opcode.TEXT, len(payload)) + payload


def binary_frame(payload: bytes) -> bytes:
    return _header(Opcode.BINARY, len(payload)) + payload


def ping_frame(payload: bytes = b"") -> bytes:
    return _header(Opcode.PING, len(payload)) + payload


def pong_frame(payload: bytes = b"") -> bytes:
    return _header(Opcode.PONG, len(payload)) + payload


def close_frame(code: int | None = None, reason: str = "") -> bytes:
    """A close frame; the reason is cut to fit the 125-byte control-frame limit."""
    if code is None:
        return _header(Opcode.CLOSE, 0)
    body = struct.pack("!H", code) + _cut_utf8(reason.encode(), 123)
    return _header(Opcode.CLOSE, len(body)) + body


def _cut_utf8(data: bytes, limit: int) -> bytes:
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode()


PING = ping_frame()


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message from the peer."""

    text: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    code: int
    reason: str


FrameEvent = Message | Ping | Pong | CloseReceived
"""What `FrameReader.feed` gives: a whole message or a control frame from the peer."""


class FrameReader:
    """Turns client bytes into whole messages and control events, within a size limit.

    Raises `FrameViolation` carrying the close code to send (1002 protocol error, 1007 invalid
    UTF-8, 1009 too big). 1009 comes as soon as a data frame's header is read if the length it
    announces (added to what a fragmented message holds so far) passes the limit: no payload
    of such a frame is waited for. A violation ends the bytes given to that `feed`: whole
    messages before it in the same bytes are not returned (the connection is closing anyway).
    `idle` says whether the reader may be dropped.
    """

    __slots__ = ("_fp", "_max_bytes", "_parts", "_size", "_text")

    def __init__(self, max_message_bytes: int) -> None:
        self._fp = FrameProtocol(client=False, extensions=[])
        self._max_bytes = max_message_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self._text = False

    def feed(self, data: bytes) -> list[FrameEvent]:
        self._fp.receive_bytes(data)
        events: list[FrameEvent] = []
        try:
            for frame in self._fp.received_frames():
                event = self._event(frame.opcode, frame.payload, frame.message_finished)
                if event is not None:
                    events.append(event)
        except ParseFailed as exc:
            raise FrameViolation(int(exc.code), str(exc)) from None
        self._check_announced()
        return events

    def _check_announced(self) -> None:
        """1009 if the data frame whose header wsproto holds would take the message past the
        limit: its announced length, less what of it has arrived (already in `_size`)."""
        decoder = self._fp._frame_decoder
        header = decoder.header
        if header is None or header.opcode.iscontrol():
            return
        if self._size + header.payload_len - decoder.payload_consumed > self._max_bytes:
            raise FrameViolation(Close.TOO_BIG, f"message larger than {self._max_bytes} bytes")

    @property
    def idle(self) -> bool:
        """True when no frame or message is partly received (wsproto keeps this state inside)."""
        decoder = self._fp._frame_decoder
        return (
            not self._parts
            and decoder.header is None
            and len(decoder.buffer) == 0
            and self._fp._message_decoder.opcode is None
        )

    def _event(self, opcode: Opcode, payload: object, finished: bool) -> FrameEvent | None:
        if opcode is Opcode.CLOSE:
            code, reason = cast(tuple[int, str], payload)
            return CloseReceived(int(code), reason)
        # wsproto gives text payloads as str (already UTF-8 checked), others as bytes.
        chunk = payload.encode() if isinstance(payload, str) else bytes(cast(bytes, payload))
        if opcode is Opcode.PING:
            return Ping(chunk)
        if opcode is Opcode.PONG:
            return Pong(chunk)
        if not self._parts:
            self._text = opcode is Opcode.TEXT
        self._size += len(chunk)
        if self._size > self._max_bytes:
            raise FrameViolation(Close.TOO_BIG, f"message larger than {self._max_bytes} bytes")
        self._parts.append(chunk)
        if not finished:
            return None
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        self._size = 0
        return Message(self._text, data)
