"""POST /v1/push rejections over the real server: JSON errors naming the field, API-key checks,
the body size limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from .clients import PushApi, http_exchange, push_api
from .servers import ServerProcess

MAX_BODY = 64 * 1024
OK_TO = {"clients": ["someone"]}

BAD_BODIES: dict[str, tuple[bytes | dict[str, Any], str]] = {
    "not-json": (b'{"to": ', "body"),
    "not-an-object": (b"[1, 2]", "body"),
    "to-missing": ({"data": 1}, "to"),
    "data-missing": ({"to": OK_TO}, "data"),
    "no-target": ({"to": {}, "data": 1}, "to"),
    "broadcast-with-clients": ({"to": {"clients": ["a"], "broadcast": True}, "data": 1},
                               "to.broadcast"),
    "bad-priority": ({"to": OK_TO, "data": 1, "priority": "urgent"}, "priority"),
    "ttl-zero": ({"to": OK_TO, "data": 1, "ttl": 0}, "ttl"),
    "ttl-bool": ({"to": OK_TO, "data": 1, "ttl": True}, "ttl"),
    "ttl-float": ({"to": OK_TO, "data": 1, "ttl": 1.5}, "ttl"),
    "client-id-type": ({"to": {"clients": ["ok", 7]}, "data": 1}, "to.clients[1]"),
    "clients-not-list": ({"to": {"clients": "a"}, "data": 1}, "to.clients"),
    "unknown-key": ({"to": OK_TO, "data": 1, "colour": "red"}, "colour"),
    "unknown-to-key": ({"to": {"clients": ["a"], "groups": ["g"]}, "data": 1}, "to.groups"),
}


@pytest.fixture
async def api(server: ServerProcess) -> AsyncIterator[PushApi]:
    async with push_api(server.api, server.api_key) as client:
        yield client


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_invalid_body_gets_400_naming_the_field(api: PushApi, case: str) -> None:
    body, field = BAD_BODIES[case]
    status, answer = await api.push(body)
    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["field"] == field
    assert answer["error"]["message"]


async def test_accepted_push_is_202_with_id_and_targets(api: PushApi) -> None:
    status, answer = await api.push({"to": OK_TO, "data": None, "priority": "high", "ttl": 60})
    assert status == 202
    assert isinstance(answer["id"], str) and len(answer["id"]) == 26
    assert answer["targets"] == 1


async def test_repeated_dedup_key_is_202_duplicate(api: PushApi) -> None:
    body = {"to": OK_TO, "data": 1, "dedup_key": f"dedup-{id(api)}"}
    first = await api.push(body)
    second = await api.push(body)
    assert first[0] == second[0] == 202
    assert "duplicate" not in first[1]
    assert second[1]["duplicate"] is True and second[1]["targets"] == 0


async def test_missing_api_key_is_401_and_wrong_key_is_403(server: ServerProcess) -> None:
    body = orjson.dumps({"to": OK_TO, "data": 1})
    async with aiohttp.ClientSession() as session:
        async with session.post(server.api + "/v1/push", data=body) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert (await response.json())["error"]["code"] == "unauthorized"
        async with session.post(server.api + "/v1/push", data=body,
                                headers={"Authorization": "Bearer not-the-key"}) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "forbidden"
        async with session.post(server.api + "/v1/push", data=body,
                                headers={"Authorization": f"Basic {server.api_key}"}) as response:
            assert response.status == 401


async def test_body_over_64_kib_is_413(api: PushApi) -> None:
    padding = "x" * MAX_BODY
    status, answer = await api.push({"to": OK_TO, "data": padding})
    assert status == 413
    assert answer["error"]["code"] == "payload_too_large"
    assert str(MAX_BODY) in answer["error"]["message"]


async def test_chunked_body_over_64_kib_is_413(server: ServerProcess) -> None:
    """No Content-Length: the limit applies while reading."""
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"to": {"clients": ["a"]}, "data": "'
        for _ in range(20):
            yield b"x" * 4096
        yield b'"}'

    async with (aiohttp.ClientSession() as session,
                session.post(server.api + "/v1/push", data=chunks(),
                             headers={"Authorization": f"Bearer {server.api_key}"}) as response):
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "payload_too_large"


async def test_body_just_under_the_limit_is_accepted(api: PushApi) -> None:
    envelope = len(orjson.dumps({"to": OK_TO, "data": ""}))
    status, answer = await api.push({"to": OK_TO, "data": "x" * (MAX_BODY - envelope)})
    assert status == 202, answer


async def test_unknown_path_and_wrong_method_are_json(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(server.api + "/v1/nope") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"
        async with session.get(server.api + "/v1/push") as response:
            assert response.status == 405
            assert "POST" in response.headers["Allow"]
            assert (await response.json())["error"]["code"] == "method_not_allowed"
        async with session.get(server.api + "/healthz") as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})


async def test_raw_request_without_content_type(server: ServerProcess) -> None:
    body = orjson.dumps({"to": OK_TO, "data": 1})
    request = (f"POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.api_key}"
               f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    answer = await http_exchange(server.api, request)
    assert answer.status == 202
    assert answer.json()["targets"] == 1
