"""The OpenAPI document (`router.api.openapi`) stays true to the app: every route of
`create_api_app` is in it and nothing else (the edge's admin routes apart), its limits are
`ApiConfig`'s defaults, the documented errors are there, and it validates as OpenAPI 3.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from core.tokens import AuthConfig
from registry.memory import MemoryRegistry
from router.api.app import create_api_app
from router.api.openapi import DOCUMENT, EDGE_TAG, build
from router.config import ApiConfig
from router.stores.memory import MemoryInbox, MemoryQueue
from router.validation import MAX_DATA_DEPTH, MAX_ID_CHARS
from zuulpush.edge.request import ADMIN, Route

SPEC = build()
SCHEMAS = SPEC["components"]["schemas"]
METHODS = {"get", "post", "put", "delete", "patch"}


def full_app() -> web.Application:
    """The API with every optional route on: inbox, demo, metrics."""
    return create_api_app(
        config=ApiConfig(demo=True, public_edge_url="http://127.0.0.1:8080"),
        auth=AuthConfig(api_keys=("k",), secret="s" * 32, admin_key="a"),
        queue=MemoryQueue(600.0), registry=MemoryRegistry(), inbox=MemoryInbox(10),
        metrics=lambda: (b"", "text/plain"))


def operations(tagged: bool) -> set[tuple[str, str]]:
    """(METHOD, path) of the document, of the edge-admin tag or of the rest."""
    return {(method.upper(), path) for path, item in SPEC["paths"].items()
            for method, op in item.items()
            if method in METHODS and (EDGE_TAG in op["tags"]) == tagged}


def test_the_document_is_valid_openapi() -> None:
    validate(SPEC)
    assert orjson.loads(DOCUMENT) == SPEC


def test_every_api_route_is_documented_and_nothing_else() -> None:
    routes = {(route.method, route.resource.canonical)
              for route in full_app().router.routes()
              if route.method != "HEAD" and route.resource is not None}
    assert routes == operations(tagged=False)


def test_the_edge_admin_routes_are_the_edges() -> None:
    posts = {Route.ADMIN_DRAIN, Route.ADMIN_CLOSE}  # as the edge's request.decide allows
    edge = {("POST" if route in posts else "GET", route.value) for route in ADMIN}
    assert edge == operations(tagged=True)
    for path, item in SPEC["paths"].items():
        tags = [tag for op in item.values() if isinstance(op, dict) for tag in op.get("tags", ())]
        assert ("servers" in item) == (EDGE_TAG in tags), path


def test_limits_are_the_configs_defaults() -> None:
    c = ApiConfig()
    push = SCHEMAS["PushRequest"]["properties"]
    assert push["ttl"]["maximum"] == c.max_ttl_s and push["ttl"]["minimum"] == 1
    assert push["ttl"]["default"] == c.default_ttl_s
    assert push["priority"]["enum"] == ["high", "normal", "low"]
    assert SCHEMAS["Target"]["properties"]["clients"]["maxItems"] == c.max_targets
    assert SCHEMAS["BatchRequest"]["properties"]["messages"]["maxItems"] == c.max_batch
    assert SCHEMAS["Id"]["maxLength"] == MAX_ID_CHARS
    assert f"at most {MAX_DATA_DEPTH} levels" in SCHEMAS["PushRequest"]["properties"]["data"][
        "description"]
    # A duplicate's id is the original message's (the queue's PutResult).
    assert "original" in SCHEMAS["PushAccepted"]["properties"]["id"]["description"]
    ack_ids = SCHEMAS["InboxAck"]["oneOf"][0]["properties"]["ids"]
    assert ack_ids["maxItems"] == c.max_inbox_page
    limit = next(p for p in SPEC["paths"]["/v1/inbox"]["get"]["parameters"]
                 if p["name"] == "limit")
    assert limit["schema"]["maximum"] == c.max_inbox_page
    for name, value in [("max_payload_bytes", c.max_payload_bytes),
                        ("max_batch_payload_bytes", c.max_batch_payload_bytes)]:
        assert f"`{name}` ({value})" in orjson.dumps(SPEC).decode()


@pytest.mark.parametrize(("path", "method", "statuses"), [
    ("/v1/push", "post", {"202", "400", "401", "403", "413", "429", "503"}),
    ("/v1/push/batch", "post", {"202", "400", "401", "403", "413", "429", "503"}),
    ("/v1/inbox", "get", {"200", "400", "401"}),
    ("/v1/inbox/ack", "post", {"200", "400", "401", "413"}),
    ("/dashboard/push", "post", {"202", "400", "401", "403", "413"}),
    ("/dashboard/nodes/{node_id}/drain", "post", {"202", "401", "403", "404"}),
    ("/demo/push", "post", {"202", "400", "401", "403", "429"}),
    ("/admin/clients/{client_id}/close", "post", {"200", "400", "401", "403", "404"}),
])
def test_documented_statuses(path: str, method: str, statuses: set[str]) -> None:
    assert statuses <= set(SPEC["paths"][path][method]["responses"])


GUARDED = [("/v1/push", "post"), ("/v1/push/batch", "post"), ("/dashboard/login", "post"),
           ("/dashboard/logout", "post"), ("/dashboard/snapshot", "get"),
           ("/dashboard/events", "get"), ("/dashboard/push", "post"),
           ("/dashboard/nodes/{node_id}/drain", "post"), ("/admin/status", "get"),
           ("/admin/drain", "post"), ("/admin/clients/{client_id}", "get"),
           ("/admin/clients/{client_id}/close", "post")]
"""Every operation the brute-force brake guards (router.api.throttle, the edge's admin
key): each may answer 429 `auth_throttled` with Retry-After."""


@pytest.mark.parametrize(("path", "method"), GUARDED)
def test_operations_with_a_key_document_the_brakes_429(path: str, method: str) -> None:
    answer = SPEC["paths"][path][method]["responses"]["429"]
    answer = SPEC["components"]["responses"][answer["$ref"].rpartition("/")[2]]
    assert "Retry-After" in answer["headers"]
    assert "auth_throttled" in answer["description"]


@pytest.fixture
async def http() -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(TestServer(full_app(), host="127.0.0.1", port=0))
    await client.start_server()
    yield client
    await client.close()


async def test_served_at_openapi_json(http: TestClient[Any, Any]) -> None:
    response = await http.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == SPEC
