"""Unit tests of `zuulpush.edge.request.decide`: routes, RFC 6455 handshake checks, tokens, resume.

Sans I/O: headers go in as h11 gives them (lower-case names, bytes), answers come out as an
`Accept` or an exception carrying its HTTP status.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from core.auth_throttle import FailureLimiter
from core.errors import AuthThrottled, Forbidden, InvalidToken, Unauthorized
from core.tokens import AuthConfig, TokenVerifier, issue_token
from zuulpush.edge.request import (
    ADMIN,
    COOKIE_NAME,
    MAX_ID_LENGTH,
    Accept,
    Headers,
    Route,
    check_head_size,
    decide,
)
from zuulpush.errors import HandshakeRejected, OriginRefused

SECRET = "request-test-secret-of-at-least-32-bytes"
VERIFIER = TokenVerifier(AuthConfig(secret=SECRET))
RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def token(client_id: str = "client-1") -> str:
    return issue_token(SECRET, client_id=client_id, user_id="user-1", device_type="ios")


def ws_headers(**replace: bytes | None) -> list[tuple[bytes, bytes]]:
    """A valid WebSocket upgrade's headers; `replace` overrides (None removes) one by name."""
    headers = {
        "host": b"edge.example",
        "upgrade": b"websocket",
        "connection": b"Upgrade",
        "sec-websocket-key": RFC_KEY,
        "sec-websocket-version": b"13",
    }
    for name, value in replace.items():
        headers[name.replace("_", "-")] = value  # type: ignore[assignment]
    return [(name.encode(), value) for name, value in headers.items() if value is not None]


def run(
    target: str,
    headers: Headers = (),
    *,
    method: bytes = b"GET",
    echo: bool = False,
    admin_key: str = "",
) -> Accept:
    return decide(method, target.encode(), headers, verifier=VERIFIER, echo_enabled=echo,
                  admin_key=admin_key)


def rejected(target: str, headers: Headers = (), **kwargs: object) -> HandshakeRejected:
    with pytest.raises(HandshakeRejected) as info:
        run(target, headers, **kwargs)  # type: ignore[arg-type]
    return info.value


# routes


def test_websocket_route_accepts_with_identity_and_accept_value() -> None:
    accept = run(f"/ws?token={token()}", ws_headers())
    assert accept.route is Route.WEBSOCKET
    assert accept.identity is not None
    assert (accept.identity.client_id, accept.identity.user_id) == ("client-1", "user-1")
    assert accept.identity.device_type == "ios"
    assert accept.last_id is None
    assert accept.ws_accept == RFC_ACCEPT


def test_sse_route_needs_no_upgrade_and_has_no_accept_value() -> None:
    accept = run(f"/sse?token={token()}", [(b"host", b"edge.example")])
    assert accept.route is Route.SSE
    assert accept.identity is not None and accept.identity.client_id == "client-1"
    assert accept.ws_accept is None


def test_echo_route_needs_no_token_when_enabled() -> None:
    accept = run("/echo", ws_headers(), echo=True)
    assert accept == Accept(Route.ECHO, None, None, RFC_ACCEPT)


def test_health_route_needs_no_token_and_no_upgrade() -> None:
    assert run("/healthz") == Accept(Route.HEALTH, None, None, None)
    assert run("/healthz?verbose=1", ws_headers()) == Accept(Route.HEALTH, None, None, None)


def test_health_route_is_get_only() -> None:
    assert rejected("/healthz", method=b"POST").http_status == 405


def test_echo_route_still_checks_the_websocket_handshake() -> None:
    assert rejected("/echo", ws_headers(upgrade=None), echo=True).http_status == 426


@pytest.mark.parametrize("target", ["/", "/wss", "/ws/", "/sse/x", "/v1/push", "/WS"])
def test_unknown_path_is_404_not_found(target: str) -> None:
    error = rejected(target, ws_headers())
    assert error.http_status == 404
    assert error.body()["error"]["code"] == "not_found"


def test_echo_is_404_when_disabled() -> None:
    error = rejected("/echo", ws_headers(), echo=False)
    assert error.http_status == 404
    assert error.body()["error"]["code"] == "not_found"


@pytest.mark.parametrize("method", [b"POST", b"HEAD", b"PUT", b"OPTIONS"])
@pytest.mark.parametrize("path", ["/ws", "/sse"])
def test_non_get_is_405_with_allow_header(method: bytes, path: str) -> None:
    error = rejected(f"{path}?token={token()}", ws_headers(), method=method)
    assert error.http_status == 405
    assert error.body()["error"]["code"] == "method_not_allowed"
    assert ("allow", "GET") in error.headers


# RFC 6455 section 4.2.1


def test_accept_value_is_the_rfc_6455_example() -> None:
    expected = base64.b64encode(hashlib.sha1(RFC_KEY + WS_GUID).digest())
    assert expected == RFC_ACCEPT  # the test's own arithmetic, independent of the code
    assert run(f"/ws?token={token()}", ws_headers()).ws_accept == RFC_ACCEPT


def test_accept_value_for_another_key() -> None:
    key = base64.b64encode(bytes(range(16)))
    expected = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    assert run(f"/ws?token={token()}", ws_headers(sec_websocket_key=key)).ws_accept == expected


@pytest.mark.parametrize("upgrade", [None, b"h2c", b""])
def test_missing_websocket_upgrade_is_426(upgrade: bytes | None) -> None:
    error = rejected(f"/ws?token={token()}", ws_headers(upgrade=upgrade))
    assert error.http_status == 426
    assert error.body()["error"]["code"] == "upgrade_required"
    assert ("upgrade", "websocket") in error.headers


def test_upgrade_and_connection_tokens_are_case_insensitive_lists() -> None:
    headers = ws_headers(upgrade=b"WebSocket", connection=b"keep-alive, UPGRADE")
    assert run(f"/ws?token={token()}", headers).route is Route.WEBSOCKET


@pytest.mark.parametrize("connection", [None, b"keep-alive", b"close"])
def test_missing_connection_upgrade_is_400(connection: bytes | None) -> None:
    error = rejected(f"/ws?token={token()}", ws_headers(connection=connection))
    assert error.http_status == 400


@pytest.mark.parametrize("version", [None, b"8", b"12", b"14", b""])
def test_wrong_websocket_version_is_426_naming_13(version: bytes | None) -> None:
    error = rejected(f"/ws?token={token()}", ws_headers(sec_websocket_version=version))
    assert error.http_status == 426
    assert ("sec-websocket-version", "13") in error.headers


@pytest.mark.parametrize(
    "key",
    [
        None,
        b"",
        b"not base64 at all!",
        base64.b64encode(bytes(15)),  # decodes, but to 15 bytes
        base64.b64encode(bytes(17)),
        b"dGhlIHNhbXBsZSBub25jZQ",  # padding missing
    ],
)
def test_bad_or_missing_websocket_key_is_400(key: bytes | None) -> None:
    error = rejected(f"/ws?token={token()}", ws_headers(sec_websocket_key=key))
    assert error.http_status == 400


def test_handshake_is_checked_before_the_token() -> None:
    # A browser that cannot upgrade learns that first, whatever its token.
    assert rejected("/ws", ws_headers(upgrade=None)).http_status == 426


# device token


def test_token_from_bearer_header() -> None:
    headers = [*ws_headers(), (b"authorization", f"Bearer {token('bearer')}".encode())]
    assert run("/ws", headers).identity.client_id == "bearer"  # type: ignore[union-attr]


def test_token_from_cookie_among_others() -> None:
    cookie = f"theme=dark; {COOKIE_NAME}={token('cookie')}; lang=en".encode()
    headers = [*ws_headers(), (b"cookie", b"a=b"), (b"cookie", cookie)]
    assert run("/ws", headers).identity.client_id == "cookie"  # type: ignore[union-attr]


def test_token_from_query_with_other_parameters() -> None:
    target = f"/sse?x=1&token={token('query')}&y=2"
    assert run(target).identity.client_id == "query"  # type: ignore[union-attr]


def test_token_precedence_query_then_bearer_then_cookie() -> None:
    bearer = (b"authorization", f"Bearer {token('bearer')}".encode())
    cookie = (b"cookie", f"{COOKIE_NAME}={token('cookie')}".encode())
    both = [*ws_headers(), bearer, cookie]
    assert run(f"/ws?token={token('query')}", both).identity.client_id == "query"  # type: ignore[union-attr]
    assert run("/ws", both).identity.client_id == "bearer"  # type: ignore[union-attr]
    assert run("/ws", [*ws_headers(), cookie]).identity.client_id == "cookie"  # type: ignore[union-attr]


def test_non_bearer_authorization_falls_through_to_cookie() -> None:
    headers = [*ws_headers(), (b"authorization", b"Basic dXNlcjpwYXNz"),
               (b"cookie", f"{COOKIE_NAME}={token('cookie')}".encode())]
    assert run("/ws", headers).identity.client_id == "cookie"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "target, extra",
    [
        ("/ws", []),
        ("/ws?token=", []),
        ("/ws", [(b"authorization", b"Bearer ")]),
        ("/ws", [(b"authorization", b"Basic abc")]),
        ("/ws", [(b"cookie", f"{COOKIE_NAME}=".encode())]),
        ("/ws", [(b"cookie", b"other_token=abc")]),
    ],
)
def test_missing_token_is_invalid_token(target: str, extra: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(InvalidToken) as info:
        run(target, [*ws_headers(), *extra])
    assert info.value.http_status == 401
    assert info.value.body()["error"]["code"] == "invalid_token"


def test_missing_token_on_sse_is_invalid_token() -> None:
    with pytest.raises(InvalidToken):
        run("/sse")


def test_bad_token_is_invalid_token() -> None:
    forged = issue_token("another-secret-of-at-least-32-bytes!", client_id="c", user_id="u",
                         device_type="ios")
    with pytest.raises(InvalidToken):
        run(f"/ws?token={forged}", ws_headers())


# resume point


ID_X, ID_Y = "01HX0000000000000000000000", "01HY0000000000000000000000"


def test_last_id_from_query() -> None:
    assert run(f"/sse?token={token()}&last_id={ID_X}").last_id == ID_X


def test_last_id_from_last_event_id_header() -> None:
    accept = run(f"/sse?token={token()}", [(b"last-event-id", ID_Y.encode())])
    assert accept.last_id == ID_Y


def test_last_id_query_wins_over_header() -> None:
    accept = run(f"/sse?token={token()}&last_id={ID_X}", [(b"last-event-id", b"h")])
    assert accept.last_id == ID_X


def test_last_id_on_websocket_too() -> None:
    assert run(f"/ws?token={token()}&last_id={ID_X}", ws_headers()).last_id == ID_X


def test_empty_last_id_means_from_the_start() -> None:
    assert run(f"/sse?token={token()}&last_id=").last_id is None


@pytest.mark.parametrize("value", [
    "zzz", ID_X.lower(), "01HX", ID_X + "0", "8" + ID_X[1:], "01HX000000000000000000000I",
    "01HX00000000000000000000%20", "a" * (MAX_ID_LENGTH + 1), "%01", "a%0Ab", "%7F"])
def test_a_last_id_that_is_not_a_message_id_is_400_naming_it(value: str) -> None:
    """"zzz" sorts after every id: compared as text it would mean "everything received"."""
    for target, headers in ((f"/sse?token={token()}&last_id={value}", ()),
                            (f"/ws?token={token()}&last_id={value}", ws_headers())):
        error = rejected(target, list(headers))
        assert error.http_status == 400
        assert error.body()["error"]["code"] == "invalid_request"
        assert "last_id must be a message id" in error.body()["error"]["message"]


@pytest.mark.parametrize("value", [b"zzz", ID_Y.lower().encode(), b"x" * (MAX_ID_LENGTH + 1),
                                   b"a\tb"])
def test_a_last_event_id_that_is_not_a_message_id_is_400_naming_it(value: bytes) -> None:
    error = rejected(f"/sse?token={token()}", [(b"last-event-id", value)])
    assert error.http_status == 400
    assert "Last-Event-ID must be a message id" in error.body()["error"]["message"]


# head size (a complete head can arrive in one read, past h11's incomplete-event bound)


def head_size(target: bytes, headers: Headers) -> int:
    """The head's bytes on the wire, as a client writes it."""
    lines = [b"GET " + target + b" HTTP/1.1", *(name + b": " + value for name, value in headers)]
    return len(b"\r\n".join(lines) + b"\r\n\r\n")


def test_head_size_counts_the_bytes_on_the_wire() -> None:
    headers = ws_headers()
    size = head_size(b"/ws?token=abc", headers)
    check_head_size(b"GET", b"/ws?token=abc", headers, size)
    with pytest.raises(HandshakeRejected) as info:
        check_head_size(b"GET", b"/ws?token=abc", headers, size - 1)
    assert info.value.http_status == 431
    assert info.value.body()["error"]["code"] == "headers_too_large"


# POST /admin/drain


def test_admin_drain_is_a_post_with_the_admin_key() -> None:
    accept = run("/admin/drain", [(b"authorization", b"Bearer k1")], method=b"POST",
                 admin_key="k1")
    assert (accept.route, accept.identity) == (Route.ADMIN_DRAIN, None)


@pytest.mark.parametrize(("headers", "admin_key", "error"), [
    ([], "k1", Unauthorized),
    ([(b"authorization", b"Bearer nope")], "k1", Forbidden),
    ([(b"authorization", b"Basic k1")], "k1", Unauthorized),
    ([(b"authorization", b"Bearer k1")], "", Forbidden),  # no admin key configured: never
])
def test_admin_drain_refuses_a_missing_or_wrong_key(
        headers: Headers, admin_key: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        run("/admin/drain", headers, method=b"POST", admin_key=admin_key)


def test_admin_drain_is_405_for_get_naming_post() -> None:
    exc = rejected("/admin/drain")
    assert exc.http_status == 405 and ("allow", "POST") in exc.headers


# the admin key's brute-force brake (core.auth_throttle)

ADMIN_PATHS = [(b"POST", "/admin/drain"), (b"GET", "/admin/status"),
               (b"GET", "/admin/clients/c1"), (b"POST", "/admin/clients/c1/close")]


def admin(path: str, key: str, *, method: bytes = b"GET", source: str = "192.0.2.1",
          limiter: FailureLimiter, now: float = 100.0, sources: list[str] | None = None
          ) -> Accept:
    """An admin request with `Bearer key` from `source`, braked by `limiter`; `sources` records
    each time decide asked for the source."""
    def who() -> str:
        if sources is not None:
            sources.append(source)
        return source
    return decide(method, path.encode(), [(b"authorization", f"Bearer {key}".encode())],
                  verifier=VERIFIER, echo_enabled=False, admin_key="k1",
                  admin_throttle=limiter, source=who, now=now)


@pytest.mark.parametrize(("method", "path"), ADMIN_PATHS)
def test_wrong_admin_keys_past_the_limit_are_429_without_the_key_being_checked(
        method: bytes, path: str) -> None:
    limiter = FailureLimiter("edge_admin", 3, 30.0)
    for _ in range(3):
        with pytest.raises(Forbidden):
            admin(path, "nope", method=method, limiter=limiter)
    for key in ("nope", "k1"):  # the right key too: while over, no key is looked at
        with pytest.raises(AuthThrottled) as info:
            admin(path, key, method=method, limiter=limiter)
        assert info.value.http_status == 429 and info.value.role == "edge_admin"
        assert info.value.headers == (("retry-after", "10"),)
        assert info.value.body()["error"]["code"] == "auth_throttled"
    # Another source is not held back; this one may try again once a failure has drained.
    assert admin(path, "k1", method=method, limiter=limiter, source="192.0.2.2").route in ADMIN
    assert admin(path, "k1", method=method, limiter=limiter, now=110.0).route in ADMIN


def test_right_admin_keys_never_use_the_budget() -> None:
    limiter = FailureLimiter("edge_admin", 2, 30.0)
    for _ in range(100):
        admin("/admin/status", "k1", limiter=limiter)
    with pytest.raises(Forbidden):
        admin("/admin/status", "nope", limiter=limiter)
    assert admin("/admin/status", "k1", limiter=limiter).route is Route.ADMIN_STATUS


def test_a_missing_admin_key_is_401_and_no_failure() -> None:
    limiter = FailureLimiter("edge_admin", 1, 30.0)
    for _ in range(5):
        with pytest.raises(Unauthorized):
            decide(b"GET", b"/admin/status", [], verifier=VERIFIER, echo_enabled=False,
                   admin_key="k1", admin_throttle=limiter, source=lambda: "192.0.2.1",
                   now=100.0)
    assert len(limiter) == 0


def test_the_source_is_asked_for_admin_routes_only() -> None:
    limiter = FailureLimiter("edge_admin", 3, 30.0)
    sources: list[str] = []
    admin("/admin/status", "k1", limiter=limiter, sources=sources)
    assert sources == ["192.0.2.1"]

    def never() -> str:
        raise AssertionError("the source was asked for a device route")
    for target in (f"/ws?token={token()}", "/healthz", "/metrics"):
        decide(b"GET", target.encode(), ws_headers(), verifier=VERIFIER, echo_enabled=False,
               admin_key="k1", admin_throttle=limiter, source=never, now=100.0)


# cookie-authenticated requests and Origin (cross-site WebSocket hijacking)

EVIL = "https://evil.example"


def with_cookie(*extra: tuple[bytes, bytes], host: bytes = b"edge.example",
                sse: bool = False) -> list[tuple[bytes, bytes]]:
    base = [(b"host", host)] if sse else ws_headers(host=host)
    return [*base, (b"cookie", f"{COOKIE_NAME}={token('cookie')}".encode()), *extra]


def origin(value: str) -> tuple[bytes, bytes]:
    return (b"origin", value.encode())


def cookie_decide(target: str, headers: Headers, origins: frozenset[str] | None = None
                  ) -> Accept:
    return decide(b"GET", target.encode(), headers, verifier=VERIFIER, echo_enabled=False,
                  origins=origins)


@pytest.mark.parametrize("target", ["/ws", "/sse"])
@pytest.mark.parametrize("foreign", [EVIL, "http://edge.example.evil.com", "null",
                                     "http://edge.example:8081", "http://sub.edge.example"])
def test_a_cookie_from_a_foreign_origin_is_403_naming_it(target: str, foreign: str) -> None:
    headers = with_cookie(origin(foreign), sse=target == "/sse")
    with pytest.raises(OriginRefused) as info:
        cookie_decide(target, headers)
    assert info.value.http_status == 403
    assert info.value.body()["error"]["code"] == "origin_not_allowed"
    assert foreign in info.value.message and COOKIE_NAME in info.value.message


@pytest.mark.parametrize("target", ["/ws", "/sse"])
def test_a_cookie_without_an_origin_passes(target: str) -> None:
    accept = cookie_decide(target, with_cookie(sse=target == "/sse"))
    assert accept.identity is not None and accept.identity.client_id == "cookie"


@pytest.mark.parametrize(("host", "page"), [
    (b"edge.example", "http://edge.example"),
    (b"edge.example", "https://edge.example"),
    (b"EDGE.example", "http://edge.EXAMPLE/"),
    (b"edge.example:8080", "http://edge.example:8080"),
    (b"edge.example:443", "https://edge.example"),
    (b"edge.example:80", "http://edge.example"),
    (b"127.0.0.1:8080", "http://127.0.0.1:8080"),
    (b"[::1]:8080", "http://[::1]:8080"),
])
def test_a_cookie_from_the_edges_own_origin_passes(host: bytes, page: str) -> None:
    for target in ("/ws", "/sse"):
        headers = with_cookie(origin(page), host=host, sse=target == "/sse")
        assert cookie_decide(target, headers).identity is not None


@pytest.mark.parametrize(("host", "page"), [
    (b"edge.example:8080", "http://edge.example"),
    (b"edge.example", "http://edge.example:8080"),
    (b"edge.example:443", "http://edge.example"),
    (b"127.0.0.1:8080", "http://localhost:8080"),
])
def test_another_port_or_name_is_another_origin(host: bytes, page: str) -> None:
    with pytest.raises(OriginRefused):
        cookie_decide("/ws", with_cookie(origin(page), host=host))


def test_a_cookie_from_an_allowed_origin_passes_and_others_do_not() -> None:
    allowed = frozenset({"https://app.example"})
    accept = cookie_decide("/ws", with_cookie(origin("https://app.example")), allowed)
    assert accept.identity is not None and accept.origin == "https://app.example"
    with pytest.raises(OriginRefused):
        cookie_decide("/ws", with_cookie(origin(EVIL)), allowed)


def test_with_a_list_the_edges_own_origin_needs_to_be_on_it_too() -> None:
    allowed = frozenset({"https://app.example"})
    with pytest.raises(OriginRefused):  # as for any token: the list says who may
        cookie_decide("/ws", with_cookie(origin("http://edge.example")), allowed)


@pytest.mark.parametrize("target", ["/ws", "/sse"])
def test_a_token_in_the_url_or_a_bearer_from_a_foreign_origin_passes(target: str) -> None:
    base = ws_headers() if target == "/ws" else [(b"host", b"edge.example")]
    in_url = cookie_decide(f"{target}?token={token('url')}", [*base, origin(EVIL)])
    assert in_url.identity is not None and in_url.identity.client_id == "url"
    bearer = (b"authorization", f"Bearer {token('bearer')}".encode())
    by_bearer = cookie_decide(target, [*base, bearer, origin(EVIL)])
    assert by_bearer.identity is not None and by_bearer.identity.client_id == "bearer"
    # The URL's token wins over a cookie sent along (the cookie is then not the credential).
    both = cookie_decide(f"{target}?token={token('url')}",
                         with_cookie(origin(EVIL), sse=target == "/sse"))
    assert both.identity is not None and both.identity.client_id == "url"


def test_the_cookies_origin_is_checked_before_the_token() -> None:
    headers = [*ws_headers(), (b"cookie", f"{COOKIE_NAME}=forged".encode()), origin(EVIL)]
    with pytest.raises(OriginRefused):
        cookie_decide("/ws", headers)


def test_echo_has_no_token_and_no_cookie_check() -> None:
    headers = with_cookie(origin(EVIL))
    accept = decide(b"GET", b"/echo", headers, verifier=VERIFIER, echo_enabled=True)
    assert accept.route is Route.ECHO
