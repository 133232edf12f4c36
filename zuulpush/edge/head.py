"""Reading a request head, sans I/O: a plain `/ws` upgrade in one read without h11
(`fasthead`), anything else with an `h11.Connection` made at the first read that needs it."""

from __future__ import annotations

from collections.abc import Sequence

import h11

from zuulpush.edge import fasthead
from zuulpush.errors import HandshakeRejected

Head = tuple[bytes, bytes, Sequence[tuple[bytes, bytes]], bytes]
"""(method, target, headers with lower-case names, the bytes after the head)"""


def read_head(parser: h11.Connection | None, data: bytes,
              max_bytes: int) -> tuple[h11.Connection | None, Head | None]:
    """Feed the next bytes of a request head (`parser`: what the previous read returned, None
    at the first). Returns the parser to keep (None when `fasthead` took the head; h11's is
    kept after the head too, as it writes an SSE answer) and `(method, target, headers,
    trailing)` once the head is whole, else None. `HandshakeRejected` for a malformed one."""
    if parser is None:  # the request's first bytes
        head = fasthead.parse(data, max_bytes)
        if head is not None:
            return None, head
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=max_bytes)
    try:
        parser.receive_data(data)
        event = parser.next_event()
    except h11.RemoteProtocolError as exc:
        raise HandshakeRejected(exc.error_status_hint, str(exc)) from None
    if event is h11.NEED_DATA:
        return parser, None
    if not isinstance(event, h11.Request):
        raise HandshakeRejected(400, "expected an HTTP request")
    if event.http_version != b"1.1":
        raise HandshakeRejected(400, "HTTP/1.1 is required")
    return parser, (event.method, event.target, event.headers, parser.trailing_data[0])
