"""Cross-site WebSocket hijacking, on a real `zuulpush serve` with real clients (the websockets
library, aiohttp): a browser sends the `zuulpush_token` cookie with an upgrade or an
`EventSource` that a page of ANY site opens, so with the default config (no `allowed_origins`)
a cookie-authenticated request from another origin is refused 403 `origin_not_allowed` naming
it; without an `Origin` (not a browser) or from the edge's own origin it passes, and a token in
the URL from any origin passes as before. With an allow list, a listed origin's cookie passes."""

from __future__ import annotations

import aiohttp
import pytest
from websockets.exceptions import InvalidStatus

from .clients import WAIT_S, host_port, push_api, ws_connect, ws_recv_json, ws_url
from .conftest import ServeFactory
from .servers import ServerProcess
from .test_metrics import get, scrape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EVIL = "https://evil.example.net"
APP = "https://app.example.com"


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"theme=dark; zuulpush_token={token}"}


def own_origin(server: ServerProcess) -> str:
    host, port = host_port(server.edge)
    return f"http://{host}:{port}"


async def refused_upgrade(url: str, **kwargs: object) -> tuple[int, bytes]:
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(url, **kwargs):
            pass
    return refused.value.response.status_code, bytes(refused.value.response.body or b"")


async def test_a_cookie_upgrade_from_another_origin_is_403_by_default(
        serve_factory: ServeFactory) -> None:
    server = serve_factory()
    token = server.token("hijack-1")
    status, body = await refused_upgrade(ws_url(server.edge), origin=EVIL,
                                         additional_headers=cookie(token))
    assert status == 403
    assert b"origin_not_allowed" in body and EVIL.encode() in body and b"zuulpush_token" in body
    page = await scrape(server.edge)
    assert get(page, "zuulpush_edge_origin_refused_total") == 1
    assert get(page, "zuulpush_edge_connects_total") == 0


@pytest.mark.parametrize("page", [None, "own"], ids=["no-origin", "edge's-own-origin"])
async def test_a_cookie_upgrade_without_an_origin_or_from_the_edges_own_connects(
        server: ServerProcess, page: str | None) -> None:
    origin = own_origin(server) if page == "own" else None
    client = f"cookie-ok-{page}"
    async with ws_connect(ws_url(server.edge), origin=origin,
                          additional_headers=cookie(server.token(client))) as ws:
        assert ws.response is not None and ws.response.status_code == 101
        async with push_api(server.api, server.api_key) as api:
            sent = await api.send("hello", clients=[client])
        assert (await ws_recv_json(ws))["id"] == sent


async def test_a_token_in_the_url_from_another_origin_connects(server: ServerProcess) -> None:
    url = ws_url(server.edge, token=server.token("url-token-1"))
    async with ws_connect(url, origin=EVIL) as ws:
        assert ws.response is not None and ws.response.status_code == 101


async def test_sse_with_the_cookie_from_another_origin_is_403(server: ServerProcess) -> None:
    token = server.token("sse-hijack-1")
    timeout = aiohttp.ClientTimeout(total=WAIT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        headers = {**cookie(token), "Accept": "text/event-stream", "Origin": EVIL}
        async with http.get(server.edge + "/sse", headers=headers) as response:
            assert response.status == 403
            body = await response.json()
        assert body["error"]["code"] == "origin_not_allowed" and EVIL in body["error"]["message"]
        del headers["Origin"]  # the same request from a non-browser client: served
        async with http.get(server.edge + "/sse", headers=headers) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"
            assert (await response.content.readline()).startswith(b"retry:")


async def test_with_an_allow_list_a_listed_origins_cookie_connects(
        serve_factory: ServeFactory) -> None:
    server = serve_factory(ZUULPUSH_ALLOWED_ORIGINS=APP)
    headers = cookie(server.token("listed-1"))
    async with ws_connect(ws_url(server.edge), origin=APP,
                          additional_headers=headers) as ws:
        assert ws.response is not None and ws.response.status_code == 101
    status, body = await refused_upgrade(ws_url(server.edge), origin=EVIL,
                                         additional_headers=headers)
    assert status == 403 and b"origin_not_allowed" in body
