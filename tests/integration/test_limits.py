"""Abuse limits on a real `zuulpush serve`, with real clients: a browser Origin not on the allow
list is refused 403 before any upgrade (websockets' `origin=`), an allowed one connects; an API
key over its push rate gets 429 with `Retry-After` while another key still gets 202; and
`GET /metrics` counts both, labelled by the key's position, never the key."""

from __future__ import annotations

import aiohttp
import pytest
from websockets.exceptions import InvalidStatus

from .clients import ws_connect, ws_recv_json, ws_url
from .conftest import ServeFactory
from .servers import API_KEY
from .test_metrics import get, scrape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

APP = "https://app.example.com"
OTHER_KEY = "integration-second-api-key"


async def test_origin_allow_list_and_api_key_rate_on_a_real_server(
        serve_factory: ServeFactory) -> None:
    server = serve_factory(ZUULPUSH_ALLOWED_ORIGINS=APP, ZUULPUSH_API_KEYS=f"{API_KEY},{OTHER_KEY}",
                           ZUULPUSH_API_KEY_RATE_PER_S="0.1", ZUULPUSH_MAX_BATCH="3",
                           ZUULPUSH_API_KEY_BURST="3")
    url = ws_url(server.edge, token=server.token("limits-1"))

    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(url, origin="https://evil.example.net"):
            pass
    assert refused.value.response.status_code == 403
    assert b"origin_not_allowed" in refused.value.response.body

    async with ws_connect(url, origin=APP) as ws, aiohttp.ClientSession() as http:
        async def push(key: str, body: dict[str, object],
                       path: str = "/v1/push") -> aiohttp.ClientResponse:
            async with http.post(server.api + path, json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as response:
                await response.read()
                return response

        one = {"to": {"clients": ["limits-1"]}, "data": "hi"}
        batch = await push(API_KEY, {"messages": [one, one]}, "/v1/push/batch")
        assert batch.status == 202  # two of the key's three tokens
        assert (await push(API_KEY, one)).status == 202
        over = await push(API_KEY, one)
        assert over.status == 429
        assert (await over.json())["error"]["code"] == "rate_limited"
        assert int(over.headers["Retry-After"]) >= 1
        assert (await push(OTHER_KEY, one)).status == 202  # another key is not held back
        received = [(await ws_recv_json(ws))["data"] for _ in range(4)]
        assert received == ["hi"] * 4

    edge_page, api_page = await scrape(server.edge), await scrape(server.api)
    assert get(edge_page, "zuulpush_edge_origin_refused_total") == 1
    assert get(api_page, "zuulpush_api_rate_limited_total", key="0") == 1
    assert get(api_page, "zuulpush_api_rate_limited_total", key="1") == 0
    async with aiohttp.ClientSession() as http, http.get(server.api + "/metrics") as response:
        text = await response.text()
    assert API_KEY not in text and OTHER_KEY not in text
    assert API_KEY not in server.stderr_text()  # the logs (the banner's curl shows the key)
