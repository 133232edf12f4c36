"""The API's static files: the browser client, the demo page and the dashboard, from the
`router/pages/static/` directory of the installed package. No build step: the files are served as
they are, under `/static/` (and the site's icon, `favicon.ico`, at `/favicon.ico`, where browsers
ask for it). Only names in that directory (no subdirectories, no dot files) are served, each with
its content type, `Cache-Control: no-cache` (revalidated with `ETag`, so an upgrade is seen at
once) and `X-Content-Type-Options: nosniff`; pages also forbid framing (`X-Frame-Options`,
CSP `frame-ancestors`)."""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(str(importlib.resources.files("router.pages"))) / "static"

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def static_response(name: str, request: web.Request | None = None) -> web.Response:
    """The file `name` of the static directory (404 JSON error when there is none); `304`
    when the request's `If-None-Match` names its current ETag."""
    path = STATIC_DIR / name
    content_type = CONTENT_TYPES.get(path.suffix)
    if not NAME.fullmatch(name) or content_type is None or not path.is_file():
        raise web.HTTPNotFound(text='{"error": {"code": "not_found", "message": "no such file"}}',
                               content_type="application/json")
    body = path.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"Cache-Control": "no-cache", "ETag": etag, "X-Content-Type-Options": "nosniff"}
    if path.suffix == ".html":  # no page of ours in another site's frame (the drain button)
        headers.update({"X-Frame-Options": "DENY",
                        "Content-Security-Policy": "frame-ancestors 'none'"})
    if request is not None and request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers={**headers, "Content-Type": content_type})


async def _handle(request: web.Request) -> web.Response:
    return static_response(request.match_info["name"], request)


async def _favicon(request: web.Request) -> web.Response:
    return static_response("favicon.ico", request)


def add_static_routes(app: web.Application) -> None:
    """`GET /static/<name>` and `GET /favicon.ico`."""
    app.router.add_get("/static/{name}", _handle)
    app.router.add_get("/favicon.ico", _favicon)
