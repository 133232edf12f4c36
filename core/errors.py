"""Errors that carry their wire answer.

    ZuulpushError                     http_status 500 (a bug; never shown to clients in detail)
    ├── InvalidRequest                400, names the offending `field`
    │   ├── PayloadTooLarge           413
    │   └── TooManyMessages           400: a batch of more than `max_batch` messages
    ├── Unauthorized                  401 (missing or bad API key or device token)
    │   └── InvalidToken              401, says why (expired, bad signature, alg, claims)
    ├── Forbidden                     403 (a valid key that may not do this)
    ├── NotFound                      404
    ├── RateLimited                   429: retry after `retry_after_s` (API key and demo limits)
    │   └── AuthThrottled             429 `auth_throttled`: too many failed authentications from
    │                                 one source address (`core.auth_throttle`), by `role`
    └── Unavailable                   503, transient: retry after `retry_after_s`

Every error carries the `headers` of its answer besides the body (`RateLimited` and
`Unavailable` their `Retry-After`), and the refusals of a credential (`Unauthorized`,
`Forbidden`) name it in `credential`. The edge adds its own branch in `zuulpush.errors`
(handshake answers and WebSocket close codes). Only `Unavailable` is transient; everything else
is final for the request that caused it.
"""

from __future__ import annotations

import math
from typing import Any

Headers = tuple[tuple[str, str], ...]
"""Header (lower-case name, value) pairs, in order."""


class ZuulpushError(Exception):
    """Base of every error we raise on purpose. `body()` is the JSON answer to send, with
    `http_status` and `headers` (none by default)."""

    http_status = 500
    code = "internal_error"
    transient = False
    headers: Headers = ()

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class InvalidRequest(ZuulpushError):
    http_status = 400
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    http_status = 413
    code = "payload_too_large"


class TooManyMessages(InvalidRequest):
    """More messages in one batch than `max_batch` (counted apart from other bad input)."""


class Unauthorized(ZuulpushError):
    http_status = 401
    code = "unauthorized"
    credential: str | None = "api_key"
    """The credential missing or refused, as the API counts its failures (`api_key`,
    `device_token`, `admin_key`); None when the refusal is no credential's failure."""


class InvalidToken(Unauthorized):
    code = "invalid_token"
    credential = "device_token"


class Forbidden(ZuulpushError):
    http_status = 403
    code = "forbidden"
    credential: str | None = "api_key"
    """As `Unauthorized.credential`: None for a refusal that is not a wrong credential."""


class NotFound(ZuulpushError):
    http_status = 404
    code = "not_found"


class Unavailable(ZuulpushError):
    http_status = 503
    code = "unavailable"
    transient = True

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = retry_after(retry_after_s)


class RateLimited(ZuulpushError):
    http_status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = retry_after(retry_after_s)


class AuthThrottled(RateLimited):
    """A source address over its limit of failed authentications (`core.auth_throttle`): the
    attempt is refused without its credential being looked at. `role` names the limit
    (`api_key`, `dashboard`, `edge_admin`); `headers` carry the `Retry-After`, as for every
    `RateLimited`."""

    code = "auth_throttled"

    def __init__(self, role: str, *, retry_after_s: float) -> None:
        self.role = role
        wait = retry_after_header(retry_after_s)
        super().__init__(f"too many failed authentications from this address; retry after "
                         f"{wait} s", retry_after_s=retry_after_s)


def retry_after(retry_after_s: float) -> Headers:
    """The `Retry-After` header of an answer that may be retried after `retry_after_s`."""
    return (("retry-after", str(retry_after_header(retry_after_s))),)


def retry_after_header(retry_after_s: float) -> int:
    """A `Retry-After` value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(retry_after_s))
