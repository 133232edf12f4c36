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
    GET  /static/<name>  the browser client and pages (`router.pages.static`)
    GET  /openapi.json   the OpenAPI description of these routes and the edge's admin API
                     (`router.api.openapi`)
    GET  /healthz    200 {"status": "ok"}
    GET  /, /dashboard/...   the operator's dashboard, behind the admin key
    (`router.pages.dashboard`)
    GET  /metrics    the page `metrics` returns (only when the app is given one; no key)

Decisions:
- `targets` is the number of clients a targeted message was resolved to (named clients plus the
  known devices of named users, narrowed by device type), or for a broadcast the connections active
  nodes hold now. Resolution happens here, before enqueueing, so the queued message names clients
  only and a worker does no user lookups.
- A duplicate (the dedup_key was put within the dedup window) is still a success, 202, because the
  push the sender meant is accepted: only a retry of it is dropped. Its `id` is the ORIGINAL
  message's (the one enqueued under the key and delivered, whichever API process took it), so a
  sender can match a retry to what was sent; nothing is sent for the retry (`targets` 0). In a
  batch, a repeat of a key put earlier in the same batch names that earlier message.
- A batch is all or nothing on input: every message is validated (and resolved) before any is
  enqueued, and one bad message is a 400 naming it (`messages[3].ttl`), with nothing enqueued.
  Its limits: `max_batch` messages, `max_batch_payload_bytes` for the body, `max_payload_bytes`
  for each message's device-facing payload. Valid messages are then enqueued in order; if the
  queue refuses one (`Unavailable`: full or unreachable), that one and every later one are
  answered `{"error": {"code": "unavailable", ...}}` and not enqueued (the sender retries just
  those, with dedup keys if it must not risk a repeat); if it refuses the first, the whole
  request is the 503. Messages of one batch resolve in one registry round and their ids
  increase in batch order.
- The inbox routes exist only when the app is given an inbox (and then need a device-token
  secret or public key in `auth`). The client id is the token's, never a parameter: a device
  reads and acks its own inbox only. A bad or missing token is 401 `invalid_token`, as at the
  edge. A pull does not remove anything: messages stay until acked (or expired, or pushed out by
  the inbox cap). `more` is true when messages after the last one returned are waiting; the
  next pull passes the last id as `after`. What a pull returns is marked given
  (`Inbox.pull`), and `{"through": ID}` removes `ID` and what was given before it, never a
  message stored later with an older id (docs/delivery.md). `after` and `through` must be
  message ids (`core.ids.is_message_id`): "zzz" would sort after every id.
- Broadcasts are in no inbox. With a broadcast history, a pull WITH `after` also returns the
  broadcasts kept after that id that reach the token's device type, merged with the inbox in id
  order, each id once: exactly what the edge replays to a device resuming with that last id, so a
  device that only polls misses no broadcast either. A pull without `after` (a device with no
  last id) gets its inbox only, as a fresh connection would. Acking a broadcast's id removes
  nothing; the device's next `after` moves past it.
- The body is parsed as JSON whatever the Content-Type says: senders (and curl) often omit it.
- The API key is checked before the body is read; the size limit (413, naming it) before parsing,
  from Content-Length when given and while reading otherwise.
- Each API key has its own rate (`api_key_rate_per_s`, `api_key_burst`; `core.ratelimit`
  `KeyRates`): a push costs one token, a batch one per message. A key whose bucket is empty is
  refused 429 before its body is read; a batch is charged once it is valid (invalid input costs
  nothing), and refused 429 when its key has fewer tokens than it has messages. The answer's
  `Retry-After` says when the request could pass. A key is known by its position in `api_keys`
  (`ApiStats.rate_limited`, the metric's `key` label); the key itself is never logged or
  labelled. The dashboard's push form (admin key, one message) is not limited; the demo has
  its own limits (`router.pages.demo`).
- Brute force: wrong API keys (and the dashboard's wrong admin keys) are limited per source
  address (`api_key_failures_*`, `dashboard_failures_*`; `router.api.throttle`): a
  source over its limit is answered 429 `auth_throttled` with `Retry-After` before its key is
  looked at (`ApiStats.auth_throttled` by role). Correct keys use none of the budget.
- `ApiStats` counts what the API did as plain numbers (messages enqueued and deduplicated by
  priority, errors answered by status, key and token failures): the metrics exporter of
  `zuulpush.metrics` reads them; this package knows nothing of Prometheus.
- Every error is JSON, `{"error": {"code", "message", "field"?}}`, with its HTTP status: our own
  errors, aiohttp's (404 unknown path, 405 wrong method with `Allow`) and, for anything
  unexpected, a 500 without details (logged here). A body whose chunked framing is broken, or
  that the sender abandons, is a 400 naming `body` (`BodyUnreadable`, the connection then
  closed), never a 500. Requests the HTTP parser refuses before any route sees them are
  answered (and their logging throttled) by the listener, `router.api.malformed`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
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
    InvalidToken,
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
from router.pages.static import add_static_routes
from router.resolve import broadcast_reach, resolve_many
from router.validation import parse_batch, parse_inbox_ack, parse_inbox_query, parse_push

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MetricsPage = Callable[[], tuple[bytes, str]]
"""The metrics exposition and its content type."""


@dataclass(slots=True)
class ApiStats:
    """What one API has done since start, as plain counters (module docstring)."""

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
        elif isinstance(error, InvalidToken):
            self.auth_failures["device_token"] += 1
        elif isinstance(error, Unauthorized | Forbidden):
            # The dashboard's errors name their credential (admin_key) or none (csrf).
            credential = getattr(error, "credential", "api_key")
            if credential:
                self.auth_failures[credential] += 1

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
    ids = ids or IdGenerator()  # one per process: the demo's pushes share it
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
    headers = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, Unavailable | RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    response = _json(exc.body(), status=exc.http_status, headers=headers)
    if isinstance(exc, BodyUnreadable):
        response.force_close()
    return response


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
