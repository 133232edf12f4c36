"""The API's brute-force brake (`router.api.throttle`) on the app `create_api_app` makes,
on a real loopback socket with the aiohttp client and a clock moved by hand: what counts as a
failure (a wrong key; not a missing one, not the dashboard's CSRF refusal), what is guarded
(the push routes, the dashboard's login and its bearer admin key; not the session cookie, not
the other routes), that the credential is not checked while over, `0` turning it off, and the
counters and metric behind it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from core.tokens import AuthConfig
from registry.memory import MemoryRegistry
from router.api.app import ApiStats, create_api_app
from router.config import ApiConfig
from router.pages.dashboard import COOKIE, session_cookie
from router.stores.memory import MemoryInbox, MemoryQueue
from zuulpush.metrics import Exporter, Metrics

KEY, ADMIN = "the-api-key", "the-admin-key"
AUTH = AuthConfig(api_keys=(KEY,), admin_key=ADMIN, secret="s" * 32)
CONFIG = ApiConfig(api_key_failures_max=3, api_key_failures_window_s=30.0,
                   dashboard_failures_max=2, dashboard_failures_window_s=20.0)
ONE = {"to": {"clients": ["c1"]}, "data": 1}
CSRF = {"X-Zuulpush-Dashboard": "1"}
T0 = 1_700_000_000.0


@dataclass
class Api:
    http: TestClient[Any, Any]
    stats: ApiStats
    clock: list[float]  # seconds

    async def send(self, method: str, path: str, *, key: str | None = None,
                   body: Any = ONE, headers: dict[str, str] | None = None
                   ) -> tuple[int, dict[str, Any], Any]:
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        response = await self.http.request(method, path, json=body, headers=sent)
        return response.status, await response.json(), response.headers

    async def push(self, key: str | None) -> int:
        return (await self.send("POST", "/v1/push", key=key))[0]

    async def login(self, key: str) -> int:
        return (await self.send("POST", "/dashboard/login", body={"key": key}))[0]


async def start(config: ApiConfig) -> Api:
    clock = [T0]
    stats = ApiStats()
    app = create_api_app(config=config, auth=AUTH, queue=MemoryQueue(600.0),
                         registry=MemoryRegistry(), inbox=MemoryInbox(10), stats=stats,
                         clock_ms=lambda: int(clock[0] * 1000))
    http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await http.start_server()
    return Api(http, stats, clock)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    api = await start(CONFIG)
    yield api
    await api.http.close()


async def test_wrong_api_keys_then_429_unchecked_until_one_has_drained(api: Api) -> None:
    assert [await api.push("guess") for _ in range(3)] == [403] * 3
    status, body, headers = await api.send("POST", "/v1/push", key=KEY)
    assert status == 429  # the right key: not looked at while over
    assert body["error"]["code"] == "auth_throttled"
    assert headers["Retry-After"] == "10"  # 30 s / 3 failures
    assert headers["Content-Type"].startswith("application/json")
    api.clock[0] += 9.5
    assert await api.push(KEY) == 429
    api.clock[0] += 0.5
    assert await api.push(KEY) == 202
    assert await api.push("guess") == 403
    assert await api.push("guess") == 429
    assert api.stats.auth_throttled == {"api_key": 3}
    assert api.stats.auth_failures["api_key"] == 4


async def test_right_keys_and_missing_keys_use_none_of_the_budget(api: Api) -> None:
    for _ in range(50):
        assert await api.push(KEY) == 202
        assert await api.push(None) == 401
    assert [await api.push("guess") for _ in range(3)] == [403] * 3
    assert await api.push("guess") == 429


async def test_a_batch_is_guarded_as_a_push(api: Api) -> None:
    for _ in range(3):
        status, _, _ = await api.send("POST", "/v1/push/batch", key="guess",
                                      body={"messages": [ONE]})
        assert status == 403
    assert await api.push(KEY) == 429


async def test_other_routes_are_not_guarded(api: Api) -> None:
    assert [await api.push("guess") for _ in range(3)] == [403] * 3
    status, _, _ = await api.send("GET", "/healthz", body=None)
    assert status == 200
    status, body, _ = await api.send("GET", "/v1/inbox", key="not-a-token", body=None)
    assert status == 401 and body["error"]["code"] == "invalid_token"  # device tokens: JWTs
    assert await api.login(ADMIN) == 200  # another role, another budget


async def test_wrong_logins_then_429_even_for_the_right_key(api: Api) -> None:
    assert [await api.login("guess") for _ in range(2)] == [403, 403]
    status, body, headers = await api.send("POST", "/dashboard/login", body={"key": ADMIN})
    assert status == 429 and body["error"]["code"] == "auth_throttled"
    assert headers["Retry-After"] == "10"
    assert "Set-Cookie" not in headers
    status, _, _ = await api.send("GET", "/dashboard/snapshot", key=ADMIN, body=None)
    assert status == 429  # the admin key as a bearer token is braked with the login
    assert await api.push(KEY) == 202  # the API key's budget is another
    api.clock[0] += 10
    assert await api.login(ADMIN) == 200
    assert api.stats.auth_throttled == {"dashboard": 2}


async def test_wrong_bearer_admin_keys_on_the_dashboard_count_as_failures(api: Api) -> None:
    for _ in range(2):
        status, _, _ = await api.send("GET", "/dashboard/snapshot", key="guess", body=None)
        assert status == 403
    assert await api.login(ADMIN) == 429


async def test_the_session_cookie_is_never_held_back(api: Api) -> None:
    assert [await api.login("guess") for _ in range(2)] == [403, 403]
    cookie = {"Cookie": f"{COOKIE}={session_cookie(ADMIN, int(T0) + 60)}"}
    status, _, _ = await api.send("GET", "/dashboard/snapshot", headers=cookie, body=None)
    assert status == 200


async def test_the_csrf_refusal_is_not_a_failure(api: Api) -> None:
    for _ in range(5):
        status, body, _ = await api.send("POST", "/dashboard/push", key=ADMIN)
        assert status == 403 and body["error"]["code"] == "csrf"
    status, _, _ = await api.send("POST", "/dashboard/push", key=ADMIN, headers=CSRF)
    assert status == 202


async def test_failures_max_0_is_no_brake() -> None:
    api = await start(ApiConfig(api_key_failures_max=0, dashboard_failures_max=0))
    try:
        assert [await api.push("guess") for _ in range(100)] == [403] * 100
        assert [await api.login("guess") for _ in range(100)] == [403] * 100
        assert await api.push(KEY) == 202 and await api.login(ADMIN) == 200
    finally:
        await api.http.close()


async def test_the_metric_counts_throttled_attempts_by_role(api: Api) -> None:
    for _ in range(4):
        await api.push("guess")
        await api.login("guess")
    registry = CollectorRegistry()
    exporter = Exporter(Metrics(registry))
    exporter.watch_api(api.stats)
    exporter.sync()
    value = registry.get_sample_value
    assert value("zuulpush_auth_throttled_total", {"role": "api_key"}) == 1
    assert value("zuulpush_auth_throttled_total", {"role": "dashboard"}) == 2


@pytest.mark.parametrize("field", ["api_key", "dashboard"])
def test_settings_are_checked(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field}_failures_max"):
        ApiConfig(**{f"{field}_failures_max": -1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"{field}_failures_window_s"):
        ApiConfig(**{f"{field}_failures_window_s": 0.0})  # type: ignore[arg-type]
