"""The demo page's routes (`router.pages.demo`) on aiohttp's test client, with the in-memory
queue."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from core.tokens import AuthConfig, TokenVerifier, issue_token
from registry.memory import MemoryRegistry
from router.api.app import create_api_app
from router.config import ApiConfig
from router.pages.demo import (
    DEMO_TOKEN_TTL_S,
    PUSH_INTERVAL_S,
    TOKEN_BURST,
    edge_url_for,
)
from router.stores.memory import MemoryQueue

SECRET = "demo-test-secret-0123456789abcdef0123"
KEY = "demo-api-key"
EDGE = "http://edge.test:8080"

Client = TestClient[web.Request, web.Application]


@dataclass
class Demo:
    http: Client
    queue: MemoryQueue
    clock: list[float]  # seconds; the app's clock_ms reads it


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., object]]:
    opened: list[Client] = []

    async def build(*, demo: bool = True, auth: AuthConfig | None = None,
                    public_edge_url: str = EDGE) -> Demo:
        clock = [time.time()]  # tokens are checked against the wall clock
        queue = MemoryQueue(600.0)
        app = create_api_app(
            config=ApiConfig(demo=demo, public_edge_url=public_edge_url),
            auth=auth or AuthConfig(secret=SECRET, api_keys=(KEY,)), queue=queue,
            registry=MemoryRegistry(), clock_ms=lambda: int(clock[0] * 1000))
        client: Client = TestClient(TestServer(app))
        await client.start_server()
        opened.append(client)
        return Demo(client, queue, clock)

    yield build
    for client in opened:
        await client.close()


async def _token(demo: Demo) -> dict[str, str]:
    response = await demo.http.post("/demo/token")
    assert response.status == 200
    body: dict[str, str] = await response.json()
    return body


async def test_the_page_is_served_and_uses_the_browser_client(make: Callable[..., object]) -> None:
    demo: Demo = await make()  # type: ignore[misc]
    response = await demo.http.get("/demo")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "/static/zuulpush.js" in await response.text()


async def test_a_token_is_a_demo_device_of_its_own(make: Callable[..., object]) -> None:
    demo: Demo = await make()  # type: ignore[misc]
    first, second = await _token(demo), await _token(demo)
    assert first["client_id"] != second["client_id"]
    assert first["client_id"].startswith("demo-")
    assert first["edge_url"] == EDGE
    assert first["expires_in_s"] == DEMO_TOKEN_TTL_S
    identity = TokenVerifier(AuthConfig(secret=SECRET)).verify(first["token"])
    assert (identity.client_id, identity.user_id, identity.device_type) == (
        first["client_id"], "demo-user", "web")


async def test_push_goes_to_the_callers_own_client_only(make: Callable[..., object]) -> None:
    demo: Demo = await make()  # type: ignore[misc]
    session = await _token(demo)
    response = await demo.http.post("/demo/push", data=orjson.dumps({"text": "hi"}),
                                    headers={"Authorization": f"Bearer {session['token']}"})
    assert response.status == 202
    body = await response.json()
    [taken] = await demo.queue.take("test", 10, 0.1)
    message = taken.message
    assert message.id == body["id"]
    assert message.target.clients == (session["client_id"],)
    assert orjson.loads(message.payload)["data"] == {"text": "hi"}


@pytest.mark.parametrize("authorization, status, code", [
    (None, 401, "invalid_token"),
    ("Bearer not.a.token", 401, "invalid_token"),
    ("Bearer " + issue_token(SECRET, client_id="phone", user_id="alice", device_type="ios"),
     403, "forbidden"),
], ids=["no-token", "bad-token", "not-a-demo-user"])
async def test_push_needs_a_demo_token(make: Callable[..., object], authorization: str | None,
                                       status: int, code: str) -> None:
    demo: Demo = await make()  # type: ignore[misc]
    headers = {"Authorization": authorization} if authorization else {}
    response = await demo.http.post("/demo/push", headers=headers)
    assert response.status == status
    assert (await response.json())["error"]["code"] == code
    assert sum((await demo.queue.depth()).values()) == 0


async def test_push_text_is_checked(make: Callable[..., object]) -> None:
    demo: Demo = await make()  # type: ignore[misc]
    session = await _token(demo)
    response = await demo.http.post("/demo/push", data=orjson.dumps({"text": "x" * 201}),
                                    headers={"Authorization": f"Bearer {session['token']}"})
    assert response.status == 400
    assert (await response.json())["error"]["field"] == "text"


async def test_pushes_of_one_client_are_rate_limited(make: Callable[..., object]) -> None:
    demo: Demo = await make()  # type: ignore[misc]
    headers = {"Authorization": f"Bearer {(await _token(demo))['token']}"}
    assert (await demo.http.post("/demo/push", headers=headers)).status == 202
    refused = await demo.http.post("/demo/push", headers=headers)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert (await refused.json())["error"]["code"] == "rate_limited"
    demo.clock[0] += PUSH_INTERVAL_S + 0.01  # the app reads whole milliseconds
    assert (await demo.http.post("/demo/push", headers=headers)).status == 202


async def test_tokens_are_rate_limited(make: Callable[..., object]) -> None:
    demo: Demo = await make()  # type: ignore[misc]
    for _ in range(TOKEN_BURST):
        assert (await demo.http.post("/demo/token")).status == 200
    refused = await demo.http.post("/demo/token")
    assert refused.status == 429 and "Retry-After" in refused.headers
    demo.clock[0] += 1
    assert (await demo.http.post("/demo/token")).status == 200


@pytest.mark.parametrize("auth", [None, AuthConfig(public_key="", api_keys=(KEY,))],
                         ids=["off", "no-secret"])
async def test_without_the_switch_or_a_secret_there_is_no_demo(
    make: Callable[..., object], auth: AuthConfig | None
) -> None:
    demo: Demo = await make(demo=auth is not None, auth=auth)  # type: ignore[misc]
    for method, path in (("GET", "/demo"), ("POST", "/demo/token"), ("POST", "/demo/push")):
        response = await demo.http.request(method, path)
        assert response.status == 404, path
        assert (await response.json())["error"]["code"] == "not_found"


async def test_without_an_edge_url_the_app_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="public_edge_url"):
        create_api_app(config=ApiConfig(demo=True), auth=AuthConfig(secret=SECRET),
                       queue=MemoryQueue(600.0), registry=MemoryRegistry())


@pytest.mark.parametrize("host, visitor, expected", [
    ("127.0.0.1", "localhost", "http://127.0.0.1:8080"),
    ("0.0.0.0", "10.1.2.3", "http://10.1.2.3:8080"),
    ("::", "::1", "http://[::1]:8080"),
])
def test_serves_edge_url_follows_the_visitor_when_the_edge_listens_everywhere(
    host: str, visitor: str, expected: str
) -> None:
    from aiohttp.test_utils import make_mocked_request

    request = make_mocked_request(
        "GET", "/demo", headers={"Host": f"[{visitor}]:8081" if ":" in visitor
                                 else f"{visitor}:8081"})
    assert edge_url_for(host, 8080, tls=False)(request) == expected
