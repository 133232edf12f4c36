"""The brute-force brake on a real `zuulpush serve` (API and edge in one process), with real
aiohttp clients from two loopback source addresses: after `*_failures_max` wrong keys a source
is answered 429 `auth_throttled` with `Retry-After` (a JSON body, the right key refused too,
unchecked), another address with the right key still gets in, and once `Retry-After` has
passed the first source is let through again. `GET /metrics` counts the 429s by role.

The limits here: 3 failures, drained at 3 per 3 s, so `Retry-After` is 1 s."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from .conftest import ServeFactory
from .servers import ServerProcess
from .test_metrics import get, scrape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LIMITS = {f"ZUULPUSH_{role}_FAILURES_{what}": value
          for role in ("API_KEY", "DASHBOARD", "EDGE_ADMIN")
          for what, value in (("MAX", "3"), ("WINDOW_S", "3"))}
ATTACKER, OPERATOR = "127.0.0.1", "127.0.0.2"
PUSH = {"to": {"clients": ["throttle-1"]}, "data": "hi"}
TIMEOUT = aiohttp.ClientTimeout(total=5)


@contextlib.asynccontextmanager
async def client_from(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session whose connections come from `address` (any of 127.0.0.0/8)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        yield session


async def call(session: aiohttp.ClientSession, method: str, url: str, *, key: str | None = None,
               body: Any = None, headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers and JSON body (every answer here is JSON)."""
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    data = None if body is None else orjson.dumps(body)
    async with session.request(method, url, data=data, headers=sent) as response:
        assert response.content_type == "application/json", response.content_type
        return response.status, dict(response.headers), orjson.loads(await response.read())


def assert_throttled(status: int, headers: dict[str, str], body: dict[str, Any]) -> int:
    """A 429 of the brake; its Retry-After in seconds."""
    assert status == 429, (status, body)
    assert body["error"]["code"] == "auth_throttled", body
    assert "too many failed authentications" in body["error"]["message"]
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= 3
    return retry_after


@pytest.fixture
def server(serve_factory: ServeFactory) -> ServerProcess:
    return serve_factory(**LIMITS)


async def test_wrong_api_keys_are_throttled_per_source_address(server: ServerProcess) -> None:
    push, batch = server.api + "/v1/push", server.api + "/v1/push/batch"
    async with client_from(ATTACKER) as attacker, client_from(OPERATOR) as operator:
        for url in (push, batch, push):  # both push routes count
            status, _, body = await call(attacker, "POST", url, key="guess", body=PUSH)
            assert status == 403 and body["error"]["code"] == "forbidden"
        retry_after = assert_throttled(*await call(attacker, "POST", push, key="guess",
                                                   body=PUSH))
        # Over its limit, the source's right key is not even looked at.
        assert_throttled(*await call(attacker, "POST", push, key=server.api_key, body=PUSH))
        assert_throttled(*await call(attacker, "POST", batch, key=server.api_key,
                                     body={"messages": [PUSH]}))
        status, _, body = await call(operator, "POST", push, key=server.api_key, body=PUSH)
        assert status == 202, body  # another address is not held back
        # Unguarded routes are not held back either.
        status, _, body = await call(attacker, "GET", server.api + "/healthz")
        assert status == 200, body

        await asyncio.sleep(retry_after)  # one failure has drained by then
        status, _, body = await call(attacker, "POST", push, key=server.api_key, body=PUSH)
        assert status == 202, body
    page = await scrape(server.api)
    assert get(page, "zuulpush_auth_throttled_total", role="api_key") == 3
    assert get(page, "zuulpush_auth_failures_total", credential="api_key") == 3


async def test_wrong_dashboard_logins_are_throttled_per_source_address(
        server: ServerProcess) -> None:
    login, snapshot = server.api + "/dashboard/login", server.api + "/dashboard/snapshot"
    async with client_from(ATTACKER) as attacker, client_from(OPERATOR) as operator:
        for _ in range(2):
            status, _, body = await call(attacker, "POST", login, body={"key": "guess"})
            assert status == 403, body
        status, _, _ = await call(attacker, "GET", snapshot, key="guess")  # a bearer guess
        assert status == 403
        retry_after = assert_throttled(*await call(attacker, "POST", login,
                                                   body={"key": server.admin_key}))
        assert_throttled(*await call(attacker, "GET", snapshot, key=server.admin_key))

        async with operator.post(login, json={"key": server.admin_key}) as response:
            assert response.status == 200, await response.text()
            cookie = response.headers["Set-Cookie"].split(";")[0]
        # The session cookie is not a guess: it is never held back, even from this source.
        status, _, body = await call(attacker, "GET", snapshot, headers={"Cookie": cookie})
        assert status == 200, body

        await asyncio.sleep(retry_after)
        status, _, body = await call(attacker, "POST", login, body={"key": server.admin_key})
        assert status == 200 and body["ok"] is True, body
    page = await scrape(server.api)
    assert get(page, "zuulpush_auth_throttled_total", role="dashboard") == 2


async def test_wrong_edge_admin_keys_are_throttled_per_source_address(
        server: ServerProcess) -> None:
    status_url = server.edge + "/admin/status"
    async with client_from(ATTACKER) as attacker, client_from(OPERATOR) as operator:
        for url in (status_url, server.edge + "/admin/clients/x", status_url):
            status, _, body = await call(attacker, "GET", url, key="guess")
            assert status == 403 and body["error"]["code"] == "forbidden", body
        retry_after = assert_throttled(*await call(attacker, "GET", status_url, key="guess"))
        assert_throttled(*await call(attacker, "POST", server.edge + "/admin/drain",
                                     key=server.admin_key))  # refused, not drained
        status, _, body = await call(attacker, "GET", server.edge + "/healthz")
        assert status == 200 and body["status"] == "ok", body  # still active

        status, _, body = await call(operator, "GET", status_url, key=server.admin_key)
        assert status == 200 and body["auth_throttled"] == 2, body

        await asyncio.sleep(retry_after)
        status, _, body = await call(attacker, "GET", status_url, key=server.admin_key)
        assert status == 200 and body["state"] == "active", body
    page = await scrape(server.edge)
    assert get(page, "zuulpush_auth_throttled_total", role="edge_admin") == 2
    assert get(page, "zuulpush_edge_rejected_total", status="429") == 2
