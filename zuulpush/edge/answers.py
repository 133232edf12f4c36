"""Complete `Connection: close` HTTP/1.1 answers the edge writes before it closes: JSON bodies
(errors, health, the admin API) and other bodies (the metrics page)."""

from __future__ import annotations

import http

import orjson

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
