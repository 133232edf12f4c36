"""Secrets, keys and tokens are never written to the logs (issue 9, item 4).

A `zuulpush serve` with a known device-token secret, API key and admin key runs at
`--log-level debug` (text, and JSON); the test logs in to the dashboard, gets a demo token,
connects devices (WebSocket with the token in the query, bearer header and cookie; SSE), pushes
(single and batch), pulls and acks the inbox, makes admin calls, and tries bad tokens, wrong keys
and a wrong dashboard login. Then everything the process printed (stdout and stderr) is searched
for the secret, every key and every token used (and each token's signature alone): none may
appear. The other security tests are listed in `tests/test_security.py`'s docstring.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from tests.integration.clients import (
    WAIT_S,
    host_port,
    push_api,
    ws_connect,
    ws_recv_json,
    ws_url,
)
from tests.integration.conftest import ServeFactory
from tests.integration.servers import ADMIN_KEY, API_KEY, SECRET, ServerProcess

WRONG_API_KEY = "wrong-api-key-7f3a9c2e"
WRONG_ADMIN_KEY = "wrong-admin-key-51b0d4aa"
OTHER_SECRET = "some-other-secret-of-32-bytes-9e1d77c0"


async def _raw(server: ServerProcess, data: bytes) -> bytes:
    host, port = host_port(server.edge)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(4096), WAIT_S)
    finally:
        writer.close()


def _bad_tokens(server: ServerProcess) -> list[str]:
    expired = server.token("sec-expired", ttl_s=-60)
    other = jwt.encode({"sub": "u", "cid": "sec-other", "dt": "phone",
                        "exp": int(time.time()) + 600}, OTHER_SECRET, algorithm="HS256")
    header, payload, _ = server.token("sec-none").split(".")
    none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + payload + "."
    forged = f"{header}.{payload}.{server.token('sec-sig').split('.')[2]}"
    return [expired, other, none, forged]


async def _exercise(server: ServerProcess) -> list[str]:
    """Everything the module docstring lists; the credentials used, to search the logs for."""
    used = [SECRET, API_KEY, ADMIN_KEY, WRONG_API_KEY, WRONG_ADMIN_KEY, OTHER_SECRET]
    good = server.token("sec-phone")
    bearer_token, cookie_token = server.token("sec-bearer"), server.token("sec-cookie")
    bad = _bad_tokens(server)
    used += [good, bearer_token, cookie_token, *bad]
    async with ws_connect(ws_url(server.edge, token=good)) as ws, \
            ws_connect(ws_url(server.edge),
                       additional_headers={"Authorization": f"Bearer {bearer_token}"}), \
            ws_connect(ws_url(server.edge),
                       additional_headers={"Cookie": f"zuulpush_token={cookie_token}"}), \
            push_api(server.api, API_KEY) as api, aiohttp.ClientSession() as http:
        message_id = await api.send({"hello": 1}, clients=["sec-phone"])
        assert (await ws_recv_json(ws))["id"] == message_id
        status, _ = await api.push({"to": {"clients": ["x"]}, "data": 1}, key=WRONG_API_KEY)
        assert status == 403
        batch = {"messages": [{"to": {"clients": ["sec-phone"]}, "data": 2}]}
        async with http.post(server.api + "/v1/push/batch", json=batch,
                             headers={"Authorization": f"Bearer {API_KEY}"}) as response:
            assert response.status == 202
        used += await _inbox_and_sse(server, http, good, bad)
        used += await _admin_and_dashboard(server, http)
        for token in bad:
            for way in (f"/ws?token={token}", f"/sse?token={token}"):
                answer = await _raw(server, f"GET {way} HTTP/1.1\r\nHost: x\r\n"
                                    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                    "Sec-WebSocket-Version: 13\r\n"
                                    "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\n\r\n".encode())
                assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
            answer = await _raw(server, b"GET /ws HTTP/1.1\r\nHost: x\r\n"
                                b"Authorization: Bearer " + token.encode() + b"\r\n\r\n")
            assert answer.startswith((b"HTTP/1.1 401", b"HTTP/1.1 426")), answer[:100]
    return used


async def _inbox_and_sse(server: ServerProcess, http: aiohttp.ClientSession, good: str,
                         bad: list[str]) -> list[str]:
    async with http.get(server.api + f"/v1/inbox?token={good}") as response:
        messages = (await response.json())["messages"]
        assert response.status == 200 and messages
    async with http.post(server.api + "/v1/inbox/ack", json={"through": messages[-1]["id"]},
                         headers={"Authorization": f"Bearer {good}"}) as response:
        assert response.status == 200
    for token in bad:
        async with http.get(server.api + f"/v1/inbox?token={token}") as response:
            assert response.status == 401
    sse_token = server.token("sec-sse")
    async with http.get(server.edge + "/sse", headers={"Authorization": f"Bearer {sse_token}"},
                        timeout=aiohttp.ClientTimeout(total=WAIT_S)) as response:
        assert response.status == 200
    return [sse_token]


async def _admin_and_dashboard(server: ServerProcess, http: aiohttp.ClientSession) -> list[str]:
    for key, status in ((ADMIN_KEY, 200), (WRONG_ADMIN_KEY, 403)):
        async with http.get(server.edge + "/admin/status",
                            headers={"Authorization": f"Bearer {key}"}) as response:
            assert response.status == status
    async with http.post(server.api + "/dashboard/login",
                         json={"key": WRONG_ADMIN_KEY}) as response:
        assert response.status == 403
    async with http.post(server.api + "/dashboard/login", json={"key": ADMIN_KEY}) as response:
        assert response.status == 200
        cookie = response.cookies["zuulpush_dashboard"].value
    async with http.post(server.api + "/demo/token") as response:
        demo: dict[str, Any] = orjson.loads(await response.read())
        assert response.status == 200, demo
    return [cookie, demo["token"]]


def _leaks(text: str, used: list[str]) -> list[str]:
    found = [value for value in used if value and value in text]
    # A token's signature alone is enough to tell it was written out.
    found += [token for token in used if token.count(".") == 2 and len(token.split(".")[2]) > 20
              and token.split(".")[2] in text]
    return found


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_secret_key_or_token_is_logged_at_debug(serve_factory: ServeFactory,
                                                        log_format: str) -> None:
    server = serve_factory(("--log-level", "debug", "--log-format", log_format))
    used = await _exercise(server)
    assert server.stop() == 0
    output = server.stdout_text() + "\n" + server.stderr_text()
    lines = output.count("\n")
    print(f"\n{log_format} logs at debug: {lines} lines, {len(output)} bytes; "
          f"searched for {len(used)} secrets, keys and tokens")
    assert "listening" in output and "Bearer <api key>" in output  # the banner, the logs
    assert _leaks(output, used) == []
