"""The demo page: a visitor gets a device token and watches pushes arrive in the browser.

    GET  /demo          the page (`router/pages/static/demo.html`, using `/static/zuulpush.js`)
    POST /demo/token    200 {"token", "client_id", "user_id", "edge_url", "expires_in_s"}: a
                        device token for a new random client id `demo-<hex>` of user `demo-user`,
                        device type `web`, valid `DEMO_TOKEN_TTL_S`
    POST /demo/push     Authorization: Bearer <demo token>; optional body {"text": "..."}
                        202 {"id", "targets": 1}: one message (topic `demo`) to the caller's own
                        client id, nobody else's

Decisions:
- Off unless `ApiConfig.demo` is set: `zuulpush serve` (the quick start, on loopback) turns it
  on, `zuulpush api` leaves it off, since a fleet's API must not hand out device tokens to anyone
  who asks. Off, the routes do not exist (404 JSON, as any unknown path). It also needs the
  HS256 `secret` to sign tokens: with only a public key configured there is no demo.
- A demo token is an ordinary device token (the edge needs no demo mode) for a user nobody
  else is: it can reach only the demo user's devices, and `/demo/push` sends only to the
  token's own client id. So a visitor cannot push to anyone but themself.
- Both POSTs are rate-limited: tokens by one bucket for the whole API, pushes by one bucket
  for the whole API and a minimum interval per client id (remembered for the newest
  `_MAX_CLIENTS` clients). Over it: 429 `rate_limited` with `Retry-After`.
- The edge's URL the page connects to is `ApiConfig.public_edge_url`; without it, the caller's
  `edge_url(request)` says (for `zuulpush serve`: the edge's address and port, with the host
  the visitor used when the edge listens on every address).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from core.clock import ClockMs
from core.errors import Forbidden, InvalidRequest, RateLimited
from core.ids import IdGenerator
from core.ratelimit import TokenBucket
from core.tokens import AuthConfig, TokenVerifier, bearer, issue_token
from router.base import Message, MessageQueue
from router.config import ApiConfig
from router.pages.files import static_response
from router.validation import parse_push

DEMO_USER = "demo-user"
DEMO_DEVICE_TYPE = "web"
DEMO_TOKEN_TTL_S = 3600
DEMO_TOPIC = "demo"
MAX_TEXT = 200
"""Characters of a demo push's text."""

TOKENS_PER_S, TOKEN_BURST = 2.0, 20
PUSHES_PER_S, PUSH_BURST = 10.0, 30
PUSH_INTERVAL_S = 0.2
"""One client's pushes at most this often."""
_MAX_CLIENTS = 10_000

EdgeUrl = Callable[[web.Request], str]
"""The edge's base URL (`http(s)://host:port`) for a page requested by `request`."""

_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


def demo_available(config: ApiConfig, auth: AuthConfig) -> bool:
    """Whether `create_api_app` adds the demo routes: switched on, and a secret to sign with."""
    return config.demo and bool(auth.secret)


def edge_url_for(host: str, port: int, *, tls: bool) -> EdgeUrl:
    """`zuulpush serve`'s default: the edge's own address, or the host name the visitor used for
    the API when the edge listens on every address (0.0.0.0, ::)."""
    scheme = "https" if tls else "http"

    def edge_url(request: web.Request) -> str:
        name = (request.url.host or "127.0.0.1") if host in _WILDCARDS else host
        if ":" in name and not name.startswith("["):
            name = f"[{name}]"
        return f"{scheme}://{name}:{port}"
    return edge_url


def add_demo_routes(app: web.Application, *, config: ApiConfig, auth: AuthConfig,
                    queue: MessageQueue, ids: IdGenerator, clock_ms: ClockMs,
                    edge_url: EdgeUrl | None = None,
                    on_put: Callable[[Message, bool], None] | None = None) -> None:
    """Add `/demo`, `/demo/token` and `/demo/push` (module docstring) when `demo_available`.
    `edge_url` is used when `config.public_edge_url` is empty; with neither, ValueError.
    `on_put(message, queued)` is told of each message enqueued (the API's counters)."""
    if not demo_available(config, auth):
        return
    if config.public_edge_url:
        public = config.public_edge_url.rstrip("/")
        edge_url = lambda request: public  # noqa: E731
    if edge_url is None:
        raise ValueError("demo: set public_edge_url, the edge's URL the demo page connects to")
    demo = _Demo(config, auth, queue, ids, clock_ms, edge_url, on_put)
    app.router.add_get("/demo", demo.page)
    app.router.add_post("/demo/token", demo.token)
    app.router.add_post("/demo/push", demo.push)


class _Demo:
    __slots__ = ("_auth", "_clock_ms", "_config", "_edge_url", "_ids", "_last_push", "_on_put",
                 "_pushes", "_queue", "_tokens", "_verifier")

    def __init__(self, config: ApiConfig, auth: AuthConfig, queue: MessageQueue,
                 ids: IdGenerator, clock_ms: ClockMs, edge_url: EdgeUrl,
                 on_put: Callable[[Message, bool], None] | None) -> None:
        self._config = config
        self._auth = auth
        self._queue = queue
        self._ids = ids
        self._clock_ms = clock_ms
        self._edge_url = edge_url
        self._on_put = on_put
        self._verifier = TokenVerifier(auth)
        self._tokens = TokenBucket(TOKENS_PER_S, TOKEN_BURST, now=self._now_s())
        self._pushes = TokenBucket(PUSHES_PER_S, PUSH_BURST, now=self._now_s())
        self._last_push: OrderedDict[str, float] = OrderedDict()

    async def page(self, request: web.Request) -> web.Response:
        return static_response("demo.html", request)

    async def token(self, request: web.Request) -> web.Response:
        _limit(self._tokens, self._now_s(), "too many demo tokens")
        client_id = f"demo-{os.urandom(8).hex()}"
        token = issue_token(self._auth.secret, client_id=client_id, user_id=DEMO_USER,
                            device_type=DEMO_DEVICE_TYPE, ttl_s=DEMO_TOKEN_TTL_S)
        return _json({"token": token, "client_id": client_id, "user_id": DEMO_USER,
                      "device_type": DEMO_DEVICE_TYPE, "edge_url": self._edge_url(request),
                      "expires_in_s": DEMO_TOKEN_TTL_S})

    async def push(self, request: web.Request) -> web.Response:
        identity = self._verifier.verify(bearer(request.headers.get("Authorization")) or "")
        if identity.user_id != DEMO_USER:
            raise Forbidden("only a demo token may push here")
        now = self._now_s()
        self._limit_client(identity.client_id, now)
        _limit(self._pushes, now, "too many demo pushes")
        text = _text(await request.read() if request.can_read_body else b"")
        body = orjson.dumps({"to": {"clients": [identity.client_id]}, "topic": DEMO_TOPIC,
                             "data": {"text": text}, "ttl": 60})
        message = parse_push(body, config=self._config, ids=self._ids, now_ms=self._clock_ms())
        put = await self._queue.put(message)  # no dedup key: never a duplicate
        if self._on_put is not None:
            self._on_put(message, not put.duplicate)
        return _json({"id": message.id, "targets": 1}, status=202)

    def _limit_client(self, client_id: str, now: float) -> None:
        last = self._last_push.get(client_id)
        if last is not None and now - last < PUSH_INTERVAL_S:
            raise RateLimited("one demo push at a time, please",
                              retry_after_s=PUSH_INTERVAL_S - (now - last))
        self._last_push[client_id] = now
        self._last_push.move_to_end(client_id)
        if len(self._last_push) > _MAX_CLIENTS:
            self._last_push.popitem(last=False)

    def _now_s(self) -> float:
        return self._clock_ms() / 1000


def _limit(bucket: TokenBucket, now: float, message: str) -> None:
    if not bucket.take(now):
        raise RateLimited(message, retry_after_s=bucket.wait_s(now))


def _text(body: bytes) -> str:
    """The `text` of an optional JSON body `{"text": "..."}`; a greeting without one."""
    if len(body) > 4 * MAX_TEXT:
        raise InvalidRequest(f"text: at most {MAX_TEXT} characters", field="text")
    if not body.strip():
        return "Hello from zuulpush"
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("body is not JSON") from None
    text = request.get("text") if isinstance(request, dict) else None
    if not isinstance(text, str) or not 0 < len(text) <= MAX_TEXT:
        raise InvalidRequest(f"text: a string of 1 to {MAX_TEXT} characters", field="text")
    return text


def _json(body: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers={"Cache-Control": "no-store"})
