"""The browser client's sans-I/O parts (`Backoff`, `ReconnectPolicy`, `Deduper`,
`parseRetryAfter` in router/pages/static/zuulpush.js), run in headless Chromium: the module is
imported from the API of a live `zuulpush serve`, and each check returns its findings to Python.
The connection behaviour itself is tested end to end in test_browser_client.py."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Browser

from .servers import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def run(server: ServerProcess, browser: Browser, body: str) -> Any:
    """Evaluate `body` (an async function body; `m` is the module) in a page of the API."""
    page = await browser.new_page()
    await page.goto(server.api + "/healthz")
    return await page.evaluate(
        f"async () => {{ const m = await import('/static/zuulpush.js'); {body} }}")


async def test_backoff_draws_full_jitter_under_a_doubling_cap(server: ServerProcess,
                                                              browser: Browser) -> None:
    found = await run(server, browser, """
        const lo = new m.Backoff({baseMs: 100, capMs: 1000, random: () => 0});
        const hi = new m.Backoff({baseMs: 100, capMs: 1000, random: () => 0.999999});
        return {lo: [0, 1, 2, 5].map(n => lo.delayMs(n)),
                hi: [0, 1, 2, 3, 4, 50].map(n => Math.round(hi.delayMs(n))),
                floor: Math.round(hi.afterFloorMs(2000, 0)), hint: hi.hintedMs(10 ** 9)};""")
    assert found["lo"] == [0, 0, 0, 0]
    assert found["hi"] == [100, 200, 400, 800, 1000, 1000]
    assert found["floor"] == 2100  # the server's floor, then a draw on top
    assert found["hint"] == 600_000  # hints are capped


async def test_reconnect_policy_follows_the_servers_hints_and_codes(server: ServerProcess,
                                                                    browser: Browser) -> None:
    found = await run(server, browser, """
        const policy = (canRefresh) => new m.ReconnectPolicy(
            new m.Backoff({baseMs: 100, capMs: 1000, random: () => 0.5}), {canRefresh});
        const p = policy(true);
        return {
          replaced: policy(false).decide({opened: true, code: 4003, upMs: 5}).stop.kind,
          hinted: policy(false).decide({opened: true, code: 4000, hintMs: 1234, upMs: 5}).delayMs,
          refused: policy(false).decide({opened: false, status: 401}).stop.kind,
          refresh: [p.decide({opened: false, status: 401}), p.decide({opened: false, status: 401})]
            .map(d => [d.refreshToken, d.delayMs]),
          shed: policy(false).decide({opened: false, status: 503, retryAfterMs: 2000}).delayMs,
          backoff: (() => { const q = policy(false);
            return [0, 1, 2].map(() => q.decide({opened: false, status: null}).delayMs); })(),
        };""")
    assert found["replaced"] == "replaced" and found["refused"] == "auth"
    assert found["hinted"] == 1234
    assert found["refresh"] == [[True, 0], [True, 100]]  # at once, then backing off
    assert found["shed"] == 2050  # Retry-After, plus jitter
    assert found["backoff"] == [50, 100, 200]


async def test_deduper_drops_repeats_within_its_capacity(server: ServerProcess,
                                                         browser: Browser) -> None:
    found = await run(server, browser, """
        const d = new m.Deduper(3);
        const seen = ["a", "b", "a", "c", "d", "a"].map(id => d.admit(id));
        d.markDelivered("d");
        return {seen, delivered: [d.delivered("d"), d.delivered("c")], size: d.ids.size,
                retry: [m.parseRetryAfter("7"), m.parseRetryAfter("soon"),
                        m.parseRetryAfter(new Date(5000).toUTCString(), 2000)]};""")
    # "a" is forgotten once three newer ids pushed it out, so it is admitted again
    assert found["seen"] == [True, True, False, True, True, True]
    assert found["delivered"] == [True, False] and found["size"] == 3
    assert found["retry"] == [7000, None, 3000]
