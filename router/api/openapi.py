"""The OpenAPI 3.1 description of the API (push-send, device inbox, dashboard, demo, static files,
health and metrics) and of the edge's admin API, served by the API at `GET /openapi.json`.

Decisions:
- Built here, once, at import, as plain data: the limits come from `ApiConfig()`'s defaults and
  the validation module's constants, so they cannot drift from the code. A deployment that
  changes a limit (`max_batch`, `max_ttl_s`, ...) still serves the defaults; each limited field's
  description names its setting. `tests/test_openapi.py` checks the document against the app's
  routes and `tests/integration/test_schemathesis.py` runs schemathesis against a live server.
- One document. The edge's admin API lives on the edge's port, so its paths (tag `edge-admin`)
  carry their own `servers` entry (the edge's default address); everything else is on the API's
  port. The edge's own `/healthz` and `/metrics` share their paths with the API's and are
  described in words only (the `edge-admin` tag's description).
- Not described: the device transports (`/ws`, `/sse`), which are not request/response APIs
  (README: Device protocol).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from core.ids import ID_FORMAT
from router.config import ApiConfig
from router.pages.dashboard import COOKIE, CSRF_HEADER, SESSION_S
from router.pages.demo import DEMO_TOKEN_TTL_S, MAX_TEXT
from router.pages.files import NAME as STATIC_NAME
from router.validation import DEFAULT_INBOX_PAGE, DEFAULT_TOPIC, MAX_DATA_DEPTH, MAX_ID_CHARS

DEFAULTS = ApiConfig()
EDGE_SERVER = "http://127.0.0.1:8080"
"""The edge's default address: where the `edge-admin` paths are served."""
EDGE_TAG = "edge-admin"
MAX_EDGE_CLIENT_ID = 256
"""The edge's `MAX_CLIENT_ID_LENGTH` (a longer id in an admin path is a 404)."""

Schema = dict[str, Any]
JSON = "application/json"


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: Schema, description: str, **extra: Any) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _obj(properties: dict[str, Schema], required: list[str] | None = None, *,
         extra: bool = False, **more: Any) -> Schema:
    out: Schema = {"type": "object", "properties": properties,
                   "required": required if required is not None else list(properties)}
    if not extra:
        out["additionalProperties"] = False
    return {**out, **more}


_ID: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
_COUNTS: Schema = {"type": "object", "additionalProperties": {"type": "integer"}}


def _ids(description: str, max_items: int | None = None) -> Schema:
    out: Schema = {"type": "array", "items": _ref("schemas", "Id"), "description": description}
    if max_items is not None:
        out["maxItems"] = max_items
    return out


def _schemas(c: ApiConfig) -> dict[str, Schema]:
    named = {"type": "array", "items": _ref("schemas", "Id"), "minItems": 1,
             "maxItems": c.max_targets}
    target = _obj({
        "clients": _ids(f"Client ids (repeats collapsed). With `users`, at most `max_targets` "
                        f"({c.max_targets}) together.", c.max_targets),
        "users": _ids("User ids: every known device of each.", c.max_targets),
        "device_types": _ids("Narrows the clients, users or broadcast to these device types "
                             "(alone it names nobody: add broadcast to reach every device of "
                             "these types)."),
        "broadcast": {"type": "boolean", "default": False,
                      "description": "Everyone connected; then no clients or users."},
    }, required=[], description="Who gets the message: clients and/or users, or a broadcast.",
        anyOf=[{"required": ["clients"], "properties": {"clients": named,
                                                         "broadcast": {"const": False}}},
               {"required": ["users"], "properties": {"users": named,
                                                       "broadcast": {"const": False}}},
               {"required": ["broadcast"], "properties": {
                   "broadcast": {"const": True}, "clients": {"maxItems": 0},
                   "users": {"maxItems": 0}}}])
    push = _obj({
        "to": _ref("schemas", "Target"),
        "topic": {**_ID, "default": DEFAULT_TOPIC},
        "data": {"description": f"Any JSON value, null included; required. Arrays and "
                                f"objects in it nest at most {MAX_DATA_DEPTH} levels (400 "
                                f"naming `data` past it)."},
        "priority": {"type": "string", "enum": ["high", "normal", "low"], "default": "normal"},
        "ttl": {"type": "integer", "minimum": 1, "maximum": c.max_ttl_s,
                "default": c.default_ttl_s,
                "description": f"Seconds the message may wait for its device: 1 to `max_ttl_s` "
                               f"(default setting {c.max_ttl_s}); absent: `default_ttl_s` "
                               f"({c.default_ttl_s})."},
        "dedup_key": {"oneOf": [_ID, {"type": "null"}],
                      "description": "A repeat within the dedup window (`dedup_window_s`) is "
                                     "not sent: it is answered `duplicate: true` with the id of "
                                     "the original message (the one sent)."},
    }, required=["to", "data"], description=(
        f"One push. The whole body is at most `max_payload_bytes` ({c.max_payload_bytes}) "
        f"bytes (413 past it)."))
    accepted = _obj({
        "id": {"type": "string", "description": "The message's id; for a duplicate, the "
                                                "original message's."},
        "targets": {"type": "integer", "minimum": 0, "description": "Devices the message was "
                    "resolved to (a broadcast: connections reached); 0 for a duplicate."},
        "duplicate": {"const": True, "description": "Present when the dedup_key was put within "
                      "the dedup window: nothing is sent, `id` is the original's."}},
        required=["id", "targets"])
    error = _obj({"error": _obj({"code": {"type": "string"}, "message": {"type": "string"},
                                 "field": {"type": "string"}}, required=["code", "message"])},
                 description="Every error answer: `field` names the culprit when there is one "
                             "(`to.clients[3]`, `messages[2].ttl`).")
    message = _obj({"id": {"type": "string"}, "topic": {"type": "string"},
                    "ts": {"type": "integer", "description": "Milliseconds since the epoch."},
                    "data": {}}, description="A message exactly as devices receive it.")
    return {
        "Id": {**_ID, "description": f"A non-empty string of at most {MAX_ID_CHARS} characters."},
        "MessageId": {"type": "string", "pattern": "^[0-7][0-9A-HJKMNP-TV-Z]{25}$",
                      "description": f"A message id: {ID_FORMAT}."},
        "Target": target,
        "PushRequest": push,
        "PushAccepted": accepted,
        "BatchRequest": _obj({"messages": {
            "type": "array", "items": _ref("schemas", "PushRequest"), "minItems": 1,
            "maxItems": c.max_batch}}, description=(
            f"At most `max_batch` ({c.max_batch}) messages, the body at most "
            f"`max_batch_payload_bytes` ({c.max_batch_payload_bytes}), each message's payload at "
            f"most `max_payload_bytes` ({c.max_payload_bytes}). All or nothing on input.")),
        "BatchAccepted": _obj({"results": {"type": "array", "items": {"oneOf": [
            _ref("schemas", "PushAccepted"), _ref("schemas", "Error")]}}}),
        "Error": error,
        "Message": message,
        "InboxPage": _obj({"messages": {"type": "array", "items": _ref("schemas", "Message")},
                           "more": {"type": "boolean"}}),
        "InboxAck": {"oneOf": [
            _obj({"ids": {"type": "array", "items": _ref("schemas", "Id"), "minItems": 1,
                          "maxItems": c.max_inbox_page}}),
            _obj({"through": _ref("schemas", "MessageId")})],
            "description": f"Exactly one of `ids` (1 to `max_inbox_page`, {c.max_inbox_page}, "
                           f"ids) and `through`: that message, and those pulls returned before "
                           f"it (never one stored later with an older id)."},
        "Ok": _obj({"ok": {"const": True}}),
        "Snapshot": _obj({"ts": {"type": "number"}, "mode": {"enum": ["serve", "fleet"]},
                          "nodes": {"type": "array", "items": {"type": "object"}},
                          "connections": {"type": "object"}, "counters": {"type": "object"}},
                         extra=True, description="One dashboard snapshot "
                                                 "(`router/pages/dashboard_stats.py`)."),
    }


def _responses() -> dict[str, Schema]:
    err = _ref("schemas", "Error")
    retry = {"Retry-After": {"schema": {"type": "integer", "minimum": 1},
                             "description": "Seconds to wait before retrying."}}
    return {
        "BadRequest": _json(err, "Invalid input; `field` names it."),
        "Unauthorized": _json(err, "Missing or invalid credential (`invalid_token` for a device "
                                   "token).", headers={"WWW-Authenticate": {
                                       "schema": {"type": "string"}}}),
        "Forbidden": _json(err, "A wrong key, a route that is off, or (dashboard) no CSRF "
                                "header."),
        "NotFound": _json(err, "No such path or object."),
        "PayloadTooLarge": _json(err, "The body is over its limit."),
        "RateLimited": _json(err, "Too many requests: `rate_limited` (an API key's or the demo's "
                                  "rate), or `auth_throttled` (this address sent too many wrong "
                                  "keys in a row; the key was not checked: "
                                  "`<role>_failures_max`).", headers=retry),
        "Unavailable": _json(err, "The queue or the registry is full or unreachable; retry.",
                             headers=retry),
    }


def _errors(*statuses: int) -> dict[str, Schema]:
    names = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
             413: "PayloadTooLarge", 429: "RateLimited", 503: "Unavailable"}
    return {str(s): _ref("responses", names[s]) for s in statuses}


def _body(schema: Schema, required: bool = True) -> Schema:
    return {"required": required, "content": {JSON: {"schema": schema}}}


def _html(description: str) -> Schema:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


_CSRF = {"name": CSRF_HEADER, "in": "header", "required": True,
         "schema": {"type": "string", "enum": ["1"]},
         "description": "Required on the dashboard's state-changing POSTs (403 `csrf` without)."}
_ADMIN: list[Schema] = [{"adminKey": []}, {"dashboardSession": []}]
_PUSH_ERRORS = (400, 401, 403, 413, 429, 503)


def _push_paths(c: ApiConfig) -> dict[str, Schema]:
    return {
        "/v1/push": {"post": {
            "tags": ["push"], "operationId": "push", "summary": "Send one push.",
            "security": [{"apiKey": []}], "requestBody": _body(_ref("schemas", "PushRequest")),
            "responses": {"202": _json(_ref("schemas", "PushAccepted"),
                                       "Accepted (or a duplicate of a recent dedup_key)."),
                          **_errors(*_PUSH_ERRORS)}}},
        "/v1/push/batch": {"post": {
            "tags": ["push"], "operationId": "pushBatch", "summary": "Send several pushes.",
            "security": [{"apiKey": []}], "requestBody": _body(_ref("schemas", "BatchRequest")),
            "responses": {"202": _json(_ref("schemas", "BatchAccepted"),
                                       "One result per message, in order: those the queue "
                                       "refused are `unavailable` errors."),
                          **_errors(*_PUSH_ERRORS)}}},
        "/v1/inbox": {"get": {
            "tags": ["inbox"], "operationId": "inboxPull",
            "summary": "A device's own inbox, oldest first (nothing is removed).",
            "security": [{"deviceToken": []}, {"deviceTokenQuery": []}],
            "parameters": [
                {"name": "after", "in": "query", "schema": _ref("schemas", "MessageId"),
                 "description": "The last id of the previous page (page on with it); also "
                                "returns the broadcasts kept since."},
                {"name": "limit", "in": "query", "schema": {
                    "type": "integer", "minimum": 1, "maximum": c.max_inbox_page,
                    "default": min(DEFAULT_INBOX_PAGE, c.max_inbox_page)},
                 "description": f"1 to `max_inbox_page` ({c.max_inbox_page})."}],
            "responses": {"200": _json(_ref("schemas", "InboxPage"), "A page of messages."),
                          **_errors(400, 401, 503)}}},
        "/v1/inbox/ack": {"post": {
            "tags": ["inbox"], "operationId": "inboxAck", "summary": "Remove acked messages.",
            "security": [{"deviceToken": []}, {"deviceTokenQuery": []}],
            "requestBody": _body(_ref("schemas", "InboxAck")),
            "responses": {"200": _json(_obj({"removed": {"type": "integer", "minimum": 0}}),
                                       "How many were removed."),
                          **_errors(400, 401, 413, 503)}}},
    }


def _dashboard_paths() -> dict[str, Schema]:
    drained = _obj({"node_id": {"type": "string"}, "requested": {"const": True},
                    "via": {"enum": ["local", "registry"]}})
    return {
        "/": {"get": {
            "tags": ["dashboard"], "operationId": "dashboardPage", "security": [],
            "summary": "The dashboard page with a valid session cookie, else the login page.",
            "responses": {"200": _html("The page."), "304": {"description": "Not modified."},
                          **_errors(403)}}},
        "/dashboard/login": {"post": {
            "tags": ["dashboard"], "operationId": "dashboardLogin", "security": [],
            "summary": f"Log in: sets the `{COOKIE}` session cookie ({SESSION_S} s).",
            "requestBody": {"required": True, "content": {
                JSON: {"schema": _obj({"key": {"type": "string"}})},
                "application/x-www-form-urlencoded": {
                    "schema": _obj({"key": {"type": "string"}})}}},
            "responses": {"200": _json(_obj({"ok": {"const": True},
                                             "expires_at": {"type": "integer"}}),
                                       "Logged in.", headers={"Set-Cookie": {
                                           "schema": {"type": "string"}}}),
                          **_errors(400, 401, 403, 429)}}},
        "/dashboard/logout": {"post": {
            "tags": ["dashboard"], "operationId": "dashboardLogout", "security": _ADMIN,
            "summary": "Log out: revokes the session cookie (refused from now on by every API "
                       "process of the region) and clears it.",
            "parameters": [_CSRF],
            "responses": {"200": _json(_ref("schemas", "Ok"), "Logged out."),
                          **_errors(401, 403, 429, 503)}}},
        "/dashboard/snapshot": {"get": {
            "tags": ["dashboard"], "operationId": "dashboardSnapshot", "security": _ADMIN,
            "responses": {"200": _json(_ref("schemas", "Snapshot"), "One snapshot."),
                          **_errors(401, 403, 429, 503)}}},
        "/dashboard/events": {"get": {
            "tags": ["dashboard"], "operationId": "dashboardEvents", "security": _ADMIN,
            "summary": "A stream of `event: snapshot` lines, one a second, until closed.",
            "responses": {"200": {"description": "Server-Sent Events.", "content": {
                "text/event-stream": {"schema": {"type": "string"}}}},
                          **_errors(401, 403, 429)}}},
        "/dashboard/push": {"post": {
            "tags": ["dashboard"], "operationId": "dashboardPush", "security": _ADMIN,
            "parameters": [_CSRF], "requestBody": _body(_ref("schemas", "PushRequest")),
            "responses": {"202": _json(_ref("schemas", "PushAccepted"), "As `POST /v1/push`."),
                          **_errors(*_PUSH_ERRORS)}}},
        "/dashboard/nodes/{node_id}/drain": {"post": {
            "tags": ["dashboard"], "operationId": "dashboardDrain", "security": _ADMIN,
            "parameters": [_CSRF, {"name": "node_id", "in": "path", "required": True,
                                   "schema": {"type": "string", "minLength": 1}}],
            "responses": {"202": _json(drained, "The node was asked to drain."),
                          **_errors(401, 403, 404, 429, 503)}}},
    }


def _other_paths() -> dict[str, Schema]:
    token = _obj({"token": {"type": "string"}, "client_id": {"type": "string"},
                  "user_id": {"type": "string"}, "device_type": {"type": "string"},
                  "edge_url": {"type": "string"}, "expires_in_s": {"const": DEMO_TOKEN_TTL_S}})
    no_store = {"Cache-Control": {"schema": {"type": "string", "enum": ["no-store"]}}}
    return {
        "/demo": {"get": {
            "tags": ["demo"], "operationId": "demoPage", "security": [],
            "summary": "The demo page (only with `demo` on; else 404).",
            "responses": {"200": _html("The page."), "304": {"description": "Not modified."},
                          **_errors(404)}}},
        "/demo/token": {"post": {
            "tags": ["demo"], "operationId": "demoToken", "security": [],
            "summary": "A device token for a new random client id of user `demo-user`.",
            "responses": {"200": _json(token, "The token.", headers=no_store),
                          **_errors(404, 429)}}},
        "/demo/push": {"post": {
            "tags": ["demo"], "operationId": "demoPush", "security": [{"deviceToken": []}],
            "summary": "One message to the demo token's own client id.",
            "requestBody": _body(_obj({"text": {"type": "string", "minLength": 1,
                                                "maxLength": MAX_TEXT}}), required=False),
            "responses": {"202": _json(_obj({"id": {"type": "string"},
                                             "targets": {"const": 1}}), "Enqueued."),
                          **_errors(400, 401, 403, 404, 429, 503)}}},
        "/static/{name}": {"get": {
            "tags": ["static"], "operationId": "staticFile", "security": [],
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": f"^{STATIC_NAME.pattern}$"}}],
            "responses": {"200": {"description": "The file.", "content": {
                t: {"schema": {"type": "string"}} for t in (
                    "text/javascript", "text/html", "text/css", "image/svg+xml", "image/png",
                    "image/x-icon")}},
                          "304": {"description": "Not modified."}, **_errors(404)}}},
        "/favicon.ico": {"get": {
            "tags": ["static"], "operationId": "favicon", "security": [],
            "summary": "The site's icon (the demo page's and the dashboard's tab).",
            "responses": {"200": {"description": "The icon.", "content": {
                "image/x-icon": {"schema": {"type": "string"}}}},
                          "304": {"description": "Not modified."}}}},
        "/healthz": {"get": {
            "tags": ["operations"], "operationId": "apiHealth", "security": [],
            "responses": {"200": _json(_obj({"status": {"const": "ok"}}), "Serving.")}}},
        "/metrics": {"get": {
            "tags": ["operations"], "operationId": "apiMetrics", "security": [],
            "summary": "The process's Prometheus metrics (when the process exports them).",
            "responses": {"200": {"description": "Prometheus text format.", "content": {
                "text/plain": {"schema": {"type": "string"}}}}, **_errors(404)}}},
        "/openapi.json": {"get": {
            "tags": ["operations"], "operationId": "openapi", "security": [],
            "responses": {"200": _json({"type": "object"}, "This document.")}}},
    }


def _edge_paths() -> dict[str, Schema]:
    client_id = {"name": "client_id", "in": "path", "required": True,
                 "schema": {"type": "string", "minLength": 1, "maxLength": MAX_EDGE_CLIENT_ID},
                 "description": "Percent-encoded in the path."}
    not_here = _obj({"error": _obj({"code": {"type": "string"}, "message": {"type": "string"}}),
                     "node_id": {"type": "string"}}, required=["error"])
    common = {"tags": [EDGE_TAG], "security": [{"adminKey": []}]}
    errors = _errors(401, 403, 429)
    conn = _obj({"client_id": {"type": "string"}, "node_id": {"type": "string"},
                 "user_id": {"type": "string"}, "device_type": {"type": "string"},
                 "transport": {"type": "string"}, "state": {"type": "string"},
                 "connected_at": {"type": "number"}, "connected_s": {"type": "number"}})
    closed = _obj({"closed": {"const": True}, "client_id": {"type": "string"},
                   "node_id": {"type": "string"}, "code": {"enum": [4000, 1000]}})
    status = _obj({"status": {"enum": ["ok", "draining"]}, "node_id": {"type": "string"},
                   "state": {"type": "string"}, "region": {"type": "string"},
                   "connections": {"type": "integer"},
                   "open": {"type": "object", "additionalProperties": _COUNTS}},
                  extra=True, description="Everything the edge's `/healthz` says, and more "
                                          "(README: Admin API).")
    drain = _obj({"status": {"const": "draining"}, "node_id": {"type": "string"},
                  "began": {"type": "boolean"}, "connections": {"type": "integer"},
                  "drain_window_s": {"type": "number"}})
    servers = [{"url": EDGE_SERVER, "description": "The edge's port (default address)."}]
    return {
        "/admin/status": {"servers": servers, "get": {
            **common, "operationId": "edgeStatus",
            "responses": {"200": _json(status, "The node's state and load."), **errors}}},
        "/admin/drain": {"servers": servers, "post": {
            **common, "operationId": "edgeDrain",
            "responses": {"202": _json(drain, "The node drains (README: Drain for deploys)."),
                          **errors}}},
        "/admin/clients/{client_id}": {"servers": servers, "get": {
            **common, "operationId": "edgeClient", "parameters": [client_id],
            "responses": {"200": _json(conn, "The client's connection on this node."),
                          "404": _json(not_here, "No connection of it here, or no such path."),
                          **errors}}},
        "/admin/clients/{client_id}/close": {"servers": servers, "post": {
            **common, "operationId": "edgeClose", "parameters": [client_id, {
                "name": "code", "in": "query", "schema": {"type": "integer",
                                                          "enum": [4000, 1000],
                                                          "default": 4000},
                "description": "4000: go away with a reconnect hint; 1000: a normal close."}],
            "responses": {"200": _json(closed, "Closed."),
                          "400": _ref("responses", "BadRequest"),
                          "404": _json(not_here, "No connection of it here, or no such path."),
                          **errors}}},
    }


def build(config: ApiConfig = DEFAULTS) -> dict[str, Any]:
    """The whole document, its limits from `config` (by default `ApiConfig()`'s defaults)."""
    paths = {**_push_paths(config), **_dashboard_paths(), **_other_paths(), **_edge_paths()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "zuulpush", "version": "1", "description": (
            "The push-send API for backend services, the device inbox, the dashboard, the demo "
            "page and the edge's admin API. Every error is JSON `{\"error\": {\"code\", "
            "\"message\", \"field\"?}}`. Limits are the defaults of their settings (named in "
            "each description); a deployment may change them.")},
        "servers": [{"url": "http://127.0.0.1:8081", "description": "The API (default)."}],
        "tags": [
            {"name": "push", "description": "For backend services, with an API key."},
            {"name": "inbox", "description": "For devices, with their device token."},
            {"name": "dashboard", "description": "The operator's dashboard: the admin key as "
                                                 "a bearer token or the session cookie."},
            {"name": "demo", "description": "Only with `demo` on (`zuulpush serve`)."},
            {"name": "static", "description": "The browser client and pages."},
            {"name": "operations", "description": "Health, metrics and this document."},
            {"name": EDGE_TAG, "description": (
                "On the EDGE's port, with the admin key; each answer ends the connection. The "
                "edge also answers `GET /healthz` (200, or 503 while draining) and `GET "
                "/metrics` without a key.")}],
        "security": [],
        "paths": paths,
        "components": {
            "schemas": _schemas(config),
            "responses": _responses(),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "An API key (`api_keys`)."},
                "deviceToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                "description": "A device token (README: Device protocol)."},
                "deviceTokenQuery": {"type": "apiKey", "in": "query", "name": "token"},
                "adminKey": {"type": "http", "scheme": "bearer",
                             "description": "The admin key (`admin_key`)."},
                "dashboardSession": {"type": "apiKey", "in": "cookie", "name": COOKIE}}},
    }


DOCUMENT = orjson.dumps(build())


async def _handle(request: web.Request) -> web.Response:
    return web.Response(body=DOCUMENT, content_type="application/json")


def add_openapi_route(app: web.Application) -> None:
    """`GET /openapi.json`: the document (the defaults' limits)."""
    app.router.add_get("/openapi.json", _handle)
