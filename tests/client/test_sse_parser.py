"""The text/event-stream parser, sans I/O, against the WHATWG algorithm's corner cases and the
edge's own encoder (zuulpush.edge.sse)."""

from __future__ import annotations

import pytest

from zuulpush.client.sse import SseEvent, SseParser, SseProtocolError
from zuulpush.edge import sse as edge_sse


def feed_all(parser: SseParser, *chunks: bytes) -> list[SseEvent]:
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_what_the_edge_sends() -> None:
    parser = SseParser()
    # the edge frames events as HTTP chunks; aiohttp hands us the de-chunked body
    body = b"retry: 3000\n\n" + b": keepalive\n\n"
    body += b'id: 01A\nevent: message\ndata: {"id":"01A","data":1}\n\n'
    body += b'event: reconnect\ndata: {"code":4000,"reason":"shutdown","reconnect_after_ms":7}\n\n'
    body += b"retry: 7\n\n"
    events = parser.feed(body)
    assert events == [
        SseEvent("message", '{"id":"01A","data":1}', "01A"),
        SseEvent("reconnect", '{"code":4000,"reason":"shutdown","reconnect_after_ms":7}', "01A"),
    ]
    assert parser.retry_ms == 7


def test_the_edge_encoder_round_trips() -> None:
    chunk = edge_sse.message("01Z", b'{"id":"01Z"}')
    size, _, rest = chunk.partition(b"\r\n")
    body = rest[:int(size, 16)]
    assert SseParser().feed(body) == [SseEvent("message", '{"id":"01Z"}', "01Z")]


def test_every_split_point_gives_the_same_events() -> None:
    body = ("\ufeffid: 1\r\ndata: a\r\ndata: é€😀\r\n\r\n: c\rdata: b\revent: x\r\r"
            "data:no-space\n\n").encode()
    whole = SseParser().feed(body)
    assert whole == [SseEvent("message", "a\né€😀", "1"), SseEvent("x", "b", "1"),
                     SseEvent("message", "no-space", "1")]
    for cut in range(1, len(body)):
        assert feed_all(SseParser(), body[:cut], body[cut:]) == whole, cut
    assert feed_all(SseParser(), *(body[i:i + 1] for i in range(len(body)))) == whole


def test_field_rules() -> None:
    parser = SseParser()
    events = parser.feed(b"data\n\n"  # a field without a colon: empty value
                         b"id: bad\0id\ndata: x\n\n"  # an id with NUL is ignored
                         b"retry: 12a\nretry: -1\ndata: y\n\n"  # retry only when all digits
                         b"event: only\n\n"  # no data: nothing is dispatched
                         b"data: z\n\n"  # the event type was reset
                         b"unknown: 1\ndata:  two spaces\n\n")
    assert events == [SseEvent("message", "", ""), SseEvent("message", "x", ""),
                      SseEvent("message", "y", ""), SseEvent("message", "z", ""),
                      SseEvent("message", " two spaces", "")]
    assert parser.retry_ms is None
    assert parser.feed(b"id\ndata: w\n\n") == [SseEvent("message", "w", "")]  # empty id resets


def test_an_incomplete_event_waits_and_sizes_are_bounded() -> None:
    parser = SseParser(max_event_chars=16)
    assert parser.feed(b"data: 1234") == []
    assert parser.feed(b"\n\n") == [SseEvent("message", "1234", "")]
    with pytest.raises(SseProtocolError):
        parser.feed(b"x" * 17)
    parser = SseParser(max_event_chars=16)
    with pytest.raises(SseProtocolError):
        parser.feed(b"data: 123456789\ndata: 123456789\n")
