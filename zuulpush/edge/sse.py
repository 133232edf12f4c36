"""Server-Sent Events encoding, sans I/O.

h11 writes the response head (and picks chunked transfer coding for HTTP/1.1). After that we keep
no h11 object per idle stream: each event is one HTTP chunk that we frame here, so a push is encoded
once and written to every stream as the same bytes. Event ids are message ids, which makes
`Last-Event-ID` a resume point.
"""

from __future__ import annotations

from zuulpush.edge.answers import CORS

HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
    *CORS,  # EventSource from a page of another origin (the API's /demo, a web app)
]


def headers_for(origin: str) -> list[tuple[str, str]]:
    """`HEADERS` for a node with an origin allow list: the allowed request's own origin in
    `Access-Control-Allow-Origin` instead of `*`, and `Vary: Origin` for caches."""
    return [*HEADERS[:3], ("access-control-allow-origin", origin), *CORS[1:],
            ("vary", "origin")]


def chunk(body: bytes) -> bytes:
    """`body` as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(body), body)


def event(data: bytes, *, id: str | None = None, name: str | None = None) -> bytes:
    """One event as a chunk. `data` must not contain a newline (compact JSON never does)."""
    head = b""
    if id is not None:
        head += b"id: " + id.encode() + b"\n"
    if name is not None:
        head += b"event: " + name.encode() + b"\n"
    return chunk(head + b"data: " + data + b"\n\n")


def message(id: str, payload: bytes) -> bytes:
    """A pushed message: `event: message` so EventSource's `onmessage` sees it."""
    return event(payload, id=id, name="message")


def retry(ms: int) -> bytes:
    """Tell EventSource how long to wait before reconnecting."""
    return chunk(b"retry: %d\n\n" % ms)


KEEPALIVE = chunk(b": keepalive\n\n")
END = b"0\r\n\r\n"
