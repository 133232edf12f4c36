"""The operator's dashboard on the API's port: a page, a live stream of numbers, a push form and
drain buttons, behind the admin key.

    GET  /                          the dashboard page when the session cookie is valid, else
                                    the login page (both from `router/pages/static/`)
    POST /dashboard/login           {"key": "<admin key>"}: 200 and the session cookie; 403 wrong
    POST /dashboard/logout          clears the cookie
    GET  /dashboard/snapshot        200, one snapshot (`router.pages.dashboard_stats`)
    GET  /dashboard/events          text/event-stream: a snapshot every `EVENT_INTERVAL_S`
    POST /dashboard/push            a push body as for `POST /v1/push`: 202 and the same answer
    POST /dashboard/nodes/<id>/drain   202: the node was asked to drain; 404: no such live node

Auth is the session cookie (signed with the admin key, revocable: `router.pages.sessions`) or
`Authorization: Bearer <admin key>`; state-changing POSTs also need the CSRF header. The
decisions (auth, CSRF, push, numbers, drain): docs/api.md, "The operator's dashboard".
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson
from aiohttp import web

from core.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from core.tokens import bearer
from registry.base import NodeInfo, Registry
from router.pages.dashboard_stats import Rates, merge_nodes, snapshot
from router.pages.files import static_response
from router.pages.process_stats import ProcessStats, merge_processes
from router.pages.sessions import (
    MemorySessionRevocations,
    Session,
    SessionRevocations,
    read_session,
    session_cookie,
)

COOKIE = "zuulpush_dashboard"
SESSION_S = 12 * 3600
CSRF_HEADER = "X-Zuulpush-Dashboard"
EVENT_INTERVAL_S = 1.0
DRAIN_REQUEST_TTL_S = 60.0
"""How long a drain request waits for its node to take it (as `zuulpush drain`'s)."""
_MAX_LOGIN_BYTES = 4096

PushAccept = Callable[[web.Request], Awaitable[dict[str, Any]]]
"""Reads, validates, resolves and enqueues the request's push body; its 202 answer."""


class AdminKeyMissing(Unauthorized):
    credential = "admin_key"


class AdminKeyRefused(Forbidden):
    credential = "admin_key"


class CsrfHeaderMissing(Forbidden):
    code = "csrf"
    credential = None  # not a credential failure: not counted as one


@dataclass(frozen=True, slots=True)
class DashboardSources:
    """What the dashboard reads besides the registry: `mode` (`serve` or `fleet`), the current
    records of the nodes this process holds, this process's counters (`dashboard_stats`), and
    how to drain a node this process holds (True if it is one of them). In a fleet, also the
    live process records (`processes`: `ProcessStatsStore.live`) and this process's own
    current ones (`local_processes`), which replace its published copy; with them, the
    counters come from the records (scope `fleet`) and `counters` should add nothing.
    `sessions` holds the logged-out sessions: this process's memory by default, the region's
    Redis for a fleet's APIs (shared by all of them)."""

    mode: str = "fleet"
    local_nodes: Callable[[], list[NodeInfo]] = list
    counters: Callable[[], Mapping[str, int]] = dict
    drain_local: Callable[[str], bool] = field(default=lambda node_id: False)
    processes: Callable[[], Awaitable[list[ProcessStats]]] | None = None
    local_processes: Callable[[], list[ProcessStats]] = list
    sessions: SessionRevocations = field(default_factory=MemorySessionRevocations)


def add_dashboard_routes(app: web.Application, *, admin_key: str, registry: Registry,
                         push: PushAccept, sources: DashboardSources | None = None,
                         clock_s: Callable[[], float] = time.time) -> None:
    """The routes of the module docstring on `app` (whose middleware answers errors as JSON)."""
    dashboard = _Dashboard(admin_key, registry, push, sources or DashboardSources(), clock_s)
    app.router.add_get("/", dashboard.page)
    app.router.add_post("/dashboard/login", dashboard.login)
    app.router.add_post("/dashboard/logout", dashboard.logout)
    app.router.add_get("/dashboard/snapshot", dashboard.snapshot)
    app.router.add_get("/dashboard/events", dashboard.events)
    app.router.add_post("/dashboard/push", dashboard.push)
    app.router.add_post("/dashboard/nodes/{node_id}/drain", dashboard.drain)
    app.on_shutdown.append(dashboard.close)


class _Dashboard:
    __slots__ = ("_admin_key", "_clock_s", "_closing", "_push", "_registry", "_sources")

    def __init__(self, admin_key: str, registry: Registry, push: PushAccept,
                 sources: DashboardSources, clock_s: Callable[[], float]) -> None:
        self._admin_key = admin_key
        self._registry = registry
        self._push = push
        self._sources = sources
        self._clock_s = clock_s
        self._closing = asyncio.Event()

    async def close(self, app: web.Application) -> None:
        """Ends the event streams, so that the API stops without waiting for them."""
        self._closing.set()

    async def page(self, request: web.Request) -> web.Response:
        self._configured()
        authorised = await self._session(request) is not None
        return static_response("dashboard.html" if authorised else "login.html", request)

    async def login(self, request: web.Request) -> web.Response:
        self._configured()
        body = await request.content.read(_MAX_LOGIN_BYTES + 1)
        if len(body) > _MAX_LOGIN_BYTES:
            raise InvalidRequest("login body too large")
        key = _login_key(body, request.content_type)
        if not key:
            raise AdminKeyMissing("missing admin key: send {\"key\": \"<admin key>\"}")
        if not hmac.compare_digest(key.encode(), self._admin_key.encode()):
            raise AdminKeyRefused("admin key not accepted")
        expires_at = int(self._clock_s()) + SESSION_S
        response = _json({"ok": True, "expires_at": expires_at})
        response.set_cookie(COOKIE, session_cookie(self._admin_key, expires_at), path="/",
                            max_age=SESSION_S, httponly=True, samesite="Strict",
                            secure=request.secure)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        session = await self._authorise(request, changes_state=True)
        if session is not None:  # (a bearer's logout has no session to end)
            await self._sources.sessions.revoke(session.session_id,
                                                session.revocation_ttl_s(self._clock_s()))
        response = _json({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def snapshot(self, request: web.Request) -> web.Response:
        await self._authorise(request)
        return _json(await self._snapshot(Rates()))

    async def events(self, request: web.Request) -> web.StreamResponse:
        session = await self._authorise(request)
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        rates = Rates()
        with contextlib.suppress(ConnectionResetError):
            while not self._closing.is_set() and await self._still_valid(session):
                data = orjson.dumps(await self._snapshot(rates))
                await response.write(b"event: snapshot\ndata: " + data + b"\n\n")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), EVENT_INTERVAL_S)
        return response

    async def push(self, request: web.Request) -> web.Response:
        await self._authorise(request, changes_state=True)
        return _json(await self._push(request), status=202)

    async def drain(self, request: web.Request) -> web.Response:
        await self._authorise(request, changes_state=True)
        node_id = request.match_info["node_id"]
        if self._sources.drain_local(node_id):
            return _json({"node_id": node_id, "requested": True, "via": "local"}, status=202)
        if not any(node.node_id == node_id for node in await self._registry.nodes()):
            raise NotFound(f"no live edge node {node_id!r}")
        await self._registry.request_drain(node_id, DRAIN_REQUEST_TTL_S)
        return _json({"node_id": node_id, "requested": True, "via": "registry"}, status=202)

    async def _snapshot(self, rates: Rates) -> dict[str, object]:
        sources = self._sources
        nodes = merge_nodes(await self._registry.nodes(), sources.local_nodes())
        records = None
        if sources.processes is not None:
            records = merge_processes(await sources.processes(), sources.local_processes())
        return snapshot(nodes, sources.counters(), mode=sources.mode, at_s=self._clock_s(),
                        rates=rates, processes=records)

    def _configured(self) -> None:
        if not self._admin_key:
            raise Forbidden("no admin key is configured: the dashboard is off "
                            "(set ZUULPUSH_ADMIN_KEY)")

    async def _session(self, request: web.Request) -> Session | None:
        """The request cookie's session, if it is valid and not revoked."""
        session = read_session(self._admin_key, request.cookies.get(COOKIE), self._clock_s())
        return session if await self._still_valid(session) else None

    async def _still_valid(self, session: Session | None) -> bool:
        """False once a session has expired or been revoked; True for none (a bearer)."""
        if session is None:
            return True
        if session.expires_at_s <= self._clock_s():
            return False
        return not await self._sources.sessions.is_revoked(session.session_id)

    async def _authorise(self, request: web.Request, *,
                         changes_state: bool = False) -> Session | None:
        """The session cookie or the admin key as a bearer token; for a state-changing request
        also the CSRF header (docs/api.md). The session, or None for a bearer."""
        self._configured()
        session = await self._session(request)
        if session is None:
            presented = bearer(request.headers.get("Authorization"))
            if not presented:
                raise AdminKeyMissing("log in, or send 'Authorization: Bearer <admin key>'")
            if not hmac.compare_digest(presented.encode(), self._admin_key.encode()):
                raise AdminKeyRefused("admin key not accepted")
        if changes_state and request.headers.get(CSRF_HEADER) != "1":
            raise CsrfHeaderMissing(f"send the header '{CSRF_HEADER}: 1' with this request")
        return session


def _login_key(body: bytes, content_type: str) -> str:
    """The key of a login body: JSON `{"key": ...}` or a form's `key=...`."""
    if content_type == "application/x-www-form-urlencoded":
        return (parse_qs(body.decode(errors="replace")).get("key") or [""])[0]
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("login body must be JSON: {\"key\": \"<admin key>\"}",
                             field="key") from None
    key = obj.get("key") if isinstance(obj, dict) else None
    if key is not None and not isinstance(key, str):
        raise InvalidRequest("key must be a string", field="key")
    return key or ""


def _json(body: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
