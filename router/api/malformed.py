"""What the API answers, and logs, for requests aiohttp's HTTP parser refuses.

A malformed request (`Content-Length: 100000000000000000000`, `-1` or `2, 40`,
`Transfer-Encoding: xchunked`, a header or request line over 8190 bytes, too many headers, a bad
method or version, ...) never reaches a route or a middleware: aiohttp's connection protocol,
`web.RequestHandler`, answers it from its `handle_error`, in text/plain, and logs each one as an
ERROR with its traceback on the `aiohttp.server` logger, so anyone could flood the log. aiohttp
has no hook for that answer (aio-libs/aiohttp#3287 and #6463 are open), hence:

- `JsonErrorsHandler` is `web.RequestHandler` with `handle_error` overridden. The answer is the
  API's JSON error with the parser's status (400) and `Connection: close` (aiohttp closes the
  connection after it): `{"error": {"code": "bad_request", "message": "malformed HTTP request:
  <the parser's reason>"}}`, the reason without the refused bytes the parser quotes. Each one is
  counted (`count(status)`: the API's `ApiStats.count_error`, so `zuulpush_api_rejected_total`)
  and goes to `RefusalLog`. A status of 500 or more (a bug: an exception past the API's own
  middleware) is answered `internal_error` and still logged with its traceback, every time.
- `RefusalLog` (sans I/O, time passed in) lets one WARNING line through per `LOG_INTERVAL_S`:
  the first refusal at once, the ones after it within the interval counted into the next line.
- `JsonErrorsSite` serves a runner's app on a TCP address with `JsonErrorsHandler`
  connections: a `web.BaseSite`, as aiohttp's own `TCPSite` is, so the runner tracks its
  connections and stops it in `cleanup()` like any site.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 60.0
"""At most one log line about refused requests per this many seconds (per process)."""


@dataclass(slots=True)
class RefusalLog:
    """Which refusals get a log line: one per `interval_s`, the others counted into it."""

    interval_s: float = LOG_INTERVAL_S
    _held: int = 0  # refusals since the last line
    _next_line_s: float = float("-inf")

    def refused(self, now_s: float) -> int | None:
        """Count one refusal at `now_s` (a monotonic clock). When a line is due, the number of
        refusals it stands for (this one and those held back since the last line); else None."""
        self._held += 1
        if now_s < self._next_line_s:
            return None
        held, self._held = self._held, 0
        self._next_line_s = now_s + self.interval_s
        return held


_QUOTED = re.compile(r"""(?:bytearray\(b?|\bb)?['"]""")  # where quoted bytes begin
_WORDS: dict[type[BaseException], str] = {  # subclasses before their bases
    LineTooLong: "line too long", InvalidHeader: "invalid header",
    BadHttpMethod: "invalid method", BadStatusLine: "invalid request line",
    InvalidURLError: "invalid URL", TransferEncodingError: "invalid chunked encoding",
    ContentLengthError: "body shorter than its Content-Length",
    ContentEncodingError: "invalid Content-Encoding",
}


def reason(exc: BaseException | None) -> str:
    """Why the parser refused a request, in words and never in the request's own bytes: the
    first line of its message cut before anything it quotes (`Got more than 8190 bytes when
    reading: b'aaa...` -> the words), or, where that leaves less than two words (the pure-Python
    parser often gives only the bytes), a phrase for the kind of error."""
    if isinstance(exc, web.RequestPayloadError) and exc.__cause__ is not None:
        exc = exc.__cause__  # what the parser raised, wrapped for the handler's read
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc or "")
    words = _QUOTED.split(str(text).split("\n", 1)[0], maxsplit=1)[0].strip(" :.")
    if len(words.split()) >= 2:
        return words
    return next((phrase for kind, phrase in _WORDS.items() if isinstance(exc, kind)),
                "malformed request")


@dataclass(slots=True)
class Refusals:
    """What a site's connections share: `count(status)` of each refusal, the log's throttle,
    and the clock it reads."""

    count: Callable[[int], None]
    log: RefusalLog
    clock_s: Callable[[], float] = time.monotonic

    def refused(self, status: int, remote: str | None, exc: BaseException | None) -> str:
        """Count and (when due) log one refused request; the answer's message."""
        self.count(status)
        why = reason(exc)
        held = self.log.refused(self.clock_s())
        if held is not None:
            log.warning("refused a malformed HTTP request from %s (%s): %d refused since the "
                        "last such line, at most one line per %g s", remote, why, held,
                        self.log.interval_s)
        return f"malformed HTTP request: {why}"


def _code(status: int) -> str:
    """The error code of an answer of `status`: its reason phrase in snake case."""
    if status >= 500:
        return "internal_error"
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = HTTPStatus.BAD_REQUEST.phrase
    return phrase.lower().replace(" ", "_")


class JsonErrorsHandler(web.RequestHandler):
    """aiohttp's connection protocol, answering what its parser refuses as the API answers
    every error (module docstring)."""

    __slots__ = ("_refusals",)

    def __init__(self, manager: web.Server, *, refusals: Refusals, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._refusals = refusals

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            text = "internal error"
        else:
            text = self._refusals.refused(status, request.remote, exc)
        if request.writer.output_size > 0:  # as aiohttp: the answer has begun, so cannot change
            raise ConnectionError("Response is sent already, cannot send another response "
                                  "with the error message")
        body = {"error": {"code": _code(status), "message": text}}
        response = web.Response(body=orjson.dumps(body), status=status,
                                content_type="application/json")
        response.force_close()
        return response


class JsonErrorsSite(web.BaseSite):
    """`runner`'s app on `host:port` (0: a free port, then `port` is the one bound), over TLS
    with `ssl_context`, its connections `JsonErrorsHandler`s made with `handler_args` (those of
    `web.RequestHandler`, e.g. `access_log=None`)."""

    __slots__ = ("_handler_args", "_host", "_port", "_refusals")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, refusals: Refusals,
                 ssl_context: ssl.SSLContext | None = None, backlog: int = 128,
                 **handler_args: Any) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._refusals = refusals
        self._handler_args = handler_args

    @property
    def port(self) -> int:
        return self._port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        manager = self._runner.server
        assert manager is not None  # BaseSite's constructor checked it
        loop = asyncio.get_running_loop()
        connection = functools.partial(JsonErrorsHandler, manager, loop=loop,
                                       refusals=self._refusals, **self._handler_args)
        self._server = server = await loop.create_server(
            connection, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=True)
        if server.sockets:
            self._port = server.sockets[0].getsockname()[1]
