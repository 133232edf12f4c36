"""Logging out of the dashboard revokes the session: a copy of the cookie taken before the logout
is refused afterwards, as a bad cookie is (401 on the dashboard's routes, the login page at `/`),
by the `zuulpush serve` process that issued it and, in a fleet, by every `zuulpush api` process
sharing the region's Redis. Real processes, a real redis-server, aiohttp as the browser (the
cookie sent by hand, so that the client's jar cannot forget it on logout)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support.redis_servers import RedisServer

from .servers import ADMIN_KEY, API, ServerProcess, start_server, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

COOKIE = "zuulpush_dashboard"
CSRF = {"X-Zuulpush-Dashboard": "1"}
TIMEOUT = aiohttp.ClientTimeout(total=10)


async def log_in(http: aiohttp.ClientSession, api: str) -> str:
    """The session cookie's value from a login with the admin key."""
    async with http.post(f"{api}/dashboard/login", json={"key": ADMIN_KEY}) as response:
        assert response.status == 200, await response.text()
        return response.cookies[COOKIE].value


async def snapshot_status(http: aiohttp.ClientSession, api: str, cookie: str) -> int:
    async with http.get(f"{api}/dashboard/snapshot",
                        headers={"Cookie": f"{COOKIE}={cookie}"}) as response:
        return response.status


async def page_title(http: aiohttp.ClientSession, api: str, cookie: str) -> str:
    async with http.get(f"{api}/", headers={"Cookie": f"{COOKIE}={cookie}"}) as response:
        assert response.status == 200
        text = await response.text()
    return text.split("<title>", 1)[1].split("</title>", 1)[0]


async def log_out(http: aiohttp.ClientSession, api: str, cookie: str) -> None:
    async with http.post(f"{api}/dashboard/logout",
                         headers={"Cookie": f"{COOKIE}={cookie}", **CSRF}) as response:
        assert response.status == 200, await response.text()


def session() -> aiohttp.ClientSession:
    # An unsafe jar would keep the cookie; a dummy one keeps nothing: every cookie is explicit.
    return aiohttp.ClientSession(timeout=TIMEOUT, cookie_jar=aiohttp.DummyCookieJar())


async def test_after_logout_the_old_cookie_is_refused_by_the_serve_process(
        server: ServerProcess) -> None:
    async with session() as http:
        cookie = await log_in(http, server.api)
        other = await log_in(http, server.api)  # a second session, e.g. another browser
        assert cookie != other
        assert await snapshot_status(http, server.api, cookie) == 200
        assert await page_title(http, server.api, cookie) == "zuulpush · dashboard"
        await log_out(http, server.api, cookie)
        assert await snapshot_status(http, server.api, cookie) == 401
        assert await page_title(http, server.api, cookie) == "zuulpush · log in"
        # Only that session ended: the other one goes on.
        assert await snapshot_status(http, server.api, other) == 200


async def test_in_a_fleet_a_logout_on_one_api_revokes_the_session_on_every_api(
        redis_factory: Callable[..., RedisServer], tmp_path: Path) -> None:
    redis = redis_factory()
    env = {"ZUULPUSH_REDIS_URL": redis.url}
    apis = [start_server(tmp_path, env, command=API), start_server(tmp_path, env, command=API)]
    first, second = (api.api for api in apis)
    try:
        async with session() as http:
            cookie = await log_in(http, first)
            assert await snapshot_status(http, second, cookie) == 200  # valid fleet-wide
            await log_out(http, first, cookie)
            assert await snapshot_status(http, second, cookie) == 401
            assert await page_title(http, second, cookie) == "zuulpush · log in"
            assert await snapshot_status(http, first, cookie) == 401
            # A logout on the second API reaches the first as well.
            again = await log_in(http, first)
            await log_out(http, second, again)
            assert await snapshot_status(http, first, again) == 401
    finally:
        stop_all(apis)
