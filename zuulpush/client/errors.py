"""What can stop a `PushClient` for good. Everything else is retried.

    PushClientError
    ├── AuthError       401 and no token provider to ask for a new token
    ├── ReplacedError   close 4003: a newer connection of the same client id took over
    └── ConnectError    a connection failed or ended and reconnecting is off (reconnect=False)

Each carries its wire answer: `status` (HTTP) or `close_code` (WebSocket / SSE `reconnect`).
"""

from __future__ import annotations


class PushClientError(Exception):
    """A push client stopped for good; `status` / `close_code` say what the server answered."""

    def __init__(self, message: str, *, status: int | None = None,
                 close_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.close_code = close_code


class AuthError(PushClientError):
    """The edge refused the token (HTTP 401) and there is no token provider to ask again."""


class ReplacedError(PushClientError):
    """Closed with 4003: another connection with this client id (the same token's `cid`) took
    over. The client stops rather than fight it; two running copies of one device are a bug in
    the application (or a device that moved on: then this one should end)."""


class ConnectError(PushClientError):
    """With `reconnect=False`: the one connection attempt failed (`status` if the server
    answered, None for a network error or timeout)."""
