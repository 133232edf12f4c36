"""Complete `Connection: close` HTTP/1.1 answers the edge writes before it closes: JSON bodies
(errors, health, the admin API), other bodies (the metrics page) and the canned `503` of a shed
request."""

from __future__ import annotations

import functools
import http

import orjson

from zuulpush.edge.shedding import Shed

Headers = tuple[tuple[str, str], ...]

CORS: Headers = (("access-control-allow-origin", "*"),
                 ("access-control-expose-headers", "retry-after"))
"""On the SSE stream and on every refused handshake, so that a page served from another origin
(the API's demo page, a web app) can use EventSource and read why a connection was refused (a
browser's `fetch`; WebSocket and EventSource hide the status). `*`: device tokens travel in the
URL or a header, never as credentials (cookies), so no origin needs to be named. Static bytes:
nothing per connection."""


def http_answer(status: int, payload: bytes, content_type: str, headers: Headers = ()) -> bytes:
    """A complete response: status line, `content-type`, `content-length`, `connection: close`,
    any further headers, then `payload`."""
    head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
            f"content-type: {content_type}", f"content-length: {len(payload)}",
            "connection: close", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


def http_error(status: int, body: dict[str, object], headers: Headers = ()) -> bytes:
    """A complete response with a JSON body (errors or not)."""
    return http_answer(status, orjson.dumps(body), "application/json", headers)


_SHED_WHY = {
    Shed.MAX_CONNECTIONS: "this node holds as many connections as it may",
    Shed.LOOP_LAG: "this node is too busy",
    Shed.RATE: "too many new connections on this node",
}


@functools.lru_cache(maxsize=4 * 64)
def shed_answer(reason: Shed, retry_after_s: int) -> bytes:
    """The canned `503` for a shed request (one per reason and delay, made once)."""
    message = f"{_SHED_WHY[reason]}; retry after {retry_after_s} s"
    return http_error(503, {"error": {"code": "overloaded", "message": message}},
                      (("retry-after", str(retry_after_s)), *CORS))
