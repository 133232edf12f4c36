"""The push-send API on a real loopback socket (port 0), driven by the aiohttp client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from core.errors import Unavailable
from core.tokens import AuthConfig
from registry.base import NodeInfo, NodeState, Registration
from registry.memory import MemoryRegistry
from registry.redis import RedisRegistry
from router.api.app import ApiStats, create_api_app
from router.base import Message, MessageQueue, Priority, PutResult, Target
from router.config import ApiConfig
from router.resolve import count_broadcast, resolve_clients
from router.stores.memory import MemoryQueue
from router.stores.redis_queue import RedisQueue
from tests.support.redis_servers import RedisServer

NOW_MS = 1_700_000_000_000
KEY = "secret-api-key"
CONFIG = ApiConfig(max_payload_bytes=1024, default_ttl_s=300, max_ttl_s=3600, max_targets=10,
                   max_batch=4, max_batch_payload_bytes=3000)
AUTH = AuthConfig(api_keys=("other-key", KEY))
HEADERS = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Api:
    http: TestClient[Any, Any]
    queue: MemoryQueue
    registry: MemoryRegistry

    async def push(self, body: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        kwargs.setdefault("headers", HEADERS)
        response = await self.http.post("/v1/push", json=body, **kwargs)
        return response.status, await response.json()

    async def batch(self, body: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        kwargs.setdefault("headers", HEADERS)
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        response = await self.http.post("/v1/push/batch", data=raw, **kwargs)
        return response.status, await response.json()

    async def queued(self) -> list[Message]:
        return [t.message for t in await self.queue.take("test", 100, 0)]


async def serve(queue: MessageQueue, registry: MemoryRegistry) -> TestClient[Any, Any]:
    app = create_api_app(
        config=CONFIG, auth=AUTH, queue=queue, registry=registry, clock_ms=lambda: NOW_MS
    )
    http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await http.start_server()
    return http


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    registry = MemoryRegistry(clock=lambda: 0.0)
    for client, user, device_type, node_id in [
        ("phone-1", "alice", "phone", "n1"),
        ("tv-1", "alice", "tv", "n2"),
        ("phone-2", "bob", "phone", "n1"),
    ]:
        await registry.register([Registration(client, user, device_type, node_id, 1)], 60)
    await registry.heartbeat_node(
        NodeInfo("n1", "a", "eu", NodeState.ACTIVE, 3, (("phone", 2), ("tv", 1))), 60
    )
    await registry.heartbeat_node(NodeInfo("n2", "b", "eu", NodeState.ACTIVE, 1, (("tv", 1),)), 60)
    await registry.heartbeat_node(NodeInfo("n3", "c", "eu", NodeState.DRAINING, 50), 60)
    queue = MemoryQueue(600.0, clock=lambda: 0.0)
    http = await serve(queue, registry)
    yield Api(http, queue, registry)
    await http.close()
    await queue.close()


# --- accepted -----------------------------------------------------------------------------------


async def test_healthz(api: Api) -> None:
    response = await api.http.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_push_to_a_client(api: Api) -> None:
    status, body = await api.push({"to": {"clients": ["phone-1"]}, "data": {"hello": 1}})
    assert (status, body["targets"]) == (202, 1)
    [queued] = await api.queued()
    assert queued.id == body["id"]
    assert queued.target == Target(clients=("phone-1",))
    assert orjson.loads(queued.payload) == {
        "id": body["id"], "topic": "default", "ts": NOW_MS, "data": {"hello": 1}
    }


async def test_push_to_a_user_reaches_both_devices(api: Api) -> None:
    status, body = await api.push({"to": {"users": ["alice"]}, "data": 1, "priority": "high"})
    assert (status, body["targets"]) == (202, 2)
    [queued] = await api.queued()
    assert queued.target == Target(clients=("phone-1", "tv-1"))  # users resolved away


async def test_push_named_client_and_user_count_each_client_once(api: Api) -> None:
    _, body = await api.push({"to": {"clients": ["tv-1", "never-seen"], "users": ["alice"]},
                              "data": 1})
    assert body["targets"] == 3
    [queued] = await api.queued()
    assert queued.target.clients == ("tv-1", "never-seen", "phone-1")


async def test_push_with_device_type_filter(api: Api) -> None:
    to = {"users": ["alice", "bob"], "clients": ["never-seen"], "device_types": ["tv"]}
    status, body = await api.push({"to": to, "data": 1})
    assert (status, body["targets"]) == (202, 1)
    [queued] = await api.queued()
    assert queued.target == Target(clients=("tv-1",), device_types=frozenset({"tv"}))


async def test_push_to_a_user_without_devices_is_accepted_with_no_targets(api: Api) -> None:
    status, body = await api.push({"to": {"users": ["nobody"]}, "data": 1})
    assert (status, body["targets"]) == (202, 0)


async def test_broadcast_counts_connections_on_active_nodes(api: Api) -> None:
    status, body = await api.push({"to": {"broadcast": True}, "data": 1})
    assert (status, body["targets"]) == (202, 4)  # n3 is draining
    _, narrowed = await api.push({"to": {"broadcast": True, "device_types": ["tv"]}, "data": 1})
    assert narrowed["targets"] == 2
    queued = await api.queued()
    assert [m.target.broadcast for m in queued] == [True, True]
    assert queued[1].target.device_types == frozenset({"tv"})


async def test_duplicate_dedup_key_is_accepted_but_not_queued(api: Api) -> None:
    push = {"to": {"clients": ["phone-1"]}, "data": 1, "dedup_key": "order-7"}
    first_status, first = await api.push(push)
    second_status, second = await api.push(push)
    assert (first_status, first["targets"]) == (202, 1)
    assert "duplicate" not in first
    assert second_status == 202
    assert second == {"id": first["id"], "targets": 0, "duplicate": True}  # the original's id
    assert [m.id for m in await api.queued()] == [first["id"]]


async def test_any_content_type_is_read_as_json(api: Api) -> None:
    body = orjson.dumps({"to": {"clients": ["phone-1"]}, "data": 1})
    headers = {**HEADERS, "Content-Type": "text/plain"}
    response = await api.http.post("/v1/push", data=body, headers=headers)
    assert response.status == 202


# --- rejected -----------------------------------------------------------------------------------


async def test_missing_api_key_is_401(api: Api) -> None:
    status, body = await api.push({"to": {"clients": ["c"]}, "data": 1}, headers={})
    assert status == 401
    assert body["error"]["code"] == "unauthorized"


async def test_non_bearer_authorization_is_401(api: Api) -> None:
    response = await api.http.post("/v1/push", json={}, headers={"Authorization": f"Basic {KEY}"})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_wrong_api_key_is_403(api: Api) -> None:
    status, body = await api.push({"to": {"clients": ["c"]}, "data": 1},
                                  headers={"Authorization": "Bearer nope"})
    assert status == 403
    assert body["error"]["code"] == "forbidden"
    assert await api.queued() == []


BAD: list[tuple[str, Any, str]] = [
    ("not json", b"{nope", "body"),
    ("not an object", b"[1]", "body"),
    ("unknown key", {"to": {"clients": ["c"]}, "data": 1, "extra": 1}, "extra"),
    ("to missing", {"data": 1}, "to"),
    ("data missing", {"to": {"clients": ["c"]}}, "data"),
    ("nobody", {"to": {}, "data": 1}, "to"),
    ("unknown to key", {"to": {"clients": ["c"], "x": 1}, "data": 1}, "to.x"),
    ("broadcast and clients", {"to": {"broadcast": True, "clients": ["c"]}, "data": 1},
     "to.broadcast"),
    ("bad client id", {"to": {"clients": ["a", "b", "c", 4]}, "data": 1}, "to.clients[3]"),
    ("bad user id", {"to": {"users": [""]}, "data": 1}, "to.users[0]"),
    ("too many targets", {"to": {"clients": [f"c{i}" for i in range(11)]}, "data": 1}, "to"),
    ("ttl bool", {"to": {"clients": ["c"]}, "data": 1, "ttl": True}, "ttl"),
    ("ttl too long", {"to": {"clients": ["c"]}, "data": 1, "ttl": 3601}, "ttl"),
    ("priority", {"to": {"clients": ["c"]}, "data": 1, "priority": "asap"}, "priority"),
    ("topic", {"to": {"clients": ["c"]}, "data": 1, "topic": ""}, "topic"),
    ("dedup_key", {"to": {"clients": ["c"]}, "data": 1, "dedup_key": 5}, "dedup_key"),
]


@pytest.mark.parametrize(("body", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_invalid_request_is_400_naming_the_field(api: Api, body: Any, field: str) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    response = await api.http.post("/v1/push", data=raw, headers=HEADERS)
    assert response.status == 400
    assert response.content_type == "application/json"
    error = (await response.json())["error"]
    assert (error["code"], error["field"]) == ("invalid_request", field)
    assert await api.queued() == []


async def test_body_over_the_limit_is_413(api: Api) -> None:
    body = orjson.dumps({"to": {"clients": ["c"]}, "data": "x" * CONFIG.max_payload_bytes})
    response = await api.http.post("/v1/push", data=body, headers=HEADERS)
    assert response.status == 413
    error = (await response.json())["error"]
    assert error["code"] == "payload_too_large"
    assert str(CONFIG.max_payload_bytes) in error["message"]


async def test_chunked_body_over_the_limit_is_413(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * (CONFIG.max_payload_bytes // 2)

    response = await api.http.post("/v1/push", data=chunks(), headers=HEADERS)
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "payload_too_large"


async def test_unknown_path_is_404_json(api: Api) -> None:
    response = await api.http.get("/v2/nothing")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_wrong_method_is_405_json(api: Api) -> None:
    response = await api.http.get("/v1/push")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert (await response.json())["error"]["code"] == "method_not_allowed"


class BrokenQueue(MemoryQueue):
    def __init__(self, error: Exception) -> None:
        super().__init__(600.0)
        self.error = error

    async def put(self, message: Message) -> PutResult:
        raise self.error


async def test_unexpected_error_is_500_without_details(caplog: pytest.LogCaptureFixture) -> None:
    http = await serve(BrokenQueue(RuntimeError("secret detail")), MemoryRegistry())
    try:
        response = await http.post(
            "/v1/push", json={"to": {"clients": ["c"]}, "data": 1}, headers=HEADERS
        )
        assert response.status == 500
        body = await response.text()
    finally:
        await http.close()
    assert orjson.loads(body)["error"]["code"] == "internal_error"
    assert "secret detail" not in body
    assert "secret detail" in caplog.text


async def test_unavailable_queue_is_503_with_retry_after() -> None:
    http = await serve(BrokenQueue(Unavailable("full", retry_after_s=2.5)), MemoryRegistry())
    try:
        response = await http.post(
            "/v1/push", json={"to": {"clients": ["c"]}, "data": 1}, headers=HEADERS
        )
        assert response.status == 503
        assert response.headers["Retry-After"] == "3"
        assert (await response.json())["error"]["code"] == "unavailable"
    finally:
        await http.close()


# --- batch -------------------------------------------------------------------------------------


def item(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"to": {"clients": ["phone-1"]}, "data": 1}
    body.update(changes)
    return body


async def test_batch_answers_per_message_in_order(api: Api) -> None:
    messages = [
        item(data="a"),
        item(to={"users": ["alice"]}, priority="high"),
        item(to={"broadcast": True, "device_types": ["tv"]}),
        item(to={"users": ["nobody"]}),
    ]
    status, body = await api.batch({"messages": messages})
    assert status == 202
    results = body["results"]
    assert [r["targets"] for r in results] == [1, 2, 2, 0]
    ids = [r["id"] for r in results]
    assert ids == sorted(ids) and len(set(ids)) == 4  # ids increase in batch order
    queued = {m.id: m for m in await api.queued()}
    assert set(queued) == set(ids)
    assert queued[ids[1]].target == Target(clients=("phone-1", "tv-1"))  # users resolved away
    assert queued[ids[2]].target.broadcast
    assert orjson.loads(queued[ids[0]].payload)["data"] == "a"


async def test_batch_repeated_dedup_key_is_a_duplicate_within_the_batch(api: Api) -> None:
    messages = [item(dedup_key="k"), item(dedup_key="k"), item(dedup_key="other")]
    status, body = await api.batch({"messages": messages})
    assert status == 202
    assert [r.get("duplicate", False) for r in body["results"]] == [False, True, False]
    assert body["results"][1] == {"id": body["results"][0]["id"], "targets": 0,
                                  "duplicate": True}
    assert len(await api.queued()) == 2


BAD_BATCHES: list[tuple[str, Any, str]] = [
    ("not json", b"{nope", "body"),
    ("not an object", [item()], "body"),
    ("no messages", {}, "messages"),
    ("empty", {"messages": []}, "messages"),
    ("not a list", {"messages": item()}, "messages"),
    ("too many", {"messages": [item()] * 5}, "messages"),
    ("unknown key", {"messages": [item()], "extra": 1}, "extra"),
    ("item not an object", {"messages": [item(), 7]}, "messages[1]"),
    ("bad client id", {"messages": [item(), item(), item(to={"clients": [""]})]},
     "messages[2].to.clients[0]"),
    ("bad ttl", {"messages": [item(), item(ttl=0)]}, "messages[1].ttl"),
    ("item unknown key", {"messages": [item(oops=1)]}, "messages[0].oops"),
    ("item missing data", {"messages": [{"to": {"clients": ["c"]}}]}, "messages[0].data"),
]


@pytest.mark.parametrize(("body", "field"), [b[1:] for b in BAD_BATCHES],
                         ids=[b[0] for b in BAD_BATCHES])
async def test_batch_with_one_bad_message_is_400_naming_it_and_enqueues_nothing(
    api: Api, body: Any, field: str
) -> None:
    status, answer = await api.batch(body)
    assert status == 400
    assert (answer["error"]["code"], answer["error"]["field"]) == ("invalid_request", field)
    assert await api.queued() == []


async def test_batch_message_over_the_message_limit_is_413_naming_it(api: Api) -> None:
    big = item(data="x" * CONFIG.max_payload_bytes)
    status, answer = await api.batch({"messages": [item(), big]})
    assert status == 413
    assert answer["error"]["field"] == "messages[1].data"
    assert await api.queued() == []


async def test_batch_body_has_its_own_larger_limit(api: Api) -> None:
    # Over the single-push limit, within the batch limit: accepted.
    messages = [item(data="x" * (CONFIG.max_payload_bytes // 2)) for _ in range(3)]
    status, _ = await api.batch({"messages": messages})
    assert status == 202
    over = [item(data="x" * (CONFIG.max_payload_bytes - 100)) for _ in range(4)]
    status, answer = await api.batch({"messages": over})
    assert status == 413
    assert str(CONFIG.max_batch_payload_bytes) in answer["error"]["message"]


async def test_batch_needs_the_api_key(api: Api) -> None:
    status, _ = await api.batch({"messages": [item()]}, headers={})
    assert status == 401
    status, _ = await api.batch({"messages": [item()]}, headers={"Authorization": "Bearer no"})
    assert status == 403
    assert await api.queued() == []


async def test_batch_refused_by_a_full_queue_part_way_answers_the_rest_unavailable() -> None:
    queue = MemoryQueue(600.0, max_depth=2)
    http = await serve(queue, MemoryRegistry())
    try:
        response = await http.post("/v1/push/batch", headers=HEADERS,
                                   json={"messages": [item(), item(), item(), item()]})
        assert response.status == 202
        results = (await response.json())["results"]
    finally:
        await http.close()
        await queue.close()
    assert ["id" in r for r in results] == [True, True, False, False]
    assert [r["error"]["code"] for r in results[2:]] == ["unavailable", "unavailable"]


async def test_batch_refused_at_its_first_message_is_503() -> None:
    http = await serve(BrokenQueue(Unavailable("full", retry_after_s=1)), MemoryRegistry())
    try:
        response = await http.post("/v1/push/batch", headers=HEADERS,
                                   json={"messages": [item(), item()]})
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
    finally:
        await http.close()


# --- resolution, directly -----------------------------------------------------------------------


async def test_resolve_rejects_a_broadcast(api: Api) -> None:
    with pytest.raises(ValueError):
        await resolve_clients(Target(broadcast=True), api.registry)


async def test_resolve_unknown_client_only_without_a_type_filter(api: Api) -> None:
    assert await resolve_clients(Target(clients=("ghost",)), api.registry) == ("ghost",)
    filtered = Target(clients=("ghost", "phone-1"), device_types=frozenset({"phone"}))
    assert await resolve_clients(filtered, api.registry) == ("phone-1",)


async def test_count_broadcast_ignores_draining_nodes(api: Api) -> None:
    assert await count_broadcast(frozenset(), api.registry) == 4
    assert await count_broadcast(frozenset({"phone"}), api.registry) == 2


async def test_stats_count_enqueued_and_deduplicated_by_priority_and_errors() -> None:
    registry = MemoryRegistry(clock=lambda: 0.0)
    queue = MemoryQueue(600.0, clock=lambda: 0.0)
    stats = ApiStats()
    app = create_api_app(config=CONFIG, auth=AUTH, queue=queue, registry=registry,
                         clock_ms=lambda: NOW_MS, stats=stats,
                         metrics=lambda: (b"zuulpush_x 1\n", "text/plain; version=0.0.4"))
    http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await http.start_server()
    try:
        api = Api(http, queue, registry)
        body = {"to": {"clients": ["c1"]}, "data": 1, "priority": "high", "dedup_key": "k"}
        assert (await api.push(body))[0] == 202
        assert (await api.push(body))[0] == 202  # a duplicate
        assert (await api.batch({"messages": [{"to": {"clients": ["c1"]}, "data": 2}]}))[0] == 202
        assert (await api.push(body, headers={}))[0] == 401
        assert (await api.push(body, headers={"Authorization": "Bearer wrong"}))[0] == 403
        assert (await api.push({"to": {}, "data": 1}))[0] == 400
        assert (await http.get("/nowhere")).status == 404
        page = await http.get("/metrics")  # no key: like /healthz
        assert (page.status, await page.read()) == (200, b"zuulpush_x 1\n")
        assert page.headers["Content-Type"] == "text/plain; version=0.0.4"
    finally:
        await http.close()
        await queue.close()
    assert stats.enqueued == {Priority.HIGH: 1, Priority.NORMAL: 1}
    assert stats.deduped == {Priority.HIGH: 1}
    assert stats.rejected == {401: 1, 403: 1, 400: 1, 404: 1}
    assert stats.auth_failures == {"api_key": 2}


async def test_no_metrics_route_unless_given_a_page(api: Api) -> None:
    assert (await api.http.get("/metrics")).status == 404


async def test_redis_down_under_a_user_push_or_a_broadcast_is_a_503_not_a_500(
        redis_factory: Callable[..., RedisServer]) -> None:
    """Pushes that must read the registry (a user's devices, a broadcast's reach) while its Redis
    is unreachable, or while Redis refuses writes for memory, answer 503 with a JSON body and
    `Retry-After`, like pushes to named clients do."""
    server = redis_factory()
    registry = RedisRegistry.from_url(server.url)
    queue = RedisQueue.from_url(server.url, dedup_window_s=60)
    app = create_api_app(config=CONFIG, auth=AUTH, queue=queue, registry=registry)
    http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await http.start_server()
    try:
        server.stop()
        for body in ({"to": {"users": ["alice"]}, "data": 1},
                     {"to": {"broadcast": True}, "data": 1},
                     {"to": {"clients": ["c1"]}, "data": 1}):
            response = await http.post("/v1/push", json=body, headers=HEADERS)
            answer = await response.json()
            assert response.status == 503, answer
            assert answer["error"]["code"] == "unavailable"
            assert "Redis unreachable" in answer["error"]["message"]
            assert response.headers["Retry-After"] == "1"
        server.start()
        server.cli("CONFIG", "SET", "maxmemory", "1")  # under noeviction: writes are refused
        response = await http.post("/v1/push", json={"to": {"clients": ["c1"]}, "data": 1},
                                   headers=HEADERS)
        answer = await response.json()
        assert response.status == 503 and "OOM" in answer["error"]["message"], answer
    finally:
        await http.close()
        await queue.close()
        await registry.close()
