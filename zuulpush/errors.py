"""The edge's errors, each carrying its wire answer.

    router.errors.ZuulpushError            (API errors: 400 InvalidRequest, 401 Unauthorized and
    │                                      InvalidToken, 403, 404, 413, 503 Unavailable)
    └── EdgeError
        ├── HandshakeRejected              an HTTP answer before any upgrade: `http_status`
        │                                  (400, 404, 405, 408, 426, 431) and extra `headers`
        └── FrameViolation                 a WebSocket close: `close_code` (1002, 1003, 1007,
                                           1008, 1009)

A bad device token raises `router.errors.InvalidToken` (401) before any upgrade.
"""

from __future__ import annotations

from router.errors import ZuulpushError


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
