"""The edge's errors, each carrying its wire answer.

    core.errors.ZuulpushError            (API errors: 400 InvalidRequest, 401 Unauthorized and
    │                                      InvalidToken, 403, 404, 413, 503 Unavailable)
    └── EdgeError
        ├── HandshakeRejected              an HTTP answer before any upgrade: `http_status`
        │   │                              (400, 404, 405, 408, 426, 431) and extra `headers`
        │   └── OriginRefused              403 `origin_not_allowed`: a browser page's Origin
        │       │                          is not in `allowed_origins`
        │       └── CookieOriginRefused    ... or a page of another origin sends the token
        │                                  cookie (`zuulpush.edge.request`)
        └── FrameViolation                 a WebSocket close: `close_code` (1002, 1003, 1007,
            │                              1008, 1009)
            └── InboundRateExceeded        1008: a device sent faster than its inbound rate

A bad device token raises `core.errors.InvalidToken` (401) before any upgrade.
"""

from __future__ import annotations

from core.errors import ZuulpushError


class EdgeError(ZuulpushError):
    """Base of errors raised by the edge's protocol logic."""


class HandshakeRejected(EdgeError):
    """Answer the request with `http_status` and a JSON body; the connection then closes."""

    code = "bad_request"

    def __init__(
        self,
        http_status: int,
        message: str,
        *,
        code: str = "bad_request",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.headers = headers


class FrameViolation(EdgeError):
    """Close the WebSocket with `close_code`; the message becomes the close reason."""

    code = "frame_violation"

    def __init__(self, close_code: int, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code


class OriginRefused(HandshakeRejected):
    """A browser's `Origin` is not on the node's allow list: 403 before any upgrade."""

    def __init__(self, origin: str, message: str = "origin not allowed: {origin}") -> None:
        super().__init__(403, message.format(origin=origin[:100]), code="origin_not_allowed")


class CookieOriginRefused(OriginRefused):
    """A request authenticated by the `zuulpush_token` cookie from a page of another origin
    than the edge's own, with no allow list naming it: 403 before any upgrade."""

    def __init__(self, origin: str) -> None:
        super().__init__(origin, "origin not allowed with the zuulpush_token cookie: {origin} "
                                 "(send the token as ?token=, or list the origin in "
                                 "allowed_origins)")


class InboundRateExceeded(FrameViolation):
    """A device sent more messages than its inbound rate allows: 1008 (policy violation)."""

    def __init__(self) -> None:
        super().__init__(1008, "too many messages; slow down")
