"""The API's brute-force brake (`core.auth_throttle`) as an aiohttp middleware, inside the JSON
error middleware of `router.api.app` (which answers its `AuthThrottled` as a 429 with
`Retry-After`).

What it guards, and how each attempt is told apart:
- `POST /v1/push` and `POST /v1/push/batch` (role `api_key`): every request is an attempt
  with an API key; a wrong key (403) is a failure.
- `POST /dashboard/login` and every other `/dashboard/...` request that carries an
  `Authorization` header (role `dashboard`): attempts with the admin key; a refused admin key
  (403) is a failure. A dashboard request with only the session cookie (HMAC-signed, not
  guessable) is not an attempt and is never held back.
A missing credential (401) is no failure: it tries no key. While a source is over its limit its
attempts are answered 429 before the handler runs, so the credential is not checked at all.

The source is `request.remote`, the peer's address: behind a proxy, the proxy's (there is no
trusted-proxy setting; every client behind one proxy shares one budget).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from core.auth_throttle import FailureLimiter, source_of
from core.errors import Forbidden
from router.config import ApiConfig

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_PUSH_PATHS = frozenset({"/v1/push", "/v1/push/batch"})
_DASHBOARD = "/dashboard/"
_LOGIN = "/dashboard/login"


def api_throttle(config: ApiConfig, clock_s: Callable[[], float]) -> Any:
    """The middleware with the limits `config` sets (`api_key_failures_*`,
    `dashboard_failures_*`)."""
    return throttle_middleware(
        FailureLimiter("api_key", config.api_key_failures_max, config.api_key_failures_window_s),
        FailureLimiter("dashboard", config.dashboard_failures_max,
                       config.dashboard_failures_window_s),
        clock_s)


def throttle_middleware(api_keys: FailureLimiter, dashboard: FailureLimiter,
                        clock_s: Callable[[], float]) -> Any:
    """The middleware (module docstring): `api_keys` and `dashboard` hold the failures of their
    roles, `clock_s` says the time in seconds."""

    def limiter_for(request: web.Request) -> FailureLimiter | None:
        path = request.path
        if path in _PUSH_PATHS:
            return api_keys
        if path == _LOGIN or (path.startswith(_DASHBOARD) and "Authorization" in request.headers):
            return dashboard
        return None

    @web.middleware
    async def throttle(request: web.Request, handler: Handler) -> web.StreamResponse:
        limiter = limiter_for(request)
        if limiter is None:
            return await handler(request)
        source = source_of(request.remote)
        limiter.check(source, clock_s())
        try:
            return await handler(request)
        except Forbidden as exc:
            if exc.credential is not None:  # a wrong key; not the dashboard's CSRF 403
                limiter.failed(source, clock_s())
            raise
    return throttle
