"""`data` nested past the documented limit is a 400 naming it, not a 500 and a traceback: on
`POST /v1/push`, `POST /v1/push/batch` and the dashboard's `POST /dashboard/push`, of a real
`zuulpush serve` and of a real fleet API (`zuulpush api` on a real redis-server), with aiohttp.

orjson.loads reads 1,024 levels; orjson.dumps (encoding the device payload) gave up from about
254, so a body between the two used to be answered 500 `internal_error`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from router.validation import MAX_DATA_DEPTH
from tests.support.redis_servers import RedisServer

from .servers import ADMIN_KEY, API, ROOT, ServerProcess, start_server, stop_all

pytestmark = pytest.mark.timeout(60)

TIMEOUT = aiohttp.ClientTimeout(total=10)
ROUTES = {
    "push": ("/v1/push", "api_key", ""),
    "batch": ("/v1/push/batch", "api_key", "messages[1]."),
    "dashboard": ("/dashboard/push", "admin_key", ""),
}


def nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def body(route: str, data: bytes) -> bytes:
    push = b'{"to": {"clients": ["deep-data-device"]}, "data": ' + data + b"}"
    if route == "batch":
        return b'{"messages": [' + orjson.dumps({"to": {"clients": ["x"]}, "data": 1}) \
            + b"," + push + b"]}"
    return push


@pytest.fixture(scope="module")
def fleet_api(tmp_path_factory: pytest.TempPathFactory,
              redis_server: RedisServer) -> Iterator[ServerProcess]:
    """`zuulpush api` of a fleet, on the session's redis-server."""
    api = start_server(tmp_path_factory.mktemp("fleet-api"),
                       {"ZUULPUSH_REDIS_URL": redis_server.url,
                        "ZUULPUSH_ROUTER_PREFIX": "deepdata"}, command=API)
    yield api
    stop_all([api])


@pytest.fixture(params=["serve", "fleet"])
def target(request: pytest.FixtureRequest) -> ServerProcess:
    name = "server" if request.param == "serve" else "fleet_api"
    process: ServerProcess = request.getfixturevalue(name)
    return process


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


async def post(http: aiohttp.ClientSession, server: ServerProcess, route: str,
               data: bytes) -> tuple[int, str, Any]:
    path, credential, _ = ROUTES[route]
    key = server.api_key if credential == "api_key" else ADMIN_KEY
    headers = {"Authorization": f"Bearer {key}", "X-Zuulpush-Dashboard": "1"}
    async with http.post(server.api + path, data=body(route, data), headers=headers) as response:
        return response.status, response.content_type, orjson.loads(await response.read())


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("levels", [MAX_DATA_DEPTH + 1, 254, 300, 1000])
async def test_data_nested_too_deep_is_400_naming_data(
        http: aiohttp.ClientSession, target: ServerProcess, route: str, levels: int) -> None:
    status, content_type, answer = await post(http, target, route, nested(levels))
    assert (status, content_type) == (400, "application/json"), answer
    prefix = ROUTES[route][2]
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["field"] == prefix + "data"
    assert str(MAX_DATA_DEPTH) in answer["error"]["message"]
    assert "Traceback" not in target.stderr_text()


@pytest.mark.parametrize("route", list(ROUTES))
async def test_data_nested_to_the_limit_is_accepted(
        http: aiohttp.ClientSession, target: ServerProcess, route: str) -> None:
    status, _, answer = await post(http, target, route, nested(MAX_DATA_DEPTH))
    assert status == 202, answer



def test_send_command_hands_deep_data_to_the_api_as_given(server: ServerProcess) -> None:
    """`zuulpush send --data` passes the JSON through unencoded again (it used to die in
    orjson.dumps with a traceback): the API's 400 naming `data` is what it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZUULPUSH_")}
    done = subprocess.run(
        [sys.executable, "-m", "zuulpush", "send", "--api", server.api, "--api-key",
         server.api_key, "--client", "c", "--data", nested(300).decode()],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        check=False)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert orjson.loads(done.stderr)["error"]["field"] == "data"
