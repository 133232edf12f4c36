"""The dashboard in headless Chromium against a real `zuulpush serve`: log in with the admin
key, watch the node's connection count rise as real clients connect (`websockets` and SSE
over aiohttp), push from the form to a connected client, drain the node from its button. The
screenshot goes to the test's temporary directory: the README's comes from
`scripts/docs-images`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Dialog, Page
from websockets.asyncio.client import ClientConnection

from tests.support.redis_servers import RedisServer

from .clients import push_api, sse_stream, ws_connect, ws_recv_json, ws_url
from .conftest import ServeFactory
from .servers import (
    ADMIN_KEY,
    API,
    API_KEY,
    EDGE,
    ROUTER,
    ServerProcess,
    start_server,
    stop_all,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

WAIT_MS = 10_000
"""Bound on each wait for the page (snapshots come once a second)."""


async def log_in(page: Page, api: str) -> None:
    await page.goto(api + "/", timeout=WAIT_MS)
    await page.fill("#key", "not-the-key", timeout=WAIT_MS)
    await page.click("button[type=submit]", timeout=WAIT_MS)
    await page.wait_for_selector("#login-error:has-text('not accepted')", timeout=WAIT_MS)
    await page.fill("#key", ADMIN_KEY, timeout=WAIT_MS)
    await page.click("button[type=submit]", timeout=WAIT_MS)
    await page.wait_for_selector("#live:has-text('live')", timeout=WAIT_MS)


async def connections_shown(page: Page, node_id: str, n: int) -> None:
    """Wait until the node's row and the total both show `n` connections."""
    await page.wait_for_function(
        """([node, n]) => {
             const row = document.querySelector(`tr[data-node="${node}"] td.connections`);
             return row && row.textContent === String(n)
               && document.getElementById("connections").textContent === String(n);
           }""", arg=[node_id, n], timeout=WAIT_MS)


@contextlib.asynccontextmanager
async def devices(server: ServerProcess, kinds: list[tuple[str, str]]
                  ) -> AsyncIterator[list[ClientConnection]]:
    """WebSocket devices `(client id, device type)`, connected for the block."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(ws_connect(ws_url(
            server.edge, token=server.token(client, "dash-user", device_type))))
            for client, device_type in kinds]


async def test_dashboard_shows_connections_pushes_and_drains(
        serve_factory: ServeFactory, browser: Browser, tmp_path: Path) -> None:
    server = serve_factory(ZUULPUSH_DRAIN_WINDOW_S="4")  # draining long enough to be seen
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    await log_in(page, server.api)
    await connections_shown(page, server.node_id, 0)

    async with devices(server, [("dash-phone-1", "phone"), ("dash-phone-2", "phone"),
                                ("dash-tv-1", "tv")]) as ws_devices:
        await connections_shown(page, server.node_id, 3)
        async with aiohttp.ClientSession() as session, \
                sse_stream(session, server.edge, server.token("dash-web-1", "web-user", "web")):
            await connections_shown(page, server.node_id, 4)
            shown = await page.text_content("#by-transport", timeout=WAIT_MS)
            assert shown == "transport: sse 1 · ws 3"

            # The form's push reaches the client it names.
            await page.fill("#push-target", "dash-phone-1", timeout=WAIT_MS)
            await page.fill("#push-data", '{"text": "from the dashboard"}', timeout=WAIT_MS)
            await page.click("#push button[type=submit]", timeout=WAIT_MS)
            await page.wait_for_selector("#push-result:has-text('1 target')", timeout=WAIT_MS)
            message = await ws_recv_json(ws_devices[0])
            assert (message["topic"], message["data"]) == ("dashboard",
                                                           {"text": "from the dashboard"})

            # A few broadcasts over some seconds, so that the charts have something to show.
            async with push_api(server.api, server.api_key) as api:
                for i in range(6):
                    await api.send({"n": i}, broadcast=True)
                    status, answer = await api.push({"to": {"clients": ["dash-tv-1"]},
                                                     "data": i % 2, "dedup_key": f"d{i % 2}"})
                    assert status == 202, answer  # from the third on, repeats of a dedup key
                    await asyncio.sleep(0.5)
            await page.wait_for_function(
                "parseFloat(document.getElementById('delivered-rate').textContent) > 0",
                timeout=WAIT_MS)
            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes().startswith(b"\x89PNG")

            # The drain button turns the node draining (after the operator confirms).
            async def accept(dialog: Dialog) -> None:
                assert "Drain node" in dialog.message
                await dialog.accept()

            page.once("dialog", accept)
            await page.click(f'tr[data-node="{server.node_id}"] button.drain', timeout=WAIT_MS)
            await page.wait_for_selector(
                f'tr[data-node="{server.node_id}"] td.state:has-text("draining")',
                timeout=WAIT_MS)
            await page.wait_for_selector("#drain-result:has-text('drain requested')",
                                         timeout=WAIT_MS)


async def test_the_dashboard_shows_the_login_form_and_keeps_the_key_out_of_urls(
        server: ServerProcess, browser: Browser) -> None:
    page = await browser.new_page()
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    await log_in(page, server.api)
    cookies = await page.context.cookies()
    [session] = [c for c in cookies if c["name"] == "zuulpush_dashboard"]
    assert session.get("httpOnly") and session.get("sameSite") == "Strict"
    assert ADMIN_KEY not in session["value"]
    assert not any(ADMIN_KEY in url for url in urls)
    # The page's script cannot read the session cookie.
    assert "zuulpush_dashboard" not in await page.evaluate("document.cookie")


async def test_in_a_fleet_the_api_reads_the_nodes_records_and_drains_through_the_registry(
        redis_factory: Callable[..., RedisServer], tmp_path: Path) -> None:
    """`zuulpush edge`, two `zuulpush api` and a `zuulpush router` on one real Redis: the first
    API's dashboard shows the edge's connections by transport and its delivered total from its
    node record, the messages that expired in the router and the pushes the other API dropped
    as repeats (from their process records: scope fleet), and its drain button's request
    reaches the edge through the registry."""
    redis = redis_factory()
    env = {"ZUULPUSH_REDIS_URL": redis.url}
    edge = start_server(tmp_path, {**env, "ZUULPUSH_REGISTRY_TTL_S": "3",
                                   "ZUULPUSH_DRAIN_WINDOW_S": "3"},
                        ("--node-id", "dash-edge"), command=EDGE)
    api = start_server(tmp_path, env, command=API)
    other_api = start_server(tmp_path, env, command=API)
    servers = [api, other_api, edge]
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def snapshot(http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(api.api + "/dashboard/snapshot", headers=auth,
                            timeout=aiohttp.ClientTimeout(total=5)) as response:
            snap: dict[str, Any] = await response.json()
        assert snap["mode"] == "fleet"
        assert {snap["counters"][name]["scope"] for name in ("expired", "deduped", "enqueued",
                                                             "delivered")} == {"fleet"}
        return snap

    async def node(http: aiohttp.ClientSession) -> dict[str, Any] | None:
        snap = await snapshot(http)
        return next((n for n in snap["nodes"] if n["node_id"] == "dash-edge"), None)

    async def until(check: Callable[[dict[str, Any]], bool], http: aiohttp.ClientSession,
                    read: Callable[[aiohttp.ClientSession], Awaitable[dict[str, Any] | None]]
                    = node, timeout_s: float = 10.0) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while True:
                found = await read(http)
                if found is not None and check(found):
                    return found
                await asyncio.sleep(0.1)
        return await asyncio.wait_for(poll(), timeout_s)

    try:
        async with aiohttp.ClientSession() as http, \
                ws_connect(ws_url(edge.edge, token=edge.token("fleet-ws", "u", "phone"))), \
                sse_stream(http, edge.edge, edge.token("fleet-sse", "u", "web")):
            async with push_api(api.api, API_KEY) as sender:
                await sender.send({"hi": 1}, clients=["fleet-ws"])
                # No router runs yet: this one waits in the queue past its TTL.
                status, answer = await sender.push({"to": {"clients": ["fleet-ws"]},
                                                    "data": "late", "ttl": 1})
                assert status == 202, answer
            async with push_api(other_api.api, API_KEY) as sender:
                for _ in range(3):  # the second and third are repeats of the dedup key
                    status, answer = await sender.push({"to": {"clients": ["fleet-sse"]},
                                                        "data": "once", "dedup_key": "k1"})
                    assert status == 202, answer
            shown = await until(lambda n: n["connections"] == 2, http)
            assert shown["by_transport"] == {"sse": 1, "ws": 1}
            assert shown["by_device_type"] == {"phone": 1, "web": 1}
            assert shown["totals"]["connects"] == 2 and shown["state"] == "active"

            await asyncio.sleep(1.5)  # past the TTL of the "late" message
            servers.append(start_server(tmp_path, env, command=ROUTER))
            # Each process publishes its counters every 5 s: within two publishes, this API's
            # dashboard shows the router's expired message and the other API's repeats.
            counters = (await until(
                lambda snap: snap["counters"]["expired"]["total"] >= 1
                and snap["counters"]["deduped"]["total"] >= 2, http, snapshot,
                timeout_s=15))["counters"]
            assert counters["expired"]["total"] == 1 and counters["deduped"]["total"] == 2
            assert counters["enqueued"]["total"] == 3  # 2 here, 1 there
            assert counters["taken"]["total"] >= 2 and counters["taken"]["scope"] == "fleet"

            async with http.post(api.api + "/dashboard/nodes/dash-edge/drain",
                                 headers={**auth, "X-Zuulpush-Dashboard": "1"}) as response:
                assert response.status == 202
                assert (await response.json())["via"] == "registry"
            await until(lambda n: n["state"] == "draining", http)
    finally:
        stop_all(servers)


async def test_the_push_form_refuses_a_device_type_alone_and_broadcasts_when_chosen(
        server: ServerProcess, browser: Browser, ids: Callable[[str], str]) -> None:
    """As `POST /v1/push` and `zuulpush send`: device types narrow the clients, users or
    broadcast named; alone they name nobody, and the form shows the API's 400 saying to add
    broadcast. With "everyone" chosen, the push is a broadcast to those types."""
    tv_type, phone_type = ids("tv"), ids("phone")  # types of this test's own: nobody else's
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    await log_in(page, server.api)
    async with devices(server, [(ids("tv-1"), tv_type), (ids("phone-1"), phone_type)]) as (
            tv, phone):
        await page.fill("#push-target", "", timeout=WAIT_MS)
        await page.fill("#push-device-types", tv_type, timeout=WAIT_MS)
        await page.click("#push button[type=submit]", timeout=WAIT_MS)
        await page.wait_for_selector("#push-result.error:has-text('400')", timeout=WAIT_MS)
        assert '"broadcast": true' in await page.text_content("#push-result", timeout=WAIT_MS)

        await page.select_option("#push-kind", "broadcast", timeout=WAIT_MS)
        await page.click("#push button[type=submit]", timeout=WAIT_MS)
        await page.wait_for_selector("#push-result.ok:has-text('accepted')", timeout=WAIT_MS)
        message = await ws_recv_json(tv)
        assert message["topic"] == "dashboard"
        async with push_api(server.api, server.api_key) as api:
            later = await api.send("for the phone", clients=[ids("phone-1")])
        assert (await ws_recv_json(phone))["id"] == later  # the broadcast never came first
