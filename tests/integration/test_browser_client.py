"""`router/pages/static/zuulpush.js` and the demo page in headless Chromium, against a real
`zuulpush serve`: WebSocket delivery, the fall-back to SSE when WebSocket is blocked, resuming
without loss or repeats after the edge drops the connection, and stopping when replaced (4003).

Pushes go through the real `POST /v1/push` with the API key; the page exposes
`window.zuulpushDemo` (`client`, `received`: ids in order, `session`: the demo token's answer).
Every wait is bounded (Playwright timeouts, `asyncio.wait_for`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from .servers import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

WAIT_MS = 15_000

BLOCK_WEBSOCKET = """
window.WebSocket = class BlockedWebSocket extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.readyState = 0;
    // What a proxy that refuses the upgrade looks like from the page: no open, a 1006 close.
    setTimeout(() => {
      this.readyState = 3;
      const event = new CloseEvent("close", { code: 1006, reason: "", wasClean: false });
      if (this.onclose) this.onclose(event);
      this.dispatchEvent(event);
    }, 50);
  }
  send() { throw new Error("blocked"); }
  close() {}
};
"""


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def open_demo(browser: Browser, server: ServerProcess, *, init_script: str = "",
                    transport: str = "ws") -> Page:
    """The demo page, once its client is open over `transport`."""
    page = await browser.new_page(viewport={"width": 1000, "height": 760})
    if init_script:
        await page.add_init_script(init_script)
    await page.goto(f"{server.api}/demo", timeout=WAIT_MS)
    await page.wait_for_function(
        "t => window.zuulpushDemo.client && window.zuulpushDemo.client.state === 'open' "
        "&& window.zuulpushDemo.client.transport === t", arg=transport, timeout=WAIT_MS)
    return page


async def client_id(page: Page) -> str:
    value: str = await page.evaluate("window.zuulpushDemo.session.client_id")
    return value


async def push(http: aiohttp.ClientSession, server: ServerProcess, client: str,
               data: Any) -> str:
    async with http.post(f"{server.api}/v1/push",
                         json={"to": {"clients": [client]}, "topic": "test", "data": data},
                         headers={"Authorization": f"Bearer {server.api_key}"}) as response:
        assert response.status == 202, await response.text()
        body = await response.json()
        assert body["targets"] == 1
        message_id: str = body["id"]
        return message_id


async def wait_received(page: Page, ids: list[str]) -> None:
    try:
        await page.wait_for_function(
            "ids => ids.every(id => window.zuulpushDemo.received.includes(id))", arg=ids,
            timeout=WAIT_MS)
    except PlaywrightTimeout:
        received = await page.evaluate("window.zuulpushDemo.received")
        events = await page.locator("#log").inner_text()
        raise AssertionError(f"missing {sorted(set(ids) - set(received))}; page events:\n"
                             f"{events}") from None


async def test_the_demo_page_receives_a_push_over_websocket(
    browser: Browser, server: ServerProcess, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    page = await open_demo(browser, server)
    message_id = await push(http, server, await client_id(page), {"text": "Hello from zuulpush"})
    await wait_received(page, [message_id])
    assert await page.locator("#messages tr").count() == 1
    assert "Hello from zuulpush" in await page.locator("#messages").inner_text()
    # The page's own button: POST /demo/push with its demo token.
    await page.fill("#text", "pushed from the page")
    await page.click("#push")
    await page.wait_for_function("window.zuulpushDemo.received.length === 2", timeout=WAIT_MS)
    assert "pushed from the page" in await page.locator("#messages").inner_text()
    shot = tmp_path / "demo.png"  # the README's comes from scripts/docs-images
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")


async def test_with_websocket_blocked_it_falls_back_to_sse_and_receives(
    browser: Browser, server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    page = await open_demo(browser, server, init_script=BLOCK_WEBSOCKET, transport="sse")
    assert await page.evaluate("window.zuulpushDemo.client.stats.fallbacks") == 1
    message_id = await push(http, server, await client_id(page), {"n": 1})
    await wait_received(page, [message_id])


async def _drop_and_resume(page: Page, server: ServerProcess, http: aiohttp.ClientSession,
                           *, drops: int = 2, count: int = 30) -> None:
    """Push `count` messages while the edge closes the page's connection `drops` times (admin
    close: a go-away with a reconnect hint); every message arrives, none twice."""
    client = await client_id(page)
    close_url = f"{server.edge}/admin/clients/{client}/close"
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    sent: list[str] = []

    async def pushes() -> None:
        for n in range(count):
            sent.append(await push(http, server, client, {"n": n}))
            await asyncio.sleep(0.1)

    pushing = asyncio.ensure_future(pushes())
    try:
        for _ in range(drops):
            await asyncio.sleep(0.6)
            await page.wait_for_function("window.zuulpushDemo.client.state === 'open'",
                                         timeout=WAIT_MS)
            async with http.post(close_url, headers=admin) as response:
                assert response.status == 200, await response.text()
        await asyncio.wait_for(pushing, 30)
    finally:
        pushing.cancel()
    await wait_received(page, sent)
    received = await page.evaluate("window.zuulpushDemo.received")
    assert sorted(received) == sorted(sent)  # none lost, none repeated
    assert len(received) == len(set(received)) == count
    stats = await page.evaluate("window.zuulpushDemo.client.stats")
    assert stats["reconnects"] >= drops
    assert stats["connects"] >= drops + 1


async def test_dropped_websocket_reconnects_and_resumes_without_loss_or_repeats(
    browser: Browser, server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    page = await open_demo(browser, server)
    await _drop_and_resume(page, server, http)


async def test_dropped_sse_stream_reconnects_and_resumes_without_loss_or_repeats(
    browser: Browser, server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    page = await open_demo(browser, server, init_script=BLOCK_WEBSOCKET, transport="sse")
    await _drop_and_resume(page, server, http)


async def test_replaced_by_another_connection_it_stops(
    browser: Browser, server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    page = await open_demo(browser, server)
    token = await page.evaluate("window.zuulpushDemo.session.token")
    ws_url = server.edge.replace("http", "ws", 1) + f"/ws?token={token}"
    async with http.ws_connect(ws_url) as other:
        first = asyncio.ensure_future(other.receive_json())  # reading answers the edge's pings
        try:
            await _stays_replaced(page, server, http, first)
        finally:
            first.cancel()


async def _stays_replaced(page: Page, server: ServerProcess, http: aiohttp.ClientSession,
                          first: asyncio.Future[Any]) -> None:
    """Replaced (4003), the page stops and stays stopped; the newer connection gets the
    pushes."""
    await page.wait_for_function("window.zuulpushDemo.client.state === 'closed'",
                                 timeout=WAIT_MS)
    error = await page.evaluate(
        "({kind: window.zuulpushDemo.client.error.kind, "
        "code: window.zuulpushDemo.client.error.code})")
    assert error == {"kind": "replaced", "code": 4003}
    assert await page.locator("#status").inner_text() == "closed"
    await asyncio.sleep(1.5)
    assert await page.evaluate("window.zuulpushDemo.client.state") == "closed"
    message_id = await push(http, server, await client_id(page), {"to": "the newer one"})
    frame = await asyncio.wait_for(first, 10)
    assert frame["id"] == message_id


async def test_a_refused_token_without_a_provider_stops_with_an_auth_error(
    browser: Browser, server: ServerProcess
) -> None:
    page = await browser.new_page()
    await page.goto(f"{server.api}/demo", timeout=WAIT_MS)
    result = await page.evaluate("""async (edge) => {
        const { ZuulpushClient } = await import("/static/zuulpush.js");
        const client = new ZuulpushClient(edge, { token: "not.a.token" });
        const closed = new Promise((resolve) => client.addEventListener(
            "close", (e) => resolve({ kind: e.detail.error.kind, status: e.detail.error.status })));
        client.start();
        return await closed;
    }""", server.edge)
    assert result == {"kind": "auth", "status": 401}


async def test_serves_banner_names_the_demo_page(server: ServerProcess,
                                                 http: aiohttp.ClientSession) -> None:
    [line] = [line for line in server.lines if line.strip().startswith("demo:")]
    url = line.split("open ", 1)[1].split()[0]
    assert url == f"{server.api}/demo"
    async with http.get(url) as response:
        assert response.status == 200
        assert "/static/zuulpush.js" in await response.text()


async def test_no_demo_turns_the_page_off(serve_factory: Any,
                                          http: aiohttp.ClientSession) -> None:
    server = serve_factory(args=("--no-demo",))
    assert not any(line.strip().startswith("demo:") for line in server.lines)
    async with http.get(f"{server.api}/demo") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/demo", "/"])
async def test_the_pages_load_without_a_404_and_have_an_icon(
        browser: Browser, server: ServerProcess, path: str) -> None:
    page = await browser.new_page()
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    await page.goto(f"{server.api}{path}", wait_until="networkidle", timeout=WAIT_MS)
    # What a browser's tab asks for (headless Chromium may not): the site's icon.
    icon = await page.evaluate(
        "fetch('/favicon.ico').then(async r => [r.status, r.headers.get('content-type')])")
    assert icon == [200, "image/x-icon"]
    assert missing == [], missing
