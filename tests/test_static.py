"""`GET /static/<name>`: the package's static files, and nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from router.pages.files import STATIC_DIR, add_static_routes


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    add_static_routes(app)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_a_file_is_served_with_its_type_and_revalidated_by_etag(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/static/zuulpush.js")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert await response.read() == (STATIC_DIR / "zuulpush.js").read_bytes()
    again = await client.get("/static/zuulpush.js",
                             headers={"If-None-Match": response.headers["ETag"]})
    assert again.status == 304


@pytest.mark.parametrize("name", ["nothing.js", "..%2Fconfig.py", ".hidden.js", "zuulpush.py",
                                  "%2E%2E%2Frouter%2Fapi.py"])
async def test_anything_else_is_a_json_404(client: TestClient[web.Request, web.Application],
                                           name: str) -> None:
    response = await client.get("/static/" + name)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_pages_may_not_be_framed(client: TestClient[web.Request, web.Application]) -> None:
    page = await client.get("/static/dashboard.html")
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    script = await client.get("/static/zuulpush.js")
    assert "X-Frame-Options" not in script.headers


async def test_the_favicon_is_served_at_the_root(
        client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/favicon.ico")
    assert response.status == 200
    assert response.headers["Content-Type"] == "image/x-icon"
    body = await response.read()
    assert body[:4] == b"\x00\x00\x01\x00"  # an ICO file's header: one or more images
    assert body == (STATIC_DIR / "favicon.ico").read_bytes()
