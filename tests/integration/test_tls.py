"""TLS on real processes: `zuulpush serve` with a certificate this test makes (`cryptography`),
devices over wss:// (`websockets`, the SDK, `zuulpush listen`) and https:// SSE (`curl -N
--cacert`), pushes over https:// (aiohttp); clients that do not speak TLS to the TLS ports are
closed and the node serves on; a drain reaches devices over TLS; unusable certificate settings
are refused with exit status 2 before anything listens.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.certs import Certificate, make_certificate
from zuulpush.client import PushClient, PushClientError

from .clients import (
    WAIT_S,
    PushApi,
    curl_sse,
    host_port,
    raw_connection,
    read_to_eof,
    ws_connect,
    ws_recv_json,
)
from .servers import EDGE, ROOT, ServerProcess, start_server, stop_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("certs"))


def tls_env(cert: Certificate) -> dict[str, str]:
    return {"ZUULPUSH_TLS_CERT_FILE": str(cert.cert_file),
            "ZUULPUSH_TLS_KEY_FILE": str(cert.key_file),
            "ZUULPUSH_API_TLS_CERT_FILE": str(cert.cert_file),
            "ZUULPUSH_API_TLS_KEY_FILE": str(cert.key_file)}


@pytest.fixture(autouse=True)
async def tls_closes_finish() -> AsyncIterator[None]:
    """A client's TLS close waits for the server's close_notify before its socket closes: give
    it time before the test's loop closes, else the socket is found unclosed later (by the
    garbage collector, as a ResourceWarning in another test)."""
    yield
    await asyncio.sleep(0.25)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cert: Certificate
           ) -> Iterator[ServerProcess]:
    """One `zuulpush serve` with TLS on the edge and the API (same certificate)."""
    process = start_server(tmp_path_factory.mktemp("tls-serve"), tls_env(cert))
    yield process
    stop_all([process])


@pytest.fixture
async def api(server: ServerProcess, cert: Certificate) -> AsyncIterator[PushApi]:
    connector = aiohttp.TCPConnector(ssl=cert.client_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        yield PushApi(session, server.api, server.api_key)


def wss(server: ServerProcess, path: str = "/ws", **query: str) -> str:
    host, port = host_port(server.edge)
    return f"wss://{host}:{port}{path}?" + "&".join(f"{k}={v}" for k, v in query.items())


def test_the_banner_names_https_and_wss(server: ServerProcess) -> None:
    assert server.edge.startswith("https://") and server.api.startswith("https://")
    host, port = host_port(server.edge)
    assert f"edge: wss://{host}:{port}/ws   sse: https://{host}:{port}/sse" in \
        server.stdout_text()


async def test_a_websocket_device_over_wss_gets_a_push_sent_over_https(
        server: ServerProcess, cert: Certificate, api: PushApi,
        ids: Callable[[str], str]) -> None:
    client = ids("ws")
    url = wss(server, token=server.token(client))
    async with ws_connect(url, ssl=cert.client_context()) as ws:
        sent = await api.send({"over": "wss"}, clients=[client])
        message = await ws_recv_json(ws)
        assert (message["id"], message["data"]) == (sent, {"over": "wss"})
        await ws.send(orjson.dumps({"type": "ack", "ids": [sent]}).decode())


async def test_curl_reads_sse_over_https_with_the_certificate_as_its_ca(
        server: ServerProcess, cert: Certificate, api: PushApi,
        ids: Callable[[str], str]) -> None:
    client = ids("sse")
    async with curl_sse(server.edge, server.token(client),
                        extra=["--cacert", str(cert.cert_file)]) as curl:
        sent = await api.send({"over": "https"}, clients=[client])
        event = await curl.next_event()
        assert event.id == sent and event.json()["data"] == {"over": "https"}


async def test_the_sdk_over_wss_and_over_https_sse(
        server: ServerProcess, cert: Certificate, api: PushApi,
        ids: Callable[[str], str]) -> None:
    for transport in ("ws", "sse"):
        client = ids(transport)
        async with PushClient(server.edge, server.token(client), transport=transport,
                              ssl=cert.client_context()) as device:
            await device.wait_connected(WAIT_S)
            sent = await api.send(transport, clients=[client])
            message = await asyncio.wait_for(anext(aiter(device)), WAIT_S)
            assert (message.id, message.data) == (sent, transport)


async def test_the_sdk_refuses_a_certificate_it_does_not_trust(server: ServerProcess) -> None:
    async with PushClient(server.edge, server.token("untrusting"), reconnect=False) as device:
        with pytest.raises(PushClientError, match=r"(?i)certificate"):
            await device.wait_connected(WAIT_S)


async def test_zuulpush_listen_over_wss_with_cacert(
        server: ServerProcess, cert: Certificate, api: PushApi,
        ids: Callable[[str], str]) -> None:
    client = ids("listen")
    sent = await api.send("waiting in the inbox", clients=[client])
    listen = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "zuulpush", "listen", "--cacert", str(cert.cert_file),
        "--count", "1", "--timeout", "10", wss(server, token=server.token(client)),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(listen.communicate(), 15)
    finally:
        if listen.returncode is None:
            listen.kill()
            await listen.wait()
    assert listen.returncode == 0, err.decode()
    assert orjson.loads(out.splitlines()[0])["id"] == sent


@pytest.mark.parametrize("port", ["edge", "api"])
async def test_plain_http_to_a_tls_port_is_closed_and_the_node_serves_on(
        server: ServerProcess, cert: Certificate, port: str) -> None:
    base = server.edge if port == "edge" else server.api
    async with raw_connection(base) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
        answer = await read_to_eof(reader)
    assert not answer.startswith(b"HTTP/"), answer  # no plaintext answer: a TLS alert or nothing
    connector = aiohttp.TCPConnector(ssl=cert.client_context())
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.get(f"{server.edge}/healthz") as response:
        assert response.status == 200
    assert server.proc.poll() is None
    assert "Traceback" not in server.stderr_text()


async def test_a_tcp_client_that_never_starts_tls_is_closed_after_the_handshake_timeout(
        server: ServerProcess) -> None:
    loop = asyncio.get_running_loop()
    async with raw_connection(server.edge) as (reader, _):
        start = loop.time()
        assert await read_to_eof(reader, timeout_s=WAIT_S) == b""
    assert loop.time() - start < WAIT_S  # handshake_timeout_s is 1 s here


async def test_sigterm_drains_devices_over_tls_with_the_4000_hint(
        tmp_path: Path, cert: Certificate) -> None:
    process = start_server(tmp_path, {**tls_env(cert), "ZUULPUSH_DRAIN_WINDOW_S": "1"})
    try:
        devices = [await ws_connect(wss(process, token=process.token(f"d{i}")),
                                    ssl=cert.client_context()) for i in range(20)]
        async with curl_sse(process.edge, process.token("sse-device"),
                            extra=["--cacert", str(cert.cert_file)]) as curl:
            process.terminate()
            for ws in devices:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                assert ws.close_code == 4000
                assert orjson.loads(ws.close_reason or "")["reason"] == "drain"
            event = await curl.next_event(10)
            assert event.event == "reconnect" and event.json()["reason"] == "drain"
        assert process.wait(15) == 0
        assert "Traceback" not in process.stderr_text()
    finally:
        process.stop()


async def test_a_connection_shed_over_tls_reads_its_503_and_retry_after(
        tmp_path: Path, cert: Certificate) -> None:
    # Admission runs once the TLS handshake is done; the 503 is then written at once and the
    # connection closed whole (close_notify): a client still reads it, and its Retry-After.
    process = start_server(tmp_path, {**tls_env(cert), "ZUULPUSH_ACCEPT_RATE_PER_S": "0.01",
                                      "ZUULPUSH_ACCEPT_BURST": "1"})
    try:
        async with aiohttp.ClientSession() as http:
            url = wss(process, token=process.token("first"))
            async with http.ws_connect(url, ssl=cert.client_context()):
                for i in range(3):
                    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                        await http.ws_connect(wss(process, token=process.token(f"shed{i}")),
                                              ssl=cert.client_context())
                    assert refused.value.status == 503
                    assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
    finally:
        assert process.stop() == 0


@pytest.mark.parametrize(("command", "flags", "message"), [
    (("serve", "--port", "0", "--api-port", "0"), ["--tls-cert", "/nonexistent.crt"],
     "edge TLS (tls_cert_file, tls_key_file): cannot read '/nonexistent.crt'"),
    (("serve", "--port", "0", "--api-port", "0"), ["--api-tls-key", "/nonexistent.key"],
     "API TLS (api_tls_cert_file, api_tls_key_file): a key file is set but no certificate"),
    ((*EDGE, "--redis", "redis://127.0.0.1:1/0"), ["--tls-cert", "/nonexistent.crt"],
     "cannot read '/nonexistent.crt'"),
    ((*EDGE, "--redis", "redis://127.0.0.1:1/0", "--workers", "2"),
     ["--tls-cert", "/nonexistent.crt"], "cannot read '/nonexistent.crt'"),
])
def test_an_unusable_certificate_setting_exits_2_with_a_clear_message(
        command: tuple[str, ...], flags: list[str], message: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "ZUULPUSH_SECRET": "x" * 32, "ZUULPUSH_API_KEYS": "k"}
    done = subprocess.run([sys.executable, "-m", "zuulpush", *command, *flags], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("zuulpush: ") and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "ready:" not in done.stdout
