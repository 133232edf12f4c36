"""The push-send API for backend services (aiohttp).

    POST /v1/push    Authorization: Bearer <api key>; body as in `router.validation`
                     202 {"id": "...", "targets": N}
                     202 {"id": "<the original's>", "targets": 0, "duplicate": true} for a
                     repeated dedup_key
    POST /v1/push/batch  Authorization: Bearer <api key>; {"messages": [<push body>, ...]}
                     202 {"results": [{"id", "targets"} | {"id", "targets": 0, "duplicate": true}
                                      | {"error": {"code", "message"}}, ...]}, one per message
                     (a duplicate's id is the original's)
    GET  /v1/inbox?after=ID&limit=N   device token (`Authorization: Bearer` or `?token=`)
                     200 {"messages": [<message objects exactly as devices get them over
                     WebSocket/SSE>, ...], "more": bool}: the token's own client's inbox,
                     oldest first, after ID (from the oldest without it)
    POST /v1/inbox/ack   device token; {"ids": [...]} or {"through": ID}
                     200 {"removed": N}
    GET  /demo, POST /demo/token, POST /demo/push   the demo page, only with `demo` on
                     (`router.pages.demo`)
    GET  /static/<name>  the browser client and pages (`router.pages.files`)
    GET  /openapi.json   the OpenAPI description of these routes and the edge's admin API
                     (`router.api.openapi`)
    GET  /healthz    200 {"status": "ok"}
    GET  /, /dashboard/...   the operator's dashboard, behind the admin key
    (`router.pages.dashboard`)
    GET  /metrics    the page `metrics` returns (only when the app is given one; no key)

Every error is JSON, `{"error": {"code", "message", "field"?}}`, with its status and headers
(`core.errors`). The decisions behind the answers (targets, duplicates, batches, inbox pulls,
rate and brute-force limits, errors): docs/api.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from core.clock import ClockMs, wall_ms
from core.errors import (
    AuthThrottled,
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    RateLimited,
    TooManyMessages,
    Unauthorized,
    Unavailable,
    ZuulpushError,
)
from core.ids import IdGenerator
from core.ratelimit import KeyRates
from core.tokens import AuthConfig, DeviceIdentity, TokenVerifier, bearer, check_key
from registry.base import NodeInfo, Registry
from router.api.malformed import reason
from router.api.openapi import add_openapi_route
from router.api.throttle import api_throttle
from router.base import (
    Broadcast,
    BroadcastLog,
    Inbox,
    Message,
    MessageQueue,
    Priority,
    PutResult,
    Target,
    merge_replay,
)
from router.config import ApiConfig
from router.pages.dashboard import DashboardSources, add_dashboard_routes
from router.pages.demo import EdgeUrl, add_demo_routes
from router.pages.files import add_static_routes
from router.resolve import broadcast_reach, resolve_many
from router.validation import parse_batch, parse_inbox_ack, parse_inbox_query, parse_push

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MetricsPage = Callable[[], tuple[bytes, str]]
"""The metrics exposition and its content type."""


@dataclass(slots=True)
class ApiStats:
    """What one API has done since start, as plain counters (docs/api.md)."""

    enqueued: Counter[Priority] = field(default_factory=Counter)
    deduped: Counter[Priority] = field(default_factory=Counter)  # dropped as duplicates
    rejected: Counter[int] = field(default_factory=Counter)  # error answers by HTTP status
    auth_failures: Counter[str] = field(default_factory=Counter)  # api_key, device_token, admin_key
    rate_limited: Counter[int] = field(default_factory=Counter)  # 429s by API key position
    auth_throttled: Counter[str] = field(default_factory=Counter)  # 429s unchecked, by role
    batch_too_large: int = 0  # batches refused for more than max_batch messages

    def count_error(self, status: int, error: Exception | None = None) -> None:
        self.rejected[status] += 1
        if isinstance(error, TooManyMessages):
            self.batch_too_large += 1
        elif isinstance(error, AuthThrottled):
            self.auth_throttled[error.role] += 1
        elif isinstance(error, Unauthorized | Forbidden) and error.credential is not None:
            # A device token, an API key, the dashboard's admin key; not the dashboard's CSRF.
            self.auth_failures[error.credential] += 1

    def count_put(self, message: Message, queued: bool) -> None:
        (self.enqueued if queued else self.deduped)[message.priority] += 1

    def totals(self) -> dict[str, int]:
        """Messages enqueued and deduplicated since start, all priorities (the dashboard's)."""
        return {"enqueued": sum(self.enqueued.values()), "deduped": sum(self.deduped.values())}

class BodyUnreadable(InvalidRequest):
    """A request body whose framing is broken (a bad chunk) or that broke off: 400 naming
    `body`, and the connection closes after the answer (what follows on it is not a request)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="body")


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def create_api_app(
    *,
    config: ApiConfig,
    auth: AuthConfig,
    queue: MessageQueue,
    registry: Registry,
    inbox: Inbox | None = None,
    history: BroadcastLog | None = None,
    ids: IdGenerator | None = None,
    clock_ms: ClockMs = wall_ms,
    stats: ApiStats | None = None,
    metrics: MetricsPage | None = None,
    dashboard: DashboardSources | None = None,
    edge_url: EdgeUrl | None = None,
) -> web.Application:
    """The API as an aiohttp application; the caller runs it (AppRunner, TCPSite) and closes the
    queue, registry, inbox and history it passed in. Without `inbox` the device inbox routes are
    absent (404); without `history` a pull returns the inbox alone. What it does is counted in
    `stats` (a new one when not given); `GET /metrics` exists only with `metrics`. The
    dashboard (`router.pages.dashboard`) reads the registry, `dashboard` (what this process holds
    besides; by default nothing but the API's own counters) and `stats`. The demo page
    (`router.pages.demo`) exists only with `config.demo` and a secret; its edge URL is
    `config.public_edge_url`, else `edge_url(request)` (ValueError with neither)."""
    stats = ApiStats() if stats is None else stats
    ids = ids or IdGenerator(clock_ms)  # one per process: the demo's pushes share it
    max_body = max(config.max_payload_bytes, config.max_batch_payload_bytes)
    throttle = api_throttle(config, lambda: clock_ms() / 1000)  # router.api.throttle
    app = web.Application(client_max_size=max_body, middlewares=[_json_errors(stats), throttle])
    push = _PushHandler(config, auth, queue, registry, ids, clock_ms, stats)
    app.router.add_post("/v1/push", push.handle)
    app.router.add_post("/v1/push/batch", push.handle_batch)
    if inbox is not None:
        pull = _InboxHandler(config, TokenVerifier(auth), inbox, history)
        app.router.add_get("/v1/inbox", pull.pull)
        app.router.add_post("/v1/inbox/ack", pull.ack)
    app.router.add_get("/healthz", _healthz)
    add_static_routes(app)
    add_openapi_route(app)
    add_dashboard_routes(app, admin_key=auth.admin_key, registry=registry, push=push.accept,
                         sources=dashboard or DashboardSources(counters=stats.totals),
                         clock_s=lambda: clock_ms() / 1000)
    add_demo_routes(app, config=config, auth=auth, queue=queue, ids=ids, clock_ms=clock_ms,
                    edge_url=edge_url, on_put=stats.count_put)
    if metrics is not None:
        app.router.add_get("/metrics", _metrics_handler(metrics))
    return app


def _metrics_handler(metrics: MetricsPage) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        body, content_type = metrics()
        return web.Response(body=body, headers={"Content-Type": content_type})
    return handle


class _PushHandler:
    """POST /v1/push: authenticate, read, validate, resolve, enqueue."""

    __slots__ = ("_auth", "_clock_ms", "_config", "_ids", "_queue", "_rates", "_registry",
                 "_stats")

    def __init__(
        self,
        config: ApiConfig,
        auth: AuthConfig,
        queue: MessageQueue,
        registry: Registry,
        ids: IdGenerator,
        clock_ms: ClockMs,
        stats: ApiStats,
    ) -> None:
        self._stats = stats
        self._config = config
        self._auth = auth
        self._queue = queue
        self._registry = registry
        self._ids = ids
        self._clock_ms = clock_ms
        self._rates = KeyRates(config.api_key_rate_per_s, config.api_key_burst)

    async def handle(self, request: web.Request) -> web.Response:
        key = check_key(bearer(request.headers.get("Authorization")), self._auth.api_keys)
        self._charge(key, 1)
        return _json(await self.accept(request), status=202)

    def _charge(self, key: int, cost: int, *, spend: bool = True) -> None:
        """Spend `cost` of the key's tokens (or, not `spend`, check that there is one); else
        RateLimited (429), counted by the key's position."""
        now = self._clock_ms() / 1000
        rates = self._rates
        wait_s = rates.charge(key, cost, now) if spend else rates.wait_s(key, cost, now)
        if wait_s > 0:
            self._stats.rate_limited[key] += 1
            raise RateLimited(f"this API key is over its rate of {rates.rate_per_s:g} messages "
                              "per second", retry_after_s=wait_s)

    async def accept(self, request: web.Request) -> dict[str, Any]:
        """Read, validate, resolve and enqueue one push (the caller has authorised it); the
        202 answer's body. Also the dashboard's push form."""
        body = await _read_body(request, self._config.max_payload_bytes)
        message = parse_push(body, config=self._config, ids=self._ids, now_ms=self._clock_ms())
        [(message, targets)] = await self._resolve([message])
        return await self._put(message, targets)

    async def handle_batch(self, request: web.Request) -> web.Response:
        key = check_key(bearer(request.headers.get("Authorization")), self._auth.api_keys)
        self._charge(key, 1, spend=False)  # an empty bucket: refused before the body is read
        body = await _read_body(request, self._config.max_batch_payload_bytes)
        messages = parse_batch(body, config=self._config, ids=self._ids, now_ms=self._clock_ms())
        self._charge(key, len(messages))
        resolved = await self._resolve(messages)
        put = await self._queue.put_many([message for message, _ in resolved])
        for (message, _), result in zip(resolved, put, strict=False):
            self._stats.count_put(message, not result.duplicate)
        results = [_result(targets, result)
                   for (_, targets), result in zip(resolved, put, strict=False)]
        if len(put) < len(resolved):  # the queue filled up: the rest were not enqueued
            full = Unavailable("message queue is full or unreachable", retry_after_s=1.0)
            refused = {"error": full.body()["error"]}
            results += [refused] * (len(resolved) - len(put))
        return _json({"results": results}, status=202)

    async def _put(self, message: Message, targets: int) -> dict[str, Any]:
        """Enqueue one resolved message; its result object."""
        result = await self._queue.put(message)
        self._stats.count_put(message, not result.duplicate)
        return _result(targets, result)

    async def _resolve(self, messages: list[Message]) -> list[tuple[Message, int]]:
        """Each message as queued (targeted: clients resolved, users gone) and its target count,
        from one registry round for them all."""
        targeted = [m for m in messages if not m.target.broadcast]
        nodes: list[NodeInfo] = []
        if len(targeted) < len(messages):
            resolved, nodes = await asyncio.gather(
                resolve_many([m.target for m in targeted], self._registry),
                self._registry.nodes())
        else:
            resolved = await resolve_many([m.target for m in targeted], self._registry)
        clients = iter(resolved)
        out: list[tuple[Message, int]] = []
        for message in messages:
            target = message.target
            if target.broadcast:
                out.append((message, broadcast_reach(target.device_types, nodes)))
                continue
            reached = next(clients)
            queued = Target(clients=reached, device_types=target.device_types)
            out.append((dataclasses.replace(message, target=queued), len(reached)))
        return out


def _result(targets: int, put: PutResult) -> dict[str, Any]:
    """The answer for one message the queue took, or dropped as a duplicate: then with the
    original message's id and no targets (nothing more is sent)."""
    if put.duplicate:
        return {"id": put.id, "targets": 0, "duplicate": True}
    return {"id": put.id, "targets": targets}


class _InboxHandler:
    """GET /v1/inbox and POST /v1/inbox/ack, for devices, on their own inbox."""

    __slots__ = ("_config", "_history", "_inbox", "_verifier")

    def __init__(self, config: ApiConfig, verifier: TokenVerifier, inbox: Inbox,
                 history: BroadcastLog | None) -> None:
        self._config = config
        self._verifier = verifier
        self._inbox = inbox
        self._history = history

    async def pull(self, request: web.Request) -> web.Response:
        claims = self._claims(request)
        after, limit = parse_inbox_query(request.query, max_page=self._config.max_inbox_page)
        entries = await self._inbox.pull(claims.client_id, after, limit + 1)
        if after is not None and self._history is not None:
            missed, last_read = await _broadcasts_after(self._history, after, claims.device_type,
                                                        limit + 1)
            entries = merge_replay(entries, missed, claims.device_type)
            if last_read is not None:  # the history goes on past what was read: stop there
                entries = [e for e in entries if e.id <= last_read]
        more = len(entries) > limit
        # The payloads are the very JSON objects devices receive: spliced, not re-encoded.
        body = b"".join((b'{"messages":[', b",".join(e.payload for e in entries[:limit]),
                         b'],"more":', b"true}" if more else b"false}"))
        return web.Response(body=body, content_type="application/json")

    async def ack(self, request: web.Request) -> web.Response:
        client_id = self._claims(request).client_id
        body = await _read_body(request, self._config.max_payload_bytes)
        ack = parse_inbox_ack(body, max_ids=self._config.max_inbox_page,
                              max_bytes=self._config.max_payload_bytes)
        if ack.through is not None:
            removed = await self._inbox.through(client_id, ack.through)
        else:
            removed = await self._inbox.ack(client_id, ack.ids)
        return _json({"removed": removed})

    def _claims(self, request: web.Request) -> DeviceIdentity:
        """The verified token's claims; InvalidToken (401) otherwise."""
        token = request.query.get("token") or bearer(request.headers.get("Authorization"))
        return self._verifier.verify(token or "")


async def _broadcasts_after(history: BroadcastLog, after: str, device_type: str,
                            wanted: int) -> tuple[list[Broadcast], str | None]:
    """The kept broadcasts after `after` that reach `device_type`, read a page at a time until
    `wanted` of them are found or the history ends; with the id of the last broadcast read when
    the history may go on past it (None when it was read to its end)."""
    found: list[Broadcast] = []
    last_id = after
    while True:
        page = await history.after(last_id, wanted)
        found.extend(b for b in page if b.reaches(device_type))
        if len(page) < wanted:
            return found, None
        last_id = page[-1].id
        if len(found) >= wanted:
            return found, last_id


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _read_body(request: web.Request, max_bytes: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it is known to exceed `max_bytes`;
    InvalidRequest naming `body` when its framing is malformed or the sender goes away."""
    too_large = PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        # Read here rather than by request.read(): each route has its own limit.
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            chunks.append(chunk)
    except (web.RequestPayloadError, HttpProcessingError) as exc:  # e.g. a bad chunk size
        # Nothing more is read from this body: aiohttp must not try to (and log that it failed).
        request.content.feed_eof()
        raise BodyUnreadable(f"request body is malformed: {reason(exc)}") from None
    except ConnectionResetError:  # the sender went away mid-body: answered to nobody, no bug
        raise BodyUnreadable("request body was cut off") from None
    return b"".join(chunks)


def _json_errors(stats: ApiStats) -> Any:
    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer every error as JSON with its status (counted); log and hide unexpected
        ones."""
        try:
            return await handler(request)
        except ZuulpushError as exc:
            stats.count_error(exc.http_status, exc)
            return _error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            stats.count_error(exc.status)
            return _http_error_response(exc)
        except Exception:  # the seams raise their outages as Unavailable, answered above
            log.exception("unhandled error in %s %s", request.method, request.path)
            stats.count_error(500)
            return _error_response(ZuulpushError("internal error"))
    return json_errors


def _error_response(exc: ZuulpushError) -> web.Response:
    headers = {_header_case(name): value for name, value in exc.headers}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    response = _json(exc.body(), status=exc.http_status, headers=headers)
    if isinstance(exc, BodyUnreadable):
        response.force_close()
    return response


def _header_case(name: str) -> str:
    """A header name as HTTP/1.1 answers usually write it: `retry-after` -> `Retry-After`."""
    return "-".join(part.capitalize() for part in name.split("-"))


def _http_error_response(exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (404, 405, ...) in our JSON shape, keeping headers such as Allow."""
    code = _HTTP_CODES.get(exc.status, exc.reason.lower().replace(" ", "_"))
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    body = {"error": {"code": code, "message": exc.reason}}
    return _json(body, status=exc.status, headers=headers)


def _json(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )
