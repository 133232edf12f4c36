"""The edge's HTTP answers before any upgrade: bad tokens, bad upgrades, unknown paths, slow or
oversized request heads. Every rejection is JSON with its status, then the connection closes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import pytest
from websockets.exceptions import InvalidStatus

from .clients import (
    HttpAnswer,
    http_exchange,
    parse_http_answer,
    raw_connection,
    read_to_eof,
    ws_connect,
    ws_request,
    ws_url,
)
from .servers import HANDSHAKE_TIMEOUT_S, SECRET, ServerProcess

Ids = Callable[[str], str]


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "user", "cid": "bad-token-client", "dt": "phone", "iat": now,
              "exp": now + 3600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


BAD_TOKENS = {
    "missing": None,
    "malformed": "not.a.jwt",
    "garbage": "%%%",
    "expired": jwt.encode(_claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
                          SECRET, algorithm="HS256"),
    "alg-none": jwt.encode(_claims(), None, algorithm="none"),  # type: ignore[arg-type]
    "wrong-secret": jwt.encode(_claims(), "another-secret-0123456789abcdefghij",
                               algorithm="HS256"),
    "missing-claim": jwt.encode(_claims(dt=None), SECRET, algorithm="HS256"),
    "empty-claim": jwt.encode(_claims(cid=""), SECRET, algorithm="HS256"),
    "tampered": jwt.encode(_claims(), SECRET, algorithm="HS256")[:-3] + "AAA",
}


def _path(route: str, token: str | None) -> str:
    return route if token is None else f"{route}?token={token}"


def assert_json_error(answer: HttpAnswer, status: int, code: str | None = None) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body)
    connection = {t.strip().lower() for t in answer.headers.get("connection", "").split(",")}
    assert "close" in connection, answer.headers
    error = answer.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_token_gets_401_from_aiohttp_ws_connect(server: ServerProcess, case: str
                                                          ) -> None:
    url = ws_url(server.edge) + ("" if BAD_TOKENS[case] is None else f"?token={BAD_TOKENS[case]}")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=2))
    assert caught.value.status == 401


@pytest.mark.parametrize("route", ["/ws", "/sse"])
@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_token_gets_401_json_before_any_upgrade(server: ServerProcess, case: str,
                                                          route: str) -> None:
    request = ws_request(_path(route, BAD_TOKENS[case]), upgrade=route == "/ws")
    answer = await http_exchange(server.edge, request)
    assert_json_error(answer, 401, "invalid_token")
    assert "upgrade" not in answer.headers


async def test_bad_bearer_and_cookie_tokens_get_401(server: ServerProcess) -> None:
    for header in (f"Authorization: Bearer {BAD_TOKENS['wrong-secret']}",
                   f"Cookie: zuulpush_token={BAD_TOKENS['expired']}"):
        answer = await http_exchange(server.edge, ws_request("/ws", extra=[header]))
        assert_json_error(answer, 401, "invalid_token")


async def test_websockets_client_sees_401_with_json_body(server: ServerProcess) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with ws_connect(ws_url(server.edge, token=str(BAD_TOKENS["alg-none"]))):
            pass
    response = caught.value.response
    assert response.status_code == 401
    assert b"invalid_token" in response.body


async def test_token_in_bearer_header_or_cookie_is_accepted(server: ServerProcess, ids: Ids
                                                            ) -> None:
    async with aiohttp.ClientSession() as session:
        for headers in ({"Authorization": f"Bearer {server.token(ids('bearer'))}"},
                        {"Cookie": f"zuulpush_token={server.token(ids('cookie'))}"}):
            async with session.ws_connect(ws_url(server.edge), headers=headers,
                                          timeout=aiohttp.ClientWSTimeout(ws_close=2)) as ws:
                assert not ws.closed


BAD_UPGRADES = {
    "no-upgrade-header": ([], 426),
    "no-connection-upgrade": (["Upgrade: websocket", "Sec-WebSocket-Version: 13",
                               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="], 400),
    "wrong-version": (["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 8",
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="], 426),
    "no-key": (["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"], 400),
    "short-key": (["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                   "Sec-WebSocket-Key: c2hvcnQ="], 400),
}


@pytest.mark.parametrize("case", list(BAD_UPGRADES))
async def test_bad_websocket_upgrade_gets_json_error(server: ServerProcess, ids: Ids,
                                                     case: str) -> None:
    headers, status = BAD_UPGRADES[case]
    path = f"/ws?token={server.token(ids('phone'))}"
    answer = await http_exchange(server.edge, ws_request(path, extra=headers, upgrade=False))
    assert_json_error(answer, status)
    if case == "no-upgrade-header":
        assert answer.headers.get("upgrade") == "websocket"
    if case == "wrong-version":
        assert answer.headers.get("sec-websocket-version") == "13"


async def test_wrong_method_and_http_version_get_json_errors(server: ServerProcess, ids: Ids
                                                             ) -> None:
    path = f"/sse?token={server.token(ids('web'))}"
    answer = await http_exchange(
        server.edge, f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    assert_json_error(answer, 405, "method_not_allowed")
    assert answer.headers.get("allow") == "GET"
    answer = await http_exchange(server.edge, f"GET {path} HTTP/1.0\r\n\r\n".encode())
    assert_json_error(answer, 400)


@pytest.mark.parametrize("path", ["/", "/nope", "/ws/extra", "/v1/push"])
async def test_unknown_path_gets_404_json(server: ServerProcess, path: str) -> None:
    answer = await http_exchange(server.edge, ws_request(path))
    assert_json_error(answer, 404, "not_found")
    async with (aiohttp.ClientSession() as session,
                session.get(server.edge + path) as response):
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"


async def test_slowloris_gets_408_within_the_handshake_timeout(server: ServerProcess) -> None:
    async with raw_connection(server.edge) as (reader, writer):
        started = time.monotonic()
        writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webs")
        await writer.drain()
        raw = await read_to_eof(reader, HANDSHAKE_TIMEOUT_S + 2.0)
        elapsed = time.monotonic() - started
    assert_json_error(parse_http_answer(raw), 408, "request_timeout")
    assert HANDSHAKE_TIMEOUT_S * 0.9 <= elapsed <= HANDSHAKE_TIMEOUT_S + 2.0, elapsed


async def test_idle_connection_without_a_byte_is_closed(server: ServerProcess) -> None:
    async with raw_connection(server.edge) as (reader, _):
        raw = await read_to_eof(reader, HANDSHAKE_TIMEOUT_S + 2.0)
    assert_json_error(parse_http_answer(raw), 408)


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "trickled"])
async def test_oversized_request_head_gets_431(server: ServerProcess, ids: Ids, split: bool
                                               ) -> None:
    path = f"/ws?token={server.token(ids('phone'))}"
    request = ws_request(path, extra=[f"X-Fill: {'a' * 9000}"])
    async with raw_connection(server.edge) as (reader, writer):
        if split:
            for start in range(0, len(request), 1000):
                writer.write(request[start:start + 1000])
                await writer.drain()
                await asyncio.sleep(0.005)
        else:
            writer.write(request)
        raw = await read_to_eof(reader)
    assert_json_error(parse_http_answer(raw), 431)
