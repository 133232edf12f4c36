"""Property tests (hypothesis) of the edge's sans-I/O input handling: frames, request heads.

- `FrameReader` fed any bytes, in any chunking, raises nothing but a `FrameViolation` with a close
  code of the README's table, and a valid client frame stream decodes to the same events however
  it is split.
- `request.decide` on any head answers an `Accept` or an error with an HTTP status (never
  another exception). (`fasthead.parse` against h11 on generated heads is in
  `test_edge_fasthead.py`.)

Bounded and derandomized (`FUZZ`): the whole module runs in a few seconds. The protocol-level
fuzzing of a whole `EdgeConnection` is in `test_edge_fuzz_protocol.py`.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

from core.errors import ZuulpushError
from core.tokens import AuthConfig, TokenVerifier, issue_token
from zuulpush.edge.request import Accept, check_head_size, decide
from zuulpush.edge.wsframes import (
    Close,
    CloseReceived,
    FrameEvent,
    FrameReader,
    Message,
    Ping,
    Pong,
)
from zuulpush.errors import FrameViolation

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
FRAME_CODES = frozenset({Close.PROTOCOL_ERROR, Close.INVALID_PAYLOAD, Close.TOO_BIG})
"""What `FrameReader` may close with (README: 1002, 1007, 1009; 1003/1008 come later, from
`inbound`)."""
MAX_MESSAGE = 4096
SECRET = "fuzz-test-secret-of-at-least-32-bytes!!"
VERIFIER = TokenVerifier(AuthConfig(secret=SECRET))


# frames


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a] or ([data] if data else [])


def _feed(chunks: list[bytes]) -> tuple[list[FrameEvent], FrameViolation | None]:
    reader = FrameReader(MAX_MESSAGE)
    events: list[FrameEvent] = []
    try:
        for chunk in chunks:
            events.extend(reader.feed(chunk))
    except FrameViolation as exc:
        return events, exc
    return events, None


_HEADER_BYTES = st.sampled_from([0x81, 0x82, 0x80, 0x01, 0x00, 0x88, 0x89, 0x8A, 0xC1, 0xA1,
                                 0x91, 0x83, 0x8B, 0x8F, 0x02])
_LENGTH_BYTES = st.sampled_from([0x80, 0x81, 0x85, 0xFD, 0xFE, 0xFF, 0x05, 0x7E, 0x7F])
_frame_like = st.tuples(_HEADER_BYTES, _LENGTH_BYTES, st.binary(max_size=40)).map(
    lambda t: bytes(t[:2]) + t[2])
"""Byte strings that look like frame headers (FIN/RSV/opcode, MASK/length) with random rest, so
that the parser gets past the first byte often: reserved bits, bad opcodes, unmasked, 64-bit
lengths, control frames too long or fragmented."""


@FUZZ
@given(data=st.one_of(st.binary(max_size=200),
                      st.lists(_frame_like, max_size=6).map(b"".join)),
       cuts=st.lists(st.integers(0, 200), max_size=8))
def test_frame_reader_raises_only_frame_violations_with_a_documented_code(
        data: bytes, cuts: list[int]) -> None:
    _, violation = _feed(_split(data, cuts))
    if violation is not None:
        assert violation.close_code in FRAME_CODES, violation


_text = st.text(max_size=60)
_client_frames = st.lists(st.one_of(
    st.tuples(st.just("text"), _text, st.integers(1, 3)),
    st.tuples(st.just("binary"), st.binary(max_size=60), st.integers(1, 3)),
    st.tuples(st.just("ping"), st.binary(max_size=125), st.just(1)),
    st.tuples(st.just("pong"), st.binary(max_size=125), st.just(1)),
), max_size=8)


def _encode(frames: list[tuple[str, object, int]], close: tuple[int, str] | None) -> bytes:
    """A valid client stream: data messages fragmented in `parts` frames, control frames
    between them, optionally a close at the end."""
    fp = FrameProtocol(client=True, extensions=[])
    out = bytearray()
    for kind, payload, parts in frames:
        if kind in ("ping", "pong"):
            out += (fp.ping if kind == "ping" else fp.pong)(payload)  # type: ignore[arg-type]
            continue
        size = len(payload)  # type: ignore[arg-type]
        step = max(1, -(-size // parts))
        pieces = [payload[i:i + step] for i in range(0, size, step)] or [payload]  # type: ignore[index]
        for i, piece in enumerate(pieces):
            out += fp.send_data(piece, fin=i == len(pieces) - 1)
    if close is not None:
        out += fp.close(*close)
    return bytes(out)


def _expected(frames: list[tuple[str, object, int]]) -> list[FrameEvent]:
    out: list[FrameEvent] = []
    for kind, payload, _ in frames:
        if kind == "ping":
            out.append(Ping(payload))  # type: ignore[arg-type]
        elif kind == "pong":
            out.append(Pong(payload))  # type: ignore[arg-type]
        elif kind == "text":
            out.append(Message(True, payload.encode()))  # type: ignore[union-attr]
        else:
            out.append(Message(False, payload))  # type: ignore[arg-type]
    return out


@FUZZ
@given(frames=_client_frames,
       close=st.one_of(st.none(), st.tuples(st.sampled_from([1000, 1001, 3000, 4999]),
                                             st.text(max_size=20))),
       cuts=st.lists(st.integers(0, 2000), max_size=12))
def test_a_valid_stream_split_anywhere_decodes_the_same(
        frames: list[tuple[str, object, int]], close: tuple[int, str] | None,
        cuts: list[int]) -> None:
    data = _encode(frames, close)
    events, violation = _feed(_split(data, cuts))
    assert violation is None
    expected = _expected(frames)
    if close is not None:
        expected.append(CloseReceived(*close))
    assert events == expected
    whole, _ = _feed([data])
    assert whole == expected


@FUZZ
@given(cuts=st.lists(st.integers(0, 64), max_size=6))
def test_a_reader_between_frames_is_idle_and_one_inside_one_is_not(cuts: list[int]) -> None:
    fp = FrameProtocol(client=True, extensions=[])
    data = bytes(fp.send_data("hello world, fragmented", fin=False)) + \
        bytes(fp.send_data(" and finished", fin=True))
    reader = FrameReader(MAX_MESSAGE)
    chunks = _split(data, cuts)
    for chunk in chunks[:-1]:
        reader.feed(chunk)
        assert not reader.idle
    assert reader.feed(chunks[-1]) == [Message(True, b"hello world, fragmented and finished")]
    assert reader.idle


def _masked(first: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((first, 0x80 | len(payload))) + mask + body


@FUZZ
@given(payload=st.binary(max_size=40))
def test_named_violations_close_with_their_documented_code(payload: bytes) -> None:
    cases = [
        (bytes((0x81, len(payload))) + payload, Close.PROTOCOL_ERROR),  # unmasked
        (_masked(0xC1, payload), Close.PROTOCOL_ERROR),  # RSV1: compressed, not negotiated
        (_masked(0xA1, payload), Close.PROTOCOL_ERROR),  # RSV2
        (_masked(0x83, payload), Close.PROTOCOL_ERROR),  # reserved data opcode
        (_masked(0x8B, payload), Close.PROTOCOL_ERROR),  # reserved control opcode
        (_masked(0x09, payload), Close.PROTOCOL_ERROR),  # fragmented ping
        (_masked(0x80, payload), Close.PROTOCOL_ERROR),  # continuation with nothing to continue
        (_masked(0x88, b"\x03\xec" + payload[:10]), Close.PROTOCOL_ERROR),  # close code 1004
        (_masked(0x88, b"\x03"), Close.PROTOCOL_ERROR),  # a one-byte close body
        (_masked(0x81, b"\xff" + payload), Close.INVALID_PAYLOAD),
        (_masked(0x88, b"\x03\xe8\xc3\x28"), Close.INVALID_PAYLOAD),  # close reason not UTF-8
    ]
    for data, code in cases:
        _, violation = _feed([data])
        assert violation is not None and violation.close_code == code, (data, violation)


def test_a_message_over_the_limit_is_1009_even_in_small_fragments() -> None:
    fp = FrameProtocol(client=True, extensions=[])
    data = b"".join(bytes(fp.send_data(b"x" * 100, fin=False)) for _ in range(50))
    _, violation = _feed([data])
    assert violation is not None and violation.close_code == Close.TOO_BIG


# request heads

MAX_HEAD = 8192
"""(fasthead against h11 on generated heads: tests/edge/test_edge_fasthead.py.)"""


_header_names = st.sampled_from([b"upgrade", b"connection", b"sec-websocket-key",
                                 b"sec-websocket-version", b"authorization", b"cookie",
                                 b"last-event-id", b"host", b"x-other"])
_header_values = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"websocket", b"Upgrade", b"13", b"dGhlIHNhbXBsZSBub25jZQ==",
                     b"Bearer x.y.z", b"Bearer ", b"zuulpush_token=", b"zuulpush_token=a.b.c"]),
)
_targets = st.one_of(
    st.binary(max_size=60),
    st.sampled_from([b"/ws", b"/sse", b"/echo", b"/healthz", b"/metrics", b"/admin/drain",
                     b"/admin/status", b"/admin/clients/", b"/admin/clients/%ff/close?code=x",
                     b"/admin/clients/a%00b", b"/ws?token=", b"/ws?token=%ff%fe&last_id=%00",
                     b"/ws?last_id=" + b"9" * 70, b"/sse?token=a.b.c&&&==&"]),
    st.tuples(st.sampled_from([b"/ws?", b"/sse?", b"/admin/clients/"]),
              st.binary(max_size=40)).map(b"".join),
)


@FUZZ
@given(method=st.sampled_from([b"GET", b"POST", b"PUT", b"get", b"X"]), target=_targets,
       headers=st.lists(st.tuples(_header_names, _header_values), max_size=8),
       echo=st.booleans(), admin_key=st.sampled_from(["", "admin-key"]))
def test_decide_on_any_head_accepts_or_answers_an_http_error(
        method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], echo: bool,
        admin_key: str) -> None:
    try:
        check_head_size(method, target, headers, MAX_HEAD)
        accept = decide(method, target, headers, verifier=VERIFIER, echo_enabled=echo,
                        admin_key=admin_key)
    except ZuulpushError as exc:
        assert 400 <= exc.http_status < 500, exc
        assert exc.body()["error"]["message"]
        return
    assert isinstance(accept, Accept)


@FUZZ
@given(token_suffix=st.binary(max_size=30), where=st.sampled_from(["query", "bearer", "cookie"]))
def test_decide_with_damaged_tokens_is_401(token_suffix: bytes, where: str) -> None:
    good = issue_token(SECRET, client_id="c1", user_id="u1", device_type="android")
    bad = good.encode()[:-5] + token_suffix.replace(b"&", b"").replace(b";", b"")
    headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
               (b"sec-websocket-version", b"13"),
               (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")]
    target = b"/ws"
    if where == "query":
        target += b"?token=" + bad
    elif where == "bearer":
        headers.append((b"authorization", b"Bearer " + bad))
    else:
        headers.append((b"cookie", b"zuulpush_token=" + bad))
    try:
        accept = decide(b"GET", target, headers, verifier=VERIFIER, echo_enabled=False)
    except ZuulpushError as exc:
        assert exc.http_status in (400, 401), exc
        return
    # Only a suffix that decodes to the same signature passes (base64's unused low bits).
    assert accept.identity is not None and accept.identity.client_id == "c1"
