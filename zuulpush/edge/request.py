"""What to do with an HTTP request arriving at the edge, sans I/O.

`decide()` takes the parsed request (from h11) and returns an `Accept` naming the route and the
device, or raises `HandshakeRejected` (an HTTP answer before any upgrade) or `InvalidToken` (401).
Routes:

- `GET /ws`   WebSocket for devices (token required)
- `GET /sse`  Server-Sent Events for devices (token required)
- `GET /echo` WebSocket echo for conformance suites (no token; only with `--echo`)
- `GET /healthz` the node's health and load as JSON, then close (no token; for load balancers
  and operators)
- `GET /metrics` the Prometheus metrics page, then close (no token, like `/healthz`)
- the admin API, each with `Authorization: Bearer <admin key>` (401 without a key, 403 with a
  wrong one, and always 403 when the node has no admin key configured); answered, then closed:
  - `POST /admin/drain` drain the node
  - `GET /admin/status` the node's state and load
  - `GET /admin/clients/<client id>` the client's connection on this node (404: none here)
  - `POST /admin/clients/<client id>/close[?code=4000|1000]` close it: 4000 (the default) with
    a reconnect hint, or 1000 without one

The admin key, browser origins, where the device token may come from (a cookie only from the
edge's own or an allowed origin) and the resume point: docs/edge.md, Requests.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote, unquote_plus

from wsproto.utilities import generate_accept_token

from core.auth_throttle import FailureLimiter
from core.errors import Forbidden, InvalidToken
from core.ids import ID_FORMAT, is_message_id
from core.tokens import DeviceIdentity, TokenVerifier, bearer, check_key
from zuulpush.errors import CookieOriginRefused, HandshakeRejected, OriginRefused

COOKIE_NAME = "zuulpush_token"
MAX_ID_LENGTH = 64
MAX_CLIENT_ID_LENGTH = 256
"""As the device token's `cid` claim allows."""


class Route(Enum):
    WEBSOCKET = "/ws"
    SSE = "/sse"
    ECHO = "/echo"
    HEALTH = "/healthz"
    METRICS = "/metrics"
    ADMIN_DRAIN = "/admin/drain"
    ADMIN_STATUS = "/admin/status"
    ADMIN_CLIENT = "/admin/clients/{client_id}"
    ADMIN_CLOSE = "/admin/clients/{client_id}/close"


ADMIN = frozenset({Route.ADMIN_DRAIN, Route.ADMIN_STATUS, Route.ADMIN_CLIENT, Route.ADMIN_CLOSE})
ONE_SHOT = ADMIN | {Route.HEALTH, Route.METRICS}
"""Routes answered at once and closed: no upgrade, no device."""

CLOSE_CODES = (4000, 1000)
"""What `POST /admin/clients/<id>/close?code=` accepts: go away with a reconnect hint, or a
normal close without one."""


@dataclass(frozen=True, slots=True)
class Accept:
    """An accepted request: the route, the device (None for echo), where to resume, and for a
    WebSocket the `Sec-WebSocket-Accept` value to answer with. The admin client routes name
    the client (`client_id`), a close its `close_code`. `origin` is the request's `Origin` when
    an allow list let it through (None without a list or without the header)."""

    route: Route
    identity: DeviceIdentity | None
    last_id: str | None
    ws_accept: bytes | None
    client_id: str | None = None
    close_code: int = CLOSE_CODES[0]
    origin: str | None = None


Headers = Sequence[tuple[bytes, bytes]]

_ROUTES = {route.value: route for route in Route if "{" not in route.value}
_CLIENTS = "/admin/clients/"
_POST = frozenset({Route.ADMIN_DRAIN, Route.ADMIN_CLOSE})


def decide(
    method: bytes,
    target: bytes,
    headers: Headers,
    *,
    verifier: TokenVerifier,
    echo_enabled: bool,
    admin_key: str = "",
    origins: frozenset[str] | None = None,
    admin_throttle: FailureLimiter | None = None,
    source: Callable[[], str] = str,
    now: float = 0.0,
) -> Accept:
    """Validate a request; see the module docstring. Header names must be lower case (h11's).
    `origins`: the allowed browser origins, normalised (`EdgeConfig.origin_allow_list()`);
    None: any. `admin_throttle` counts wrong admin keys by `source()` (the peer's source, asked
    for admin routes only) at `now`; None: no brake."""
    path, _, query = target.decode("latin-1").partition("?")
    route, client_id = _route(path)
    if route is None or (route is Route.ECHO and not echo_enabled):
        raise HandshakeRejected(404, f"no such endpoint: {path}", code="not_found")
    allowed = b"POST" if route in _POST else b"GET"
    if method != allowed:
        raise HandshakeRejected(405, f"only {allowed.decode()} is allowed here",
                                code="method_not_allowed", headers=(("allow", allowed.decode()),))
    if route in (Route.HEALTH, Route.METRICS):
        return Accept(route, None, None, None)
    params = _query(query)
    if route in ADMIN:
        presented = bearer(_text(_header(headers, b"authorization")))
        _check_admin_key(presented, admin_key, admin_throttle, source, now)
        return Accept(route, None, None, None, client_id, _close_code(params))
    origin = None if origins is None else _check_origin(headers, origins)
    ws_accept = None if route is Route.SSE else _websocket_accept(headers)
    if route is Route.ECHO:
        return Accept(route, None, None, ws_accept, origin=origin)
    token, from_cookie = _token(params, headers)
    if from_cookie:
        _check_cookie_origin(headers, origins)
    identity = verifier.verify(token)
    return Accept(route, identity, _last_id(params, headers), ws_accept, origin=origin)


def _check_admin_key(presented: str | None, admin_key: str, throttle: FailureLimiter | None,
                     source: Callable[[], str], now: float) -> None:
    """`check_key` against the admin key, braked by `throttle` (module docstring)."""
    accepted = (admin_key,) if admin_key else ()
    if throttle is None:
        check_key(presented, accepted, what="admin key")
        return
    who = source()
    throttle.check(who, now)
    try:
        check_key(presented, accepted, what="admin key")
    except Forbidden:
        throttle.failed(who, now)
        raise


def _check_origin(headers: Headers, origins: frozenset[str]) -> str | None:
    """The request's `Origin` if `origins` has it, None without one; else `OriginRefused`."""
    value = _header(headers, b"origin")
    if value is None:
        return None
    origin = value.decode("latin-1").strip()
    if origin.lower().removesuffix("/") not in origins:
        raise OriginRefused(origin)
    return origin


_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def _check_cookie_origin(headers: Headers, origins: frozenset[str] | None) -> None:
    """`CookieOriginRefused` unless a cookie-authenticated request has no `Origin`, the edge's
    own origin, or (with an allow list, which `_check_origin` has applied) a listed one."""
    value = _header(headers, b"origin")
    if value is None or origins is not None:
        return
    page = value.decode("latin-1").strip()
    scheme, sep, authority = page.lower().removesuffix("/").partition("://")
    host = (_text(_header(headers, b"host")) or "").strip().lower()
    if not sep or not host or _authority(authority, scheme) != _authority(host, scheme):
        raise CookieOriginRefused(page)


def _authority(authority: str, scheme: str) -> str:
    """`host:port` with the scheme's default port written out (`[::1]:80`)."""
    host, colon, port = authority.rpartition(":")
    if not colon or not port.isdigit() or authority.endswith("]"):
        host, port = authority, _DEFAULT_PORTS.get(scheme, "")
    return f"{host}:{port}"


def _route(path: str) -> tuple[Route | None, str | None]:
    """The route of `path`, and the client id an admin client route names."""
    route = _ROUTES.get(path)
    if route is not None or not path.startswith(_CLIENTS):
        return route, None
    client, slash, action = path[len(_CLIENTS):].partition("/")
    client_id = unquote(client)
    if not client_id or len(client_id) > MAX_CLIENT_ID_LENGTH:
        return None, None
    if not slash:
        return Route.ADMIN_CLIENT, client_id
    return (Route.ADMIN_CLOSE, client_id) if action == "close" else (None, None)


def _close_code(params: dict[str, str]) -> int:
    code = params.get("code")
    if code is None:
        return CLOSE_CODES[0]
    if code not in {str(c) for c in CLOSE_CODES}:
        raise HandshakeRejected(400, "code must be 4000 (reconnect) or 1000 (normal)",
                                code="invalid_request")
    return int(code)


def check_head_size(method: bytes, target: bytes, headers: Headers, max_bytes: int) -> None:
    """Raise 431 if the request line and headers took more than `max_bytes` on the wire (counted
    as `METHOD SP target SP HTTP/1.1 CRLF`, `name: value CRLF` each, and the final CRLF)."""
    size = len(method) + len(target) + 12
    size += sum(len(name) + len(value) + 4 for name, value in headers) + 2
    if size > max_bytes:
        raise HandshakeRejected(431, f"request head larger than {max_bytes} bytes",
                                code="headers_too_large")


def _query(query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name:
            params.setdefault(unquote_plus(name), unquote_plus(value))
    return params


def _header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _tokens(value: bytes | None) -> set[str]:
    if value is None:
        return set()
    return {item.strip().lower() for item in value.decode("latin-1").split(",")}


def _websocket_accept(headers: Headers) -> bytes:
    """RFC 6455 section 4.2.1 checks; the Sec-WebSocket-Accept value on success."""
    if "websocket" not in _tokens(_header(headers, b"upgrade")):
        raise HandshakeRejected(426, "this endpoint needs a WebSocket upgrade",
                                code="upgrade_required",
                                headers=(("upgrade", "websocket"), ("connection", "Upgrade")))
    if "upgrade" not in _tokens(_header(headers, b"connection")):
        raise HandshakeRejected(400, "missing 'Connection: Upgrade'")
    if _header(headers, b"sec-websocket-version") != b"13":
        raise HandshakeRejected(426, "unsupported WebSocket version; use 13",
                                code="upgrade_required",
                                headers=(("sec-websocket-version", "13"),))
    key = _header(headers, b"sec-websocket-key")
    if key is None or not _is_websocket_key(key):
        raise HandshakeRejected(400, "missing or malformed Sec-WebSocket-Key")
    return generate_accept_token(key.strip())


def _is_websocket_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except binascii.Error:
        return False


def _token(params: dict[str, str], headers: Headers) -> tuple[str, bool]:
    """The device token, and whether it came from the cookie."""
    token = params.get("token") or bearer(_text(_header(headers, b"authorization")))
    if token:
        return token, False
    for key, value in headers:
        if key == b"cookie":
            for item in value.decode("latin-1").split(";"):
                name, _, cookie = item.strip().partition("=")
                if name == COOKIE_NAME and cookie:
                    return cookie, True
    raise InvalidToken("missing device token: use ?token=, 'Authorization: Bearer' or a cookie")


def _last_id(params: dict[str, str], headers: Headers) -> str | None:
    """The resume point: a message id, or None. Anything else is refused, never compared: a
    resume removes what the device has from its inbox by the id (`core.ids.is_message_id`)."""
    value = params.get("last_id") or _text(_header(headers, b"last-event-id"))
    if not value:
        return None
    if not is_message_id(value):
        name = "last_id" if params.get("last_id") else "Last-Event-ID"
        raise HandshakeRejected(400, f"{name} must be a message id: {ID_FORMAT}",
                                code="invalid_request")
    return value


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
