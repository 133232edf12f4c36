"""The device inbox API (`GET /v1/inbox`, `POST /v1/inbox/ack`) on a real loopback socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from core.tokens import AuthConfig, issue_token
from registry.memory import MemoryRegistry
from router.api.app import create_api_app
from router.base import Broadcast, InboxEntry, Message, Priority, Target
from router.config import ApiConfig
from router.stores.memory import MemoryBroadcastLog, MemoryInbox, MemoryQueue

NOW_MS = 1_700_000_000_000
SECRET = "inbox-api-test-secret-of-at-least-32-bytes"
KEY = "backend-key"
CONFIG = ApiConfig(max_inbox_page=5)
AUTH = AuthConfig(secret=SECRET, api_keys=(KEY,))


def token(client_id: str, *, ttl_s: int = 3600, secret: str = SECRET) -> str:
    return issue_token(secret, client_id=client_id, user_id="u1", device_type="tv", ttl_s=ttl_s)


def mid(n: int) -> str:
    """A well-formed message id (`core.ids`), in order of `n`."""
    return f"{'0' * 21}M{n:04d}"


def message(n: int) -> Message:
    return Message.create(id=mid(n), topic="news", data={"n": n}, ts_ms=NOW_MS,
                          priority=Priority.NORMAL, ttl_s=60, target=Target(clients=("tv-1",)))


@dataclass
class Api:
    http: TestClient[Any, Any]
    inbox: MemoryInbox
    history: MemoryBroadcastLog

    async def broadcast(self, n: int, *device_types: str) -> None:
        m = message(n)
        await self.history.add(Broadcast(m.id, m.payload, m.expires_at_ms,
                                         frozenset(device_types)))

    async def store(self, client_id: str, *numbers: int) -> None:
        for n in numbers:
            m = message(n)
            await self.inbox.add([client_id], InboxEntry(m.id, m.payload, m.expires_at_ms))

    async def pull(self, query: str = "", *, client_id: str = "tv-1",
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        if headers is None:
            headers = {"Authorization": f"Bearer {token(client_id)}"}
        response = await self.http.get(f"/v1/inbox{query}", headers=headers)
        return response.status, await response.json()

    async def ack(self, body: Any, *, client_id: str = "tv-1",
                  headers: dict[str, str] | None = None) -> tuple[int, Any]:
        if headers is None:
            headers = {"Authorization": f"Bearer {token(client_id)}"}
        response = await self.http.post("/v1/inbox/ack", json=body, headers=headers)
        return response.status, await response.json()

    async def ids(self, client_id: str = "tv-1") -> list[str]:
        return [e.id for e in await self.inbox.after(client_id, None, 100)]


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    inbox = MemoryInbox(100, clock_ms=lambda: NOW_MS)
    history = MemoryBroadcastLog(100, clock_ms=lambda: NOW_MS)
    queue = MemoryQueue(600.0)
    app = create_api_app(config=CONFIG, auth=AUTH, queue=queue, registry=MemoryRegistry(),
                         inbox=inbox, history=history, clock_ms=lambda: NOW_MS)
    http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await http.start_server()
    yield Api(http, inbox, history)
    await http.close()
    await queue.close()


# --- pull ---------------------------------------------------------------------------------------


async def test_pull_returns_the_device_facing_messages_oldest_first(api: Api) -> None:
    await api.store("tv-1", 2, 1, 3)
    status, body = await api.pull()
    assert status == 200
    assert body == {"messages": [orjson.loads(message(n).payload) for n in (1, 2, 3)],
                    "more": False}
    assert await api.ids() == [mid(1), mid(2), mid(3)]  # a pull removes nothing


async def test_pull_pages_with_after_and_limit(api: Api) -> None:
    await api.store("tv-1", 1, 2, 3, 4)
    _, first = await api.pull("?limit=2")
    assert ([m["id"] for m in first["messages"]], first["more"]) == ([mid(1), mid(2)], True)
    _, rest = await api.pull(f"?limit=2&after={mid(2)}")
    assert ([m["id"] for m in rest["messages"]], rest["more"]) == ([mid(3), mid(4)], False)


async def test_pull_default_limit_is_capped_by_the_page_maximum(api: Api) -> None:
    await api.store("tv-1", *range(1, 8))
    _, body = await api.pull()
    assert (len(body["messages"]), body["more"]) == (CONFIG.max_inbox_page, True)


async def test_pull_after_an_id_merges_the_missed_broadcasts_for_its_device_type(
    api: Api,
) -> None:
    await api.store("tv-1", 2, 4)
    await api.broadcast(1)
    await api.broadcast(3, "tv")
    await api.broadcast(5, "phone")  # not for this device (its token says "tv")
    await api.broadcast(6)
    _, body = await api.pull(f"?after={mid(1)}")
    assert ([m["id"] for m in body["messages"]], body["more"]) == (
        [mid(2), mid(3), mid(4), mid(6)], False)
    assert body["messages"][1] == orjson.loads(message(3).payload)  # as devices get it live


async def test_pull_without_after_is_the_inbox_alone(api: Api) -> None:
    await api.store("tv-1", 2)
    await api.broadcast(1)
    _, body = await api.pull()
    assert [m["id"] for m in body["messages"]] == [mid(2)]


async def test_pull_of_broadcasts_pages_without_skipping_any(api: Api) -> None:
    # Many broadcasts for other device types lie between the ones this device gets: a page never
    # jumps past a broadcast it has not returned, so following `after` reads every one once.
    await api.store("tv-1", 40)
    for n in range(1, 30):
        await api.broadcast(n, "tv" if n % 7 == 0 else "phone")
    seen: list[str] = []
    after, more = mid(0), True
    for _ in range(20):  # bounded
        if not more:
            break
        _, body = await api.pull(f"?after={after}&limit=2")
        ids = [m["id"] for m in body["messages"]]
        seen += ids
        more = body["more"]
        after = ids[-1] if ids else after
    assert not more
    assert seen == [mid(7), mid(14), mid(21), mid(28), mid(40)]


async def test_pull_reads_only_the_tokens_own_inbox(api: Api) -> None:
    await api.store("tv-1", 1)
    await api.store("tv-2", 2)
    _, body = await api.pull("?client_id=tv-1&cid=tv-1", client_id="tv-2")
    assert [m["id"] for m in body["messages"]] == [mid(2)]


async def test_token_may_come_in_the_query(api: Api) -> None:
    await api.store("tv-1", 1)
    status, body = await api.pull(f"?token={token('tv-1')}", headers={})
    assert (status, len(body["messages"])) == (200, 1)


BAD_TOKENS: list[tuple[str, dict[str, str]]] = [
    ("missing", {}),
    ("api key", {"Authorization": f"Bearer {KEY}"}),
    ("other secret", {"Authorization": f"Bearer {token('tv-1', secret='x' * 40)}"}),
    ("expired", {"Authorization": f"Bearer {token('tv-1', ttl_s=-10)}"}),
    ("not bearer", {"Authorization": f"Basic {token('tv-1')}"}),
]


@pytest.mark.parametrize("headers", [h for _, h in BAD_TOKENS], ids=[n for n, _ in BAD_TOKENS])
async def test_bad_or_missing_token_is_401_invalid_token(api: Api, headers: dict[str, str]
                                                         ) -> None:
    await api.store("tv-1", 1)
    for status, body in (await api.pull(headers=headers),
                         await api.ack({"through": mid(9999)}, headers=headers)):
        assert (status, body["error"]["code"]) == (401, "invalid_token")
    assert await api.ids() == [mid(1)]


@pytest.mark.parametrize(("query", "field"), [
    ("?limit=0", "limit"), ("?limit=6", "limit"), ("?limit=x", "limit"), ("?limit=-1", "limit"),
    ("?after=", "after"), ("?after=" + "x" * 257, "after"), ("?after=zzz", "after"),
    ("?after=" + mid(1).lower(), "after"), ("?after=M0001", "after"),
])
async def test_bad_query_is_400_naming_it(api: Api, query: str, field: str) -> None:
    status, body = await api.pull(query)
    assert status == 400
    assert (body["error"]["code"], body["error"]["field"]) == ("invalid_request", field)


# --- ack ----------------------------------------------------------------------------------------


async def test_ack_ids_removes_them_and_counts(api: Api) -> None:
    await api.store("tv-1", 1, 2, 3)
    status, body = await api.ack({"ids": [mid(1), mid(3), mid(9)]})
    assert (status, body) == (200, {"removed": 2})
    assert await api.ids() == [mid(2)]
    assert await api.ack({"ids": [mid(1)]}) == (200, {"removed": 0})  # idempotent


async def test_ack_through_removes_what_pulls_returned_up_to_it(api: Api) -> None:
    await api.store("tv-1", 1, 2, 3)
    await api.pull("?limit=2")
    assert await api.ack({"through": mid(2)}) == (200, {"removed": 2})
    assert await api.ids() == [mid(3)]


async def test_ack_through_keeps_what_no_pull_returned(api: Api) -> None:
    """A message stored after the pull passed its place (out of id order: a priority, a router
    that was killed with it taken) waits for the next pull: "through" does not remove it."""
    await api.store("tv-1", 1, 3)
    _, body = await api.pull()
    await api.store("tv-1", 2)
    assert await api.ack({"through": body["messages"][-1]["id"]}) == (200, {"removed": 2})
    _, again = await api.pull()
    assert [m["id"] for m in again["messages"]] == [mid(2)]


async def test_ack_touches_only_the_tokens_own_inbox(api: Api) -> None:
    await api.store("tv-1", 1)
    await api.store("tv-2", 1)
    assert await api.ack({"through": mid(1)}, client_id="tv-2") == (200, {"removed": 1})
    assert await api.ids("tv-1") == [mid(1)]


@pytest.mark.parametrize(("body", "field"), [
    ({}, "ids"),
    ({"ids": ["a"], "through": "b"}, "ids"),
    ({"ids": []}, "ids"),
    ({"ids": mid(1)}, "ids"),
    ({"ids": ["a", 7]}, "ids[1]"),
    ({"ids": [f"M{n}" for n in range(6)]}, "ids"),
    ({"through": ""}, "through"),
    ({"through": None}, "through"),
    ({"through": "zzz"}, "through"),
    ({"through": mid(1).lower()}, "through"),
    ({"ids": ["a"], "extra": 1}, "extra"),
    ([], "body"),
])
async def test_bad_ack_is_400_naming_the_field_and_removes_nothing(
    api: Api, body: Any, field: str
) -> None:
    await api.store("tv-1", 1)
    status, answer = await api.ack(body)
    assert status == 400
    assert (answer["error"]["code"], answer["error"]["field"]) == ("invalid_request", field)
    assert await api.ids() == [mid(1)]


async def test_without_an_inbox_the_routes_are_absent() -> None:
    queue = MemoryQueue(600.0)
    app = create_api_app(config=CONFIG, auth=AuthConfig(api_keys=(KEY,)), queue=queue,
                         registry=MemoryRegistry())
    http: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await http.start_server()
    try:
        response = await http.get("/v1/inbox", headers={"Authorization": f"Bearer {token('c')}"})
        assert response.status == 404
    finally:
        await http.close()
        await queue.close()
