"""`router.pages.dashboard` on the API app: login and session cookie, admin key, CSRF header, push
and drain, the live stream; on a real loopback socket with the aiohttp client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from core.tokens import AuthConfig
from registry.base import NodeInfo, NodeState, Registration
from registry.memory import MemoryRegistry
from router.api.app import ApiStats, create_api_app
from router.config import ApiConfig
from router.pages.dashboard import COOKIE, SESSION_S, DashboardSources
from router.pages.sessions import session_cookie, valid_session
from router.stores.memory import MemoryQueue

NOW_S = 1_700_000_000.0
ADMIN = "the-admin-key"
AUTH = AuthConfig(api_keys=("api-key",), admin_key=ADMIN)
CSRF = {"X-Zuulpush-Dashboard": "1"}
BEARER = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class Dash:
    http: TestClient[Any, Any]
    queue: MemoryQueue
    registry: MemoryRegistry
    stats: ApiStats
    drained: list[str] = field(default_factory=list)

    def cookie(self, expires_at: float = NOW_S + 60) -> dict[str, str]:
        return {"Cookie": f"{COOKIE}={session_cookie(ADMIN, int(expires_at))}"}


async def start(auth: AuthConfig, sources: DashboardSources | None = None) -> Dash:
    registry = MemoryRegistry(clock=lambda: 0.0)
    await registry.register([Registration("phone-1", "alice", "phone", "n1", 1)], 60)
    await registry.heartbeat_node(NodeInfo("n1", "a:1", "eu", NodeState.ACTIVE, 1,
                                           (("phone", 1),), (("ws", 1),),
                                           (("delivered", 7), ("shed", 2))), 60)
    queue = MemoryQueue(600.0, clock=lambda: 0.0)
    stats = ApiStats()
    app = create_api_app(config=ApiConfig(), auth=auth, queue=queue, registry=registry,
                         stats=stats, dashboard=sources, clock_ms=lambda: int(NOW_S * 1000))
    dash = Dash(TestClient(TestServer(app, host="127.0.0.1", port=0)), queue, registry, stats)
    await dash.http.start_server()
    return dash


@pytest.fixture
async def dash() -> AsyncIterator[Dash]:
    drained: list[str] = []

    def drain_local(node_id: str) -> bool:
        if node_id != "local":
            return False
        drained.append(node_id)
        return True

    sources = DashboardSources(mode="serve", local_nodes=lambda: [
        NodeInfo("local", "l:1", "eu", NodeState.ACTIVE, 2, (), (("sse", 2),))],
        counters=lambda: {"expired": 5}, drain_local=drain_local)
    d = await start(AUTH, sources)
    d.drained = drained
    yield d
    await d.http.close()
    await d.queue.close()


def test_a_session_cookie_is_an_hmac_of_the_key_and_its_expiry() -> None:
    cookie = session_cookie(ADMIN, 2000)
    assert valid_session(ADMIN, cookie, 1999.0)
    assert not valid_session(ADMIN, cookie, 2000.0)  # expired
    assert not valid_session("another-key", cookie, 1000.0)  # the key changed
    assert not valid_session(ADMIN, cookie.replace("2000.", "9999."), 1000.0)  # longer expiry
    assert not valid_session("", cookie, 1000.0)
    for junk in ("", "x", ".", "2000", "-1.ab", "2000.zz"):
        assert not valid_session(ADMIN, junk, 1000.0)


async def test_the_page_is_the_login_form_until_logged_in(dash: Dash) -> None:
    response = await dash.http.get("/")
    assert response.status == 200
    assert 'id="login"' in await response.text()
    response = await dash.http.get("/", headers=dash.cookie())
    assert 'id="nodes"' in await response.text()
    expired = await dash.http.get("/", headers=dash.cookie(expires_at=NOW_S - 1))
    assert 'id="login"' in await expired.text()


async def test_login_sets_an_httponly_strict_cookie_that_authorises(dash: Dash) -> None:
    response = await dash.http.post("/dashboard/login", json={"key": ADMIN})
    assert response.status == 200
    assert await response.json() == {"ok": True, "expires_at": int(NOW_S) + SESSION_S}
    set_cookie = response.headers["Set-Cookie"]
    assert set_cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert "Path=/" in set_cookie and ADMIN not in set_cookie
    value = response.cookies[COOKIE].value
    snap = await dash.http.get("/dashboard/snapshot", headers={"Cookie": f"{COOKIE}={value}"})
    assert snap.status == 200


async def test_login_by_form_too(dash: Dash) -> None:
    response = await dash.http.post("/dashboard/login", data={"key": ADMIN})
    assert response.status == 200


async def test_a_wrong_key_is_403_and_counted(dash: Dash) -> None:
    response = await dash.http.post("/dashboard/login", json={"key": "nope"})
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "forbidden"
    assert "Set-Cookie" not in response.headers
    missing = await dash.http.post("/dashboard/login", json={})
    assert missing.status == 401
    bad = await dash.http.post("/dashboard/login", data=b"{", headers={
        "Content-Type": "application/json"})
    assert (bad.status, (await bad.json())["error"]["field"]) == (400, "key")
    wrong_bearer = await dash.http.get("/dashboard/snapshot",
                                       headers={"Authorization": "Bearer nope"})
    assert wrong_bearer.status == 403
    assert dash.stats.auth_failures["admin_key"] == 3
    assert dash.stats.auth_failures["api_key"] == 0


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/dashboard/snapshot"), ("GET", "/dashboard/events"),
    ("POST", "/dashboard/push"), ("POST", "/dashboard/nodes/n1/drain"),
    ("POST", "/dashboard/logout")])
async def test_every_route_needs_the_cookie_or_the_admin_key(dash: Dash, method: str,
                                                             path: str) -> None:
    response = await dash.http.request(method, path, headers=CSRF)
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"
    api_key = await dash.http.request(method, path,
                                      headers={**CSRF, "Authorization": "Bearer api-key"})
    assert api_key.status == 403  # an API key is not the admin key


@pytest.mark.parametrize("path", ["/dashboard/push", "/dashboard/nodes/n1/drain",
                                  "/dashboard/logout"])
async def test_state_changing_posts_need_the_csrf_header(dash: Dash, path: str) -> None:
    response = await dash.http.post(path, json={}, headers=dash.cookie())
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "csrf"
    assert dash.stats.auth_failures["admin_key"] == 0


async def test_without_an_admin_key_the_dashboard_is_off() -> None:
    d = await start(AuthConfig(api_keys=("api-key",)))
    try:
        for method, path in [("GET", "/"), ("POST", "/dashboard/login"),
                             ("GET", "/dashboard/snapshot")]:
            response = await d.http.request(method, path, json={"key": ""},
                                            headers={"Authorization": "Bearer "})
            assert response.status == 403, path
            assert "admin key" in (await response.json())["error"]["message"]
    finally:
        await d.http.close()
        await d.queue.close()


async def test_the_snapshot_merges_the_registry_and_local_nodes(dash: Dash) -> None:
    response = await dash.http.get("/dashboard/snapshot", headers=BEARER)
    snap = await response.json()
    assert snap["mode"] == "serve"
    assert [n["node_id"] for n in snap["nodes"]] == ["local", "n1"]
    assert snap["connections"]["by_transport"] == {"sse": 2, "ws": 1}
    assert snap["counters"]["delivered"]["total"] == 7
    assert snap["counters"]["shed"]["total"] == 2
    assert snap["counters"]["expired"] == {"total": 5, "per_s": 0.0, "scope": "process"}


async def test_the_fleet_default_counts_the_apis_own_pushes() -> None:
    d = await start(AUTH)
    try:
        for _ in range(2):
            await d.http.post("/dashboard/push", headers={**BEARER, **CSRF}, json={
                "to": {"clients": ["phone-1"]}, "data": 1, "dedup_key": "k"})
        snap = await (await d.http.get("/dashboard/snapshot", headers=BEARER)).json()
        assert snap["mode"] == "fleet"
        assert snap["counters"]["deduped"] == {"total": 1, "per_s": 0.0, "scope": "process"}
        assert snap["counters"]["enqueued"]["total"] == 1
        assert "expired" not in snap["counters"]
    finally:
        await d.http.close()
        await d.queue.close()


async def test_the_event_stream_sends_snapshots(dash: Dash) -> None:
    response = await dash.http.get("/dashboard/events", headers=dash.cookie())
    assert response.headers["Content-Type"] == "text/event-stream"
    assert await response.content.readline() == b"retry: 2000\n"
    await response.content.readline()
    assert await response.content.readline() == b"event: snapshot\n"
    data = await response.content.readline()
    assert orjson.loads(data.removeprefix(b"data: "))["connections"]["total"] == 3
    response.close()


async def test_push_is_validated_and_enqueued_as_by_the_api(dash: Dash) -> None:
    headers = {**dash.cookie(), **CSRF}
    response = await dash.http.post("/dashboard/push", headers=headers, json={
        "to": {"users": ["alice"]}, "topic": "t", "data": {"text": "hi"}})
    assert response.status == 202
    answer = await response.json()
    assert answer["targets"] == 1
    [taken] = await dash.queue.take("test", 10, 0)
    assert taken.message.id == answer["id"]
    assert taken.message.target.clients == ("phone-1",)
    bad = await dash.http.post("/dashboard/push", headers=headers,
                               json={"to": {"clients": ["c"]}, "data": 1, "ttl": "soon"})
    assert bad.status == 400
    assert (await bad.json())["error"]["field"] == "ttl"
    nobody = await dash.http.post("/dashboard/push", headers=headers, json={"data": 1})
    assert (await nobody.json())["error"]["field"] == "to"


async def test_a_device_type_alone_is_refused_saying_to_add_broadcast(dash: Dash) -> None:
    headers = {**dash.cookie(), **CSRF}
    alone = await dash.http.post("/dashboard/push", headers=headers,
                                 json={"to": {"device_types": ["tv"]}, "data": 1})
    assert alone.status == 400
    error = (await alone.json())["error"]
    assert error["field"] == "to" and '"broadcast": true' in error["message"]
    assert await dash.queue.take("test", 10, 0) == []
    chosen = await dash.http.post("/dashboard/push", headers=headers, json={
        "to": {"device_types": ["tv"], "broadcast": True}, "data": 1})
    assert chosen.status == 202
    [taken] = await dash.queue.take("test", 10, 0)
    assert taken.message.target.broadcast
    assert taken.message.target.device_types == frozenset({"tv"})


async def test_drain_a_local_node_or_ask_through_the_registry(dash: Dash) -> None:
    headers = {**dash.cookie(), **CSRF}
    local = await dash.http.post("/dashboard/nodes/local/drain", headers=headers)
    assert (local.status, (await local.json())["via"]) == (202, "local")
    assert dash.drained == ["local"]
    remote = await dash.http.post("/dashboard/nodes/n1/drain", headers=headers)
    assert (remote.status, (await remote.json())["via"]) == (202, "registry")
    assert await dash.registry.drain_pending("n1")
    missing = await dash.http.post("/dashboard/nodes/nope/drain", headers=headers)
    assert missing.status == 404
    assert not await dash.registry.drain_pending("nope")


async def test_logout_clears_the_cookie(dash: Dash) -> None:
    response = await dash.http.post("/dashboard/logout", headers={**dash.cookie(), **CSRF})
    assert response.status == 200
    assert f"{COOKIE}=\"\"" in response.headers["Set-Cookie"]


async def test_logout_revokes_that_session_and_no_other(dash: Dash) -> None:
    mine, other = dash.cookie(), dash.cookie()
    response = await dash.http.post("/dashboard/logout", headers={**mine, **CSRF})
    assert response.status == 200
    refused = await dash.http.get("/dashboard/snapshot", headers=mine)
    assert refused.status == 401
    assert (await refused.json())["error"]["code"] == "unauthorized"
    assert 'id="login"' in await (await dash.http.get("/", headers=mine)).text()
    again = await dash.http.post("/dashboard/logout", headers={**mine, **CSRF})
    assert again.status == 401  # that session is over
    assert (await dash.http.get("/dashboard/snapshot", headers=other)).status == 200
    assert (await dash.http.get("/dashboard/snapshot", headers=BEARER)).status == 200


async def test_an_event_stream_ends_once_its_session_is_logged_out(dash: Dash) -> None:
    cookie = dash.cookie()
    response = await dash.http.get("/dashboard/events", headers=cookie)
    assert response.status == 200
    first = await asyncio.wait_for(response.content.readuntil(b"event: snapshot\n"), 5)
    assert first.endswith(b"event: snapshot\n")
    await dash.http.post("/dashboard/logout", headers={**cookie, **CSRF})
    rest = await asyncio.wait_for(response.content.read(), 5)  # the stream ends
    assert rest.count(b"event: snapshot") <= 1
    response.close()
