"""Unit tests of `zuulpush.edge.wsframes`: the server-frame encoder and the client-frame reader.

Encoded frames are checked by wsproto acting as the client, which is the parser a real peer would
run; client frames are made by wsproto too (masked, as RFC 6455 requires), except the malformed
ones, which are built by hand.
"""

from __future__ import annotations

import itertools
import os
import struct

import pytest
from wsproto.frame_protocol import Frame, FrameProtocol, Opcode

from zuulpush.edge.wsframes import (
    PING,
    Close,
    CloseReceived,
    FrameReader,
    Message,
    Ping,
    Pong,
    binary_frame,
    close_frame,
    ping_frame,
    pong_frame,
    text_frame,
)
from zuulpush.errors import FrameViolation

LENGTHS = [(0, 2), (1, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (70000, 10)]
LIMIT = 1024


def as_client(data: bytes) -> list[Frame]:
    """What a WebSocket client makes of bytes the server sent."""
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(data)
    return list(client.received_frames())


def client() -> FrameProtocol:
    return FrameProtocol(client=True, extensions=[])


def masked(first_byte: int, payload: bytes, *, key: bytes = b"\x11\x22\x33\x44") -> bytes:
    """A hand-made client frame: `first_byte` is FIN|RSV|opcode; payload under 126 bytes."""
    assert len(payload) < 126
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((first_byte, 0x80 | len(payload))) + key + body


def violation(reader: FrameReader, *chunks: bytes) -> FrameViolation:
    with pytest.raises(FrameViolation) as info:
        for chunk in chunks:
            reader.feed(chunk)
    return info.value


# encoding


@pytest.mark.parametrize("length, header", LENGTHS)
def test_text_frame_lengths(length: int, header: int) -> None:
    payload = b"x" * length
    frame = text_frame(payload)
    assert len(frame) == header + length
    assert frame[0] == 0x81  # FIN, text
    assert frame[1] & 0x80 == 0  # server frames are never masked
    [parsed] = as_client(frame)
    assert parsed.opcode is Opcode.TEXT
    assert parsed.payload == payload.decode()
    assert parsed.frame_finished and parsed.message_finished


@pytest.mark.parametrize("length, header", LENGTHS)
def test_binary_frame_lengths(length: int, header: int) -> None:
    payload = os.urandom(length)
    frame = binary_frame(payload)
    assert len(frame) == header + length
    assert frame[0] == 0x82
    [parsed] = as_client(frame)
    assert parsed.opcode is Opcode.BINARY
    assert parsed.payload == payload


def test_text_frame_carries_multibyte_utf8() -> None:
    text = "héllo ✓ 🚀" * 20
    [parsed] = as_client(text_frame(text.encode()))
    assert parsed.payload == text


@pytest.mark.parametrize("length", [0, 1, 125])
def test_ping_and_pong_frames(length: int) -> None:
    payload = b"p" * length
    [ping] = as_client(ping_frame(payload))
    [pong] = as_client(pong_frame(payload))
    assert (ping.opcode, ping.payload) == (Opcode.PING, payload)
    assert (pong.opcode, pong.payload) == (Opcode.PONG, payload)
    assert len(ping_frame(payload)) == 2 + length


def test_shared_ping_is_an_empty_ping() -> None:
    assert PING == b"\x89\x00"


def test_frames_written_back_to_back_parse_in_order() -> None:
    stream = text_frame(b"one") + PING + binary_frame(b"\x00two") + close_frame(1000)
    frames = as_client(stream)
    assert [f.opcode for f in frames] == [Opcode.TEXT, Opcode.PING, Opcode.BINARY, Opcode.CLOSE]


def test_close_frame_without_code() -> None:
    assert close_frame() == b"\x88\x00"
    [parsed] = as_client(close_frame())
    assert parsed.opcode is Opcode.CLOSE
    assert parsed.payload == (1005, "")


@pytest.mark.parametrize("code", [Close.NORMAL, Close.GOING_AWAY, Close.POLICY_VIOLATION,
                                  Close.TOO_BIG, Close.RECONNECT, Close.SLOW_CONSUMER,
                                  Close.REPLACED])
def test_close_frame_with_code_and_reason(code: Close) -> None:
    [parsed] = as_client(close_frame(code, "because"))
    assert parsed.payload == (code, "because")


@pytest.mark.parametrize("char", ["a", "é", "✓", "🚀"])
def test_close_reason_is_cut_to_123_bytes_of_valid_utf8(char: str) -> None:
    frame = close_frame(Close.POLICY_VIOLATION, char * 200)
    assert frame[1] <= 125  # one-byte length: a control frame
    assert len(frame) == 2 + frame[1]
    reason = frame[4:]
    assert 123 - len(char.encode()) < len(reason) <= 123
    assert reason.decode() == char * (len(reason) // len(char.encode()))
    [parsed] = as_client(frame)  # wsproto checks the reason's UTF-8 itself
    assert parsed.payload == (Close.POLICY_VIOLATION, reason.decode())


def test_close_reason_of_exactly_123_bytes_is_kept() -> None:
    frame = close_frame(Close.NORMAL, "r" * 123)
    assert frame[1] == 125
    assert as_client(frame)[0].payload == (1000, "r" * 123)


# reading client frames


def test_reader_reads_a_masked_text_message() -> None:
    reader = FrameReader(LIMIT)
    assert reader.feed(bytes(client().send_data('{"type":"ack"}'))) == [
        Message(True, b'{"type":"ack"}')]
    assert reader.idle


def test_reader_reads_binary_ping_pong_and_close() -> None:
    peer = client()
    data = (peer.send_data(b"\x00\x01") + peer.ping(b"hb") + peer.pong(b"p")
            + peer.close(1000, "bye"))
    assert FrameReader(LIMIT).feed(bytes(data)) == [
        Message(False, b"\x00\x01"), Ping(b"hb"), Pong(b"p"), CloseReceived(1000, "bye")]


def test_reader_reports_a_close_without_code_as_1005() -> None:
    assert FrameReader(LIMIT).feed(bytes(client().close())) == [CloseReceived(1005, "")]


def test_reader_reassembles_a_fragmented_message_with_a_ping_inside() -> None:
    peer = client()
    reader = FrameReader(LIMIT)
    assert reader.feed(bytes(peer.send_data("hel", fin=False))) == []
    assert not reader.idle
    assert reader.feed(bytes(peer.ping(b"x"))) == [Ping(b"x")]
    assert not reader.idle
    assert reader.feed(bytes(peer.send_data("lo ✓", fin=True))) == [
        Message(True, "hello ✓".encode())]
    assert reader.idle


def test_reader_handles_bytes_one_at_a_time_and_is_idle_only_between_frames() -> None:
    peer = client()
    frames = [bytes(peer.send_data("first")), bytes(peer.send_data(b"second")), bytes(peer.ping())]
    boundaries = set(itertools.accumulate(len(frame) for frame in frames))
    stream = b"".join(frames)
    reader = FrameReader(LIMIT)
    events = []
    for end in range(1, len(stream) + 1):
        events += reader.feed(stream[end - 1:end])
        assert reader.idle == (end in boundaries), end
    assert events == [Message(True, b"first"), Message(False, b"second"), Ping(b"")]


def test_idle_is_false_mid_header_and_mid_payload() -> None:
    frame = bytes(client().send_data("x" * 200))  # 2+2 header, 4 mask, 200 payload
    reader = FrameReader(LIMIT)
    reader.feed(frame[:1])
    assert not reader.idle
    reader.feed(frame[1:6])  # header complete, masking key not yet
    assert not reader.idle
    reader.feed(frame[6:100])
    assert not reader.idle
    assert reader.feed(frame[100:]) == [Message(True, b"x" * 200)]
    assert reader.idle


def test_idle_is_true_before_anything_arrives() -> None:
    assert FrameReader(LIMIT).idle


def test_message_at_the_limit_is_accepted() -> None:
    data = bytes(client().send_data(b"b" * LIMIT))
    assert FrameReader(LIMIT).feed(data) == [Message(False, b"b" * LIMIT)]


def test_message_over_the_limit_is_1009() -> None:
    error = violation(FrameReader(LIMIT), bytes(client().send_data(b"b" * (LIMIT + 1))))
    assert error.close_code == Close.TOO_BIG


def test_message_over_the_limit_in_fragments_is_1009() -> None:
    peer = client()
    reader = FrameReader(LIMIT)
    reader.feed(bytes(peer.send_data("a" * 600, fin=False)))
    error = violation(reader, bytes(peer.send_data("a" * 600, fin=True)))
    assert error.close_code == Close.TOO_BIG


def test_message_over_the_limit_is_refused_before_it_all_arrives() -> None:
    # A declared 1 MB frame is refused on its header (2 + 8 bytes, then the 4-byte mask).
    frame = bytes(client().send_data(b"z" * (1 << 20)))
    reader = FrameReader(LIMIT)
    assert reader.feed(frame[:13]) == []
    assert violation(reader, frame[13:LIMIT]).close_code == Close.TOO_BIG


def test_limit_resets_between_messages() -> None:
    peer = client()
    reader = FrameReader(LIMIT)
    for _ in range(3):
        assert reader.feed(bytes(peer.send_data(b"m" * LIMIT))) == [Message(False, b"m" * LIMIT)]


def test_invalid_utf8_text_is_1007() -> None:
    error = violation(FrameReader(LIMIT), masked(0x81, b"\xff\xfe"))
    assert error.close_code == Close.INVALID_PAYLOAD


def test_invalid_utf8_split_over_fragments_is_1007() -> None:
    reader = FrameReader(LIMIT)
    assert reader.feed(masked(0x01, b"ok" + "é".encode()[:1])) == []
    error = violation(reader, masked(0x80, b"\x41"))  # continuation: not a UTF-8 tail byte
    assert error.close_code == Close.INVALID_PAYLOAD


def test_invalid_utf8_in_close_reason_is_1007() -> None:
    error = violation(FrameReader(LIMIT), masked(0x88, struct.pack("!H", 1000) + b"\xff"))
    assert error.close_code == Close.INVALID_PAYLOAD


def test_unmasked_frame_is_1002() -> None:
    unmasked = text_frame(b"hello")  # a server-style frame sent by a client
    assert violation(FrameReader(LIMIT), unmasked).close_code == Close.PROTOCOL_ERROR


@pytest.mark.parametrize("first_byte", [0xC1, 0xA1, 0x91, 0xF2],
                         ids=["rsv1", "rsv2", "rsv3", "all-rsv"])
def test_reserved_bits_are_1002(first_byte: int) -> None:
    error = violation(FrameReader(LIMIT), masked(first_byte, b"x"))
    assert error.close_code == Close.PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x7, 0xB, 0xF])
def test_unknown_opcodes_are_1002(opcode: int) -> None:
    error = violation(FrameReader(LIMIT), masked(0x80 | opcode, b"x"))
    assert error.close_code == Close.PROTOCOL_ERROR


@pytest.mark.parametrize(
    "frame",
    [
        masked(0x09, b""),  # fragmented ping
        masked(0x80, b"x"),  # continuation with nothing to continue
        masked(0x01, b"a") + masked(0x81, b"b"),  # new text inside a fragmented message
        masked(0x88, b"\x03"),  # one-byte close payload
        masked(0x88, struct.pack("!H", 1005)),  # reserved close code
        masked(0x88, struct.pack("!H", 999)),
    ],
    ids=["fragmented-ping", "stray-continuation", "interleaved-data", "close-1-byte",
         "close-1005", "close-999"],
)
def test_protocol_errors_are_1002(frame: bytes) -> None:
    assert violation(FrameReader(LIMIT), frame).close_code == Close.PROTOCOL_ERROR


def test_control_frame_over_125_bytes_is_1002() -> None:
    header = bytes((0x89, 0x80 | 126)) + struct.pack("!H", 126) + b"\x00\x00\x00\x00"
    assert violation(FrameReader(LIMIT), header + b"p" * 126).close_code == Close.PROTOCOL_ERROR



def _data_header(first_byte: int, length: int, *, key: bytes = b"\x11\x22\x33\x44") -> bytes:
    """A masked client frame header announcing `length` payload bytes (in the shortest length
    form, as RFC 6455 requires), and none of the payload."""
    if length < 126:
        head = bytes((first_byte, 0x80 | length))
    elif length < 1 << 16:
        head = bytes((first_byte, 0x80 | 126)) + struct.pack("!H", length)
    else:
        head = bytes((first_byte, 0x80 | 127)) + struct.pack("!Q", length)
    return head + key


@pytest.mark.parametrize("length", [(1 << 63) - 1, 1 << 32, 1 << 16, LIMIT + 1],
                         ids=["2^63-1", "4GiB", "64KiB", "limit+1"])
@pytest.mark.parametrize("first_byte", [0x81, 0x82, 0x01], ids=["text", "binary", "text-no-fin"])
def test_a_header_announcing_more_than_the_limit_is_1009_before_any_payload(
        first_byte: int, length: int) -> None:
    error = violation(FrameReader(LIMIT), _data_header(first_byte, length))
    assert error.close_code == Close.TOO_BIG
    assert str(LIMIT) in str(error)


def test_a_header_is_refused_however_its_bytes_arrive() -> None:
    header = _data_header(0x82, (1 << 63) - 1)
    reader = FrameReader(LIMIT)
    for byte in header[:-1]:
        assert reader.feed(bytes((byte,))) == []  # not a whole header yet: nothing to judge
    assert violation(reader, header[-1:]).close_code == Close.TOO_BIG


def test_a_continuation_header_taking_the_message_past_the_limit_is_1009_at_once() -> None:
    reader = FrameReader(LIMIT)
    assert reader.feed(bytes(client().send_data(b"a" * (LIMIT - 10), fin=False))) == []
    assert violation(reader, _data_header(0x80, 11)).close_code == Close.TOO_BIG


def test_a_continuation_header_with_part_of_its_payload_is_judged_on_the_whole_frame() -> None:
    reader = FrameReader(LIMIT)
    assert reader.feed(bytes(client().send_data(b"a" * 100, fin=False))) == []
    header = _data_header(0x80, LIMIT)  # 100 + LIMIT: past the limit, whatever has arrived
    assert violation(reader, header + b"\x00" * 10).close_code == Close.TOO_BIG


def test_a_continuation_reaching_exactly_the_limit_is_accepted() -> None:
    peer = client()
    reader = FrameReader(LIMIT)
    assert reader.feed(bytes(peer.send_data(b"a" * (LIMIT - 10), fin=False))) == []
    assert reader.feed(bytes(peer.send_data(b"b" * 10, fin=True))) == [
        Message(False, b"a" * (LIMIT - 10) + b"b" * 10)]


def test_a_header_announcing_exactly_the_limit_waits_for_its_payload() -> None:
    frame = bytes(client().send_data(b"c" * LIMIT))
    reader = FrameReader(LIMIT)
    assert reader.feed(frame[:8]) == []  # header and mask: within the limit, so keep reading
    assert not reader.idle
    assert reader.feed(frame[8:]) == [Message(False, b"c" * LIMIT)]


def test_a_ping_between_fragments_is_not_counted_against_the_message() -> None:
    peer = client()
    reader = FrameReader(LIMIT)
    assert reader.feed(bytes(peer.send_data(b"a" * LIMIT, fin=False))) == []
    assert reader.feed(bytes(peer.ping(b"p" * 125))) == [Ping(b"p" * 125)]
    assert reader.feed(bytes(peer.send_data(b"", fin=True))) == [Message(False, b"a" * LIMIT)]


def test_an_oversized_header_after_a_whole_message_in_the_same_bytes_is_1009() -> None:
    data = bytes(client().send_data(b"ok")) + _data_header(0x82, 1 << 40)
    assert violation(FrameReader(LIMIT), data).close_code == Close.TOO_BIG
