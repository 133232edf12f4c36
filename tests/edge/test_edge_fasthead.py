"""fasthead: for every head it parses, exactly what h11 makes of it; None for the rest."""

from __future__ import annotations

import random

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zuulpush.edge import fasthead

MAX = 8192
GOOD = (b"GET /ws?token=a.b-c_d HTTP/1.1\r\n"
        b"Host: 127.0.0.1:8080\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"User-Agent: Python/3.11 websockets/12.0\r\n"
        b"\r\n")


def by_h11(data: bytes) -> fasthead.Head | None:
    """What the edge took from h11 before: a complete HTTP/1.1 request, or None."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX)
    try:
        conn.receive_data(data)
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request) or event.http_version != b"1.1":
        return None
    return event.method, event.target, list(event.headers), conn.trailing_data[0]


def agrees(data: bytes) -> fasthead.Head | None:
    fast = fasthead.parse(data, MAX)
    if fast is not None:
        assert fast == by_h11(data), data
    return fast


def test_a_plain_upgrade_is_parsed_with_its_trailing_bytes() -> None:
    frame = b"\x81\x85abcd" + b"hello"
    method, target, headers, trailing = agrees(GOOD + frame) or pytest.fail("not parsed")
    assert (method, target, trailing) == (b"GET", b"/ws?token=a.b-c_d", frame)
    assert headers[0] == (b"host", b"127.0.0.1:8080") and len(headers) == 6


@pytest.mark.parametrize("data", [
    GOOD.replace(b"/ws?token=a.b-c_d", b"/sse?token=x"),  # SSE: h11 frames its response
    GOOD.replace(b"/ws?token=a.b-c_d", b"/ws?"),
    GOOD.replace(b"/ws?token=a.b-c_d", b"/wsx"),
    GOOD.replace(b"HTTP/1.1", b"HTTP/1.0"),
    GOOD.replace(b"Host: 127.0.0.1:8080\r\n", b""),
    GOOD.replace(b"Host: 127.0.0.1:8080\r\n", b"Host: a\r\nHost: b\r\n"),
    GOOD.replace(b"User-Agent", b" User-Agent"),  # obsolete line folding
    GOOD.replace(b"Upgrade: websocket\r\n", b"Upgrade: websocket\r\n continued\r\n"),
    GOOD.replace(b"\r\n", b"\n"),
    GOOD.replace(b"Connection: Upgrade", b"Connection : Upgrade"),
    GOOD.replace(b"Upgrade: websocket", b"Upgrade: web\x00socket"),
    GOOD.replace(b"Upgrade: websocket", b"Upgrade: web\rsocket"),
    GOOD.replace(b"/ws?token", b"/ws?to ken"),
    GOOD.replace(b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"),
    GOOD.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n"),
    GOOD[:-2],  # incomplete: the rest may come in the next read
    b"GET /ws HTTP/1.1\r\nHost: h\r\nX: " + b"v" * MAX + b"\r\n\r\n",  # bigger than the bound
])
def test_everything_else_is_left_to_h11(data: bytes) -> None:
    assert fasthead.parse(data, MAX) is None


@pytest.mark.parametrize("data", [
    GOOD.replace(b"Upgrade: websocket", b"Upgrade:websocket"),
    GOOD.replace(b"Upgrade: websocket", b"Upgrade: \t websocket \t "),
    GOOD.replace(b"User-Agent: Python", b"X-Odd: a\x01b\x7f\xff c"),  # h11 takes any non-space
    GOOD.replace(b"GET", b"POST"),  # parsed; the edge answers 405
    GOOD.replace(b"/ws?token=a.b-c_d", b"/ws"),
    GOOD.replace(b"Host: 127.0.0.1:8080", b"hOsT: [::1]:1"),
])
def test_unusual_but_valid_heads_match_h11(data: bytes) -> None:
    assert agrees(data) is not None


def test_random_damage_never_makes_it_disagree_with_h11() -> None:
    rng = random.Random(20261121)
    alphabet = b" \t\r\n\x00:/?\x7f\xffAz0-"
    parsed = 0
    for _ in range(5000):
        data = bytearray(GOOD)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                data[at] = rng.choice(alphabet)
            elif action == 1:
                data.insert(at, rng.choice(alphabet))
            else:
                del data[at]
        parsed += agrees(bytes(data)) is not None
    assert parsed > 500  # many damaged heads are still valid, and are parsed the same


def test_the_grammar_is_h11s() -> None:
    from h11 import _abnf

    for name in ("method", "request_target", "field_name", "field_value"):
        assert getattr(fasthead, name.upper()) == getattr(_abnf, name), name


FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
_damage = st.lists(st.tuples(st.integers(0, len(GOOD) + 8), st.integers(0, 4),
                             st.binary(max_size=4)), max_size=4)
_ALPHABET = b"\r\n :\t\x00\x7f\xff/?=GETHOSTws1."


@FUZZ
@given(damage=_damage, tail=st.binary(max_size=8))
def test_fasthead_parses_only_what_h11_parses_the_same(
        damage: list[tuple[int, int, bytes]], tail: bytes) -> None:
    data = bytearray(GOOD)
    for at, cut, insert in damage:
        data[at:at + cut] = insert
    data += tail
    agrees(bytes(data))


@FUZZ
@given(raw=st.lists(st.sampled_from(list(_ALPHABET)), max_size=80).map(bytes))
def test_fasthead_on_heads_made_of_its_delimiters(raw: bytes) -> None:
    agrees(b"GET /ws HTTP/1.1\r\nHost: h\r\n" + raw + b"\r\n\r\n")
