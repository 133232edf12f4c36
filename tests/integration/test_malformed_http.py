"""Requests aiohttp's HTTP parser refuses, sent over raw sockets to a real `zuulpush serve`'s API:
each is answered in the API's JSON error shape (not aiohttp's text/plain), the connection is
closed, and however many arrive, the log holds at most one line about them per interval (not
an ERROR traceback per request), and the API's error counter counts them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from router.api.malformed import LOG_INTERVAL_S

from .clients import raw_connection, read_to_eof
from .servers import ServerProcess, start_server, stop_all

pytestmark = pytest.mark.timeout(60)

HEAD = b"POST /v1/push HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\n"
MALFORMED: dict[str, bytes] = {
    "content-length 10^20": HEAD + b"Content-Length: 100000000000000000000\r\n\r\n",
    "content-length -1": HEAD + b"Content-Length: -1\r\n\r\n",
    "content-length list": HEAD + b"Content-Length: 2, 40\r\n\r\n",
    "xchunked": HEAD + b"Transfer-Encoding: xchunked\r\n\r\n",
    "chunked and content-length": HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    "20 KB header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    "20 KB request line": b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "too many headers": b"GET /healthz HTTP/1.1\r\n"
                        + b"".join(b"X-%d: 1\r\n" % i for i in range(300)) + b"\r\n",
    "bad method": b"G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad version": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    "bad header name": b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
}
FLOOD = 60
LOG_LINE = re.compile(r"malformed HTTP request", re.IGNORECASE)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("malformed"))
    yield server
    stop_all([server])  # also: exited 0 and logged no traceback


def answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:200]
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version in ("HTTP/1.0", "HTTP/1.1"), status_line
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines)}
    assert headers.get("content-type") == "application/json", (headers, body[:200])
    assert int(headers["content-length"]) == len(body)
    return int(status), headers, orjson.loads(body)


async def exchange(server: ServerProcess, request: bytes) -> tuple[int, dict[str, str], Any]:
    async with raw_connection(server.api) as (reader, writer):
        writer.write(request)
        await writer.drain()
        return answer(await read_to_eof(reader))  # the server closes the connection


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_request_gets_a_json_400_and_a_close(api: ServerProcess,
                                                              case: str) -> None:
    status, headers, body = await exchange(api, MALFORMED[case])
    assert status == 400, body
    assert body["error"]["code"] == "bad_request"
    message = body["error"]["message"]
    assert message.startswith("malformed HTTP request"), message
    assert "aaaaaaaa" not in message  # the refused bytes are not echoed back
    assert headers.get("connection", "close") == "close"  # and it closed (read to EOF)


async def test_many_malformed_requests_log_one_line_and_are_counted(api: ServerProcess) -> None:
    async def refused(n: int) -> None:
        request = list(MALFORMED.values())[n % len(MALFORMED)]
        status, _, _ = await exchange(api, request)
        assert status == 400

    async with aiohttp.ClientSession() as http:
        async with http.get(api.api + "/metrics") as response:
            before = _rejected_400(await response.text())
        for start in range(0, FLOOD, 10):
            await asyncio.gather(*(refused(n) for n in range(start, start + 10)))
        async with http.get(api.api + "/metrics") as response:
            after = _rejected_400(await response.text())
    assert after - before == FLOOD
    stderr = api.stderr_text()
    assert "Traceback" not in stderr and "aiohttp.server" not in stderr, stderr[:2000]
    # Everything above ran well within one interval: one line for them all.
    assert LOG_INTERVAL_S >= 30
    assert len([line for line in stderr.splitlines() if LOG_LINE.search(line)]) == 1, stderr


def _rejected_400(page: str) -> float:
    for line in page.splitlines():
        if line.startswith("zuulpush_api_rejected_total") and 'status="400"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


CHUNKED = (b"POST /v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer integration-api-key\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n")


async def test_a_body_cut_off_by_the_client_is_not_logged_as_an_error(
        tmp_path: Path) -> None:
    """A sender that goes away half way through its body is no bug of ours: nothing logged
    (it used to be an ERROR `unhandled error` with a traceback each time)."""
    server = start_server(tmp_path)
    try:
        for _ in range(3):
            async with raw_connection(server.api) as (_, writer):
                writer.write(CHUNKED + b"10\r\n{\"to\": ")
                await writer.drain()
                await asyncio.sleep(0.2)  # the handler is reading the body
        async with aiohttp.ClientSession() as http, \
                http.get(server.api + "/healthz") as response:  # still serving
            assert response.status == 200
    finally:
        stop_all([server])  # asserts: no traceback logged
    assert "ERROR" not in server.stderr_text(), server.stderr_text()


async def test_a_bad_chunk_mid_body_is_a_json_400_with_aiohttps_python_parser(
        tmp_path: Path) -> None:
    """aiohttp's pure-Python parser (no C extensions) raises a bad chunk into the handler's
    read: a 400 naming the body, not a 500 with a traceback."""
    server = start_server(tmp_path, {"AIOHTTP_NO_EXTENSIONS": "1"})
    try:
        async with raw_connection(server.api) as (reader, writer):
            writer.write(CHUNKED)
            await writer.drain()
            await asyncio.sleep(0.2)  # the handler is reading the body
            writer.write(b"zz\r\n")
            await writer.drain()
            status, _, body = answer(await read_to_eof(reader))
    finally:
        stop_all([server])
    assert status == 400, body
    assert (body["error"]["code"], body["error"]["field"]) == ("invalid_request", "body")
