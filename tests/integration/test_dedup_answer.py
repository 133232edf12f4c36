"""A repeat of a dedup key is answered with the ORIGINAL message's id (`"duplicate": true`), so a
backend can match the two: on `POST /v1/push`, `POST /v1/push/batch` and the dashboard's
`POST /dashboard/push`, of a real `zuulpush serve` and of a fleet's `zuulpush api` processes on a
real redis-server (a repeat sent to another API process of the fleet names the same original).
The device receives the original, once."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.redis_servers import RedisServer

from .clients import ws_connect, ws_recv_json, ws_url
from .servers import ADMIN_KEY, API, ServerProcess, start_server, stop_all

pytestmark = pytest.mark.timeout(60)

TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture(scope="module")
def fleet_apis(tmp_path_factory: pytest.TempPathFactory,
               redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    """Two `zuulpush api` processes of one fleet, on the session's redis-server."""
    env = {"ZUULPUSH_REDIS_URL": redis_server.url, "ZUULPUSH_ROUTER_PREFIX": "dedupanswer"}
    directory = tmp_path_factory.mktemp("fleet-apis")
    apis = [start_server(directory, env, command=API) for _ in range(2)]
    yield apis
    stop_all(apis)


@pytest.fixture(params=["serve", "fleet"])
def apis(request: pytest.FixtureRequest) -> list[ServerProcess]:
    if request.param == "serve":
        server: ServerProcess = request.getfixturevalue("server")
        return [server, server]
    fleet: list[ServerProcess] = request.getfixturevalue("fleet_apis")
    return fleet


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


async def post(http: aiohttp.ClientSession, api: ServerProcess, path: str,
               body: Any) -> dict[str, Any]:
    key = ADMIN_KEY if path.startswith("/dashboard") else api.api_key
    headers = {"Authorization": f"Bearer {key}", "X-Zuulpush-Dashboard": "1"}
    async with http.post(api.api + path, data=orjson.dumps(body), headers=headers) as response:
        answer: dict[str, Any] = orjson.loads(await response.read())
        assert response.status == 202, answer
        return answer


def unique(name: str) -> str:
    return f"{name}-{os.urandom(4).hex()}"


@pytest.mark.parametrize("first_path", ["/v1/push", "/dashboard/push"])
async def test_every_repeat_names_the_original_on_every_route(
        http: aiohttp.ClientSession, apis: list[ServerProcess], first_path: str) -> None:
    key, client = unique("order"), unique("dedup-device")
    push = {"to": {"clients": [client]}, "data": {"n": 1}, "dedup_key": key}
    first = await post(http, apis[0], first_path, push)
    assert "duplicate" not in first and first["targets"] == 1
    original = first["id"]
    for api in apis:  # the same process, and another of the fleet
        for path in ("/v1/push", "/dashboard/push"):
            assert await post(http, api, path, push) == {
                "id": original, "targets": 0, "duplicate": True}
        batch = await post(http, api, "/v1/push/batch", {"messages": [
            {**push, "data": {"n": 2}}, {"to": {"clients": [client]}, "data": 3}]})
        assert batch["results"][0] == {"id": original, "targets": 0, "duplicate": True}
        assert "duplicate" not in batch["results"][1]


async def test_a_repeat_within_one_batch_names_the_earlier_message(
        http: aiohttp.ClientSession, apis: list[ServerProcess]) -> None:
    key, client = unique("batch"), unique("dedup-device")
    push = {"to": {"clients": [client]}, "data": 1, "dedup_key": key}
    results = (await post(http, apis[0], "/v1/push/batch",
                          {"messages": [push, push, push]}))["results"]
    assert "duplicate" not in results[0]
    assert results[1:] == [{"id": results[0]["id"], "targets": 0, "duplicate": True}] * 2


async def test_the_device_gets_the_original_once(http: aiohttp.ClientSession,
                                                 server: ServerProcess) -> None:
    key, client = unique("once"), unique("dedup-device")
    push = {"to": {"clients": [client]}, "data": "hello", "dedup_key": key}
    async with ws_connect(ws_url(server.edge, token=server.token(client))) as ws:
        original = (await post(http, server, "/v1/push", push))["id"]
        repeat = await post(http, server, "/v1/push", {**push, "data": "again"})
        assert repeat["id"] == original
        got = await ws_recv_json(ws)
        assert (got["id"], got["data"]) == (original, "hello")
