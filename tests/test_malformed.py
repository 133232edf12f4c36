"""`router.api.malformed`'s logic without sockets: the log throttle (time passed in) and the words
an answer gives for what the parser refused."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
    TransferEncodingError,
)

from router.api.malformed import RefusalLog, Refusals, reason


def test_one_line_per_interval_the_rest_counted_into_the_next() -> None:
    throttle = RefusalLog(interval_s=60.0)
    assert throttle.refused(1000.0) == 1  # the first: at once
    assert [throttle.refused(1000.0 + t) for t in (1, 2, 59.9)] == [None, None, None]
    assert throttle.refused(1060.0) == 4  # three held back and this one
    assert throttle.refused(1061.0) is None
    assert throttle.refused(5000.0) == 2


def test_refusals_count_each_and_log_when_due(caplog: pytest.LogCaptureFixture) -> None:
    counted: list[int] = []
    now = [0.0]
    refusals = Refusals(counted.append, RefusalLog(interval_s=10.0), clock_s=lambda: now[0])
    exc = BadHttpMessage("Content-Length overflow:\n\n  b'Content-Length: 1'\n  ^")
    with caplog.at_level("WARNING", logger="router.api.malformed"):
        for t in (0.0, 1.0, 2.0, 10.0):
            now[0] = t
            assert refusals.refused(400, "10.0.0.1", exc) == \
                "malformed HTTP request: Content-Length overflow"
    assert counted == [400] * 4
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "10.0.0.1" in lines[0] and "Content-Length overflow" in lines[0]
    assert "3 refused since the last such line" in lines[1]


AAA = "a" * 100
REASONS: list[tuple[str, HttpProcessingError, str]] = [
    ("C parser", BadHttpMessage("Invalid character in Content-Length:\n\n  b'-1'\n  ^"),
     "Invalid character in Content-Length"),
    ("line too long", LineTooLong(AAA.encode() + b"...", 8190), "Got more than 8190 bytes when "
     "reading"),
    ("request line too long", LineTooLong(bytearray(AAA.encode()), 8190),
     "Got more than 8190 bytes when reading"),
    ("C bad version", BadStatusLine(error="Bad status line:\n  Invalid HTTP version:\n\n  "
                                          "b'GET / HTTP/9.9'"), "Bad status line"),
    ("python bad method", BadHttpMethod(f"G@T /{AAA} HTTP/1.1"), "Bad HTTP method in status line"),
    ("python header", InvalidHeader(AAA.encode()), "Invalid HTTP header"),
    ("bytes only", TransferEncodingError(AAA), "invalid chunked encoding"),
    ("quoted name", BadHttpMessage("Duplicate 'Content-Length' header found."),
     "malformed request"),
]


@pytest.mark.parametrize(("exc", "words"), [r[1:] for r in REASONS], ids=[r[0] for r in REASONS])
def test_reason_is_words_never_the_refused_bytes(exc: HttpProcessingError, words: str) -> None:
    assert reason(exc) == words
    assert "aaa" not in reason(exc)


def test_reason_of_a_payload_error_is_its_cause() -> None:
    try:
        try:
            raise TransferEncodingError("zz")
        except TransferEncodingError as cause:
            raise web.RequestPayloadError("400, message:\n  zz") from cause
    except web.RequestPayloadError as wrapped:
        assert reason(wrapped) == "invalid chunked encoding"
