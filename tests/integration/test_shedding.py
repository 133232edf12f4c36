"""Load shedding and connection lifetime on a real `zuulpush serve`, seen by real clients
(websockets, aiohttp, curl, raw sockets): a shed request gets 503 with a Retry-After, past the
hard ceiling the socket is closed at accept, and a connection's lifetime ends with a 4000 close
carrying a JSON reason (SSE: a `reconnect` event and `retry:`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
import uvloop
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from core.tokens import AuthConfig, TokenVerifier
from registry.memory import MemoryRegistry
from router.stores.memory import MemoryInbox, MemoryNodeChannel
from zuulpush.client.transport import TRANSPORTS, ConnectFailed
from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.listener import listener_status
from zuulpush.edge.server import EdgeServer

from .clients import (
    WAIT_S,
    Curl,
    host_port,
    parse_http_answer,
    read_to_eof,
    ws_connect,
    ws_request,
    ws_url,
)
from .servers import SECRET, ServerProcess, mint_token

Serve = Callable[..., ServerProcess]
Ids = Callable[[str], str]


async def healthz(server: ServerProcess) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            server.edge + "/healthz", timeout=aiohttp.ClientTimeout(total=WAIT_S)) as response:
        assert response.status == 200
        assert response.headers["Connection"].lower() == "close"
        return orjson.loads(await response.read())  # type: ignore[no-any-return]


def assert_overloaded(status: int, headers: Any, body: bytes) -> int:
    """A shed answer: 503, a whole-second Retry-After, the JSON error; returns Retry-After."""
    assert status == 503, (status, body)
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert orjson.loads(body)["error"]["code"] == "overloaded"
    return retry_after


async def test_past_the_accept_rate_websockets_and_aiohttp_see_503_with_retry_after(
        serve_factory: Serve, ids: Ids) -> None:
    server = serve_factory(ZUULPUSH_ACCEPT_RATE_PER_S="0.01", ZUULPUSH_ACCEPT_BURST="1")
    token = server.token(ids("phone"))
    async with ws_connect(ws_url(server.edge, token=token)):  # the one token in the bucket
        with pytest.raises(InvalidStatus) as caught:
            async with ws_connect(ws_url(server.edge, token=server.token(ids("tablet")))):
                pass
        response = caught.value.response
        assert_overloaded(response.status_code, response.headers, response.body)
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(ws_url(server.edge, token=token),
                                         timeout=aiohttp.ClientWSTimeout(ws_close=2))
            assert refused.value.status == 503
            assert refused.value.headers is not None
            assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
    curl = await Curl.start("--include", "--max-time", "5", f"{server.edge}/sse?token={token}")
    code, out, _ = await curl.output(10)
    assert code == 0
    answer = parse_http_answer(out)
    assert_overloaded(answer.status, {"Retry-After": answer.headers["retry-after"]}, answer.body)


async def test_a_client_slow_to_send_its_request_still_reads_the_503_and_its_retry_after(
        serve_factory: Serve, ids: Ids) -> None:
    """The 503 is written at accept, before the request; our side is shut only once the request
    comes. Shut at once, aiohttp (the SDK's client) took the end of stream for a dropped
    connection when it came before its request was written ("Cannot write to closing
    transport"), and backed off blindly; behind an L4 balancer that is the common case."""
    server = serve_factory(ZUULPUSH_ACCEPT_RATE_PER_S="0.01", ZUULPUSH_ACCEPT_BURST="1",
                           ZUULPUSH_HANDSHAKE_TIMEOUT_S="10")

    async def slow_request(*_: Any) -> None:
        await asyncio.sleep(0.3)  # connected; the request goes out after the 503 is in
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(slow_request)
    ws = TRANSPORTS["ws"]
    async with ws_connect(ws_url(server.edge, token=server.token(ids("phone")))), \
            aiohttp.ClientSession(trace_configs=[trace]) as http:  # the bucket's one token
        with pytest.raises(ConnectFailed) as refused:
            await ws.open(http, server.edge, server.token(ids("tablet")), last_id=None,
                          timeout_s=WAIT_S, ssl=False)
    failed = refused.value.outcome
    assert failed.status == 503, failed
    assert failed.retry_after_s is not None and 1 <= failed.retry_after_s <= 60


async def test_max_connections_sheds_until_a_connection_closes(serve_factory: Serve, ids: Ids
                                                               ) -> None:
    server = serve_factory(ZUULPUSH_MAX_CONNECTIONS="2")
    urls = [ws_url(server.edge, token=server.token(ids(f"d{i}"))) for i in range(3)]
    async with ws_connect(urls[0]), ws_connect(urls[1]) as second:
        with pytest.raises(InvalidStatus) as caught:
            async with ws_connect(urls[2]):
                pass
        response = caught.value.response
        assert_overloaded(response.status_code, response.headers, response.body)
        await second.close()
        async with ws_connect(urls[2]) as third:  # room again
            await third.ping()
    async with ws_connect(urls[2]):  # and the healthz probe, with one connection open
        health = await healthz(server)
    assert health["shed"]["max_connections"] == 1
    assert health["max_connections"] == 2


async def test_past_the_hard_ceiling_the_socket_is_closed_at_accept(
        serve_factory: Serve, ids: Ids) -> None:
    server = serve_factory(ZUULPUSH_MAX_CONNECTIONS="1", ZUULPUSH_HARD_MAX_CONNECTIONS="2",
                           ZUULPUSH_HANDSHAKE_TIMEOUT_S="10")
    host, port = host_port(server.edge)
    async with ws_connect(ws_url(server.edge, token=server.token(ids("phone")))):
        # A client that is answered 503 but does not close holds the last place below the
        # hard ceiling while its answer lingers.
        slow_reader, slow_writer = await asyncio.open_connection(host, port)
        head = await asyncio.wait_for(slow_reader.readuntil(b"\r\n\r\n"), WAIT_S)
        assert head.startswith(b"HTTP/1.1 503 ")
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(ws_request(f"/ws?token={server.token(ids('tv'))}"))
            with contextlib.suppress(ConnectionError):
                assert await read_to_eof(reader) == b""  # closed, not a byte answered
            writer.close()
            with pytest.raises((InvalidMessage, ConnectionError)):  # no HTTP answer at all
                async with ws_connect(ws_url(server.edge, token=server.token(ids("car")))):
                    pass
        finally:
            slow_writer.close()
        await asyncio.sleep(0.2)  # the lingering 503 ends: below the hard ceiling again
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(ws_url(server.edge, token=server.token(ids("car")))):
                pass
        assert refused.value.response.status_code == 503
    async with ws_connect(ws_url(server.edge, token=server.token(ids("car")))):
        pass
    health = await healthz(server)
    assert health["shed"]["hard_limit"] >= 2
    assert health["shed"]["max_connections"] >= 2


async def test_a_websocket_lifetime_ends_with_4000_and_a_json_reason(
        serve_factory: Serve, ids: Ids) -> None:
    server = serve_factory(ZUULPUSH_LIFETIME_MIN_S="1", ZUULPUSH_LIFETIME_MAX_S="2")
    started = time.monotonic()
    async with ws_connect(ws_url(server.edge, token=server.token(ids("phone")))) as ws:
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(ws.recv(), 5.0)
    lived = time.monotonic() - started
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 4000
    hint = orjson.loads(caught.value.rcvd.reason)
    assert hint["reason"] == "lifetime"
    assert 500 <= hint["reconnect_after_ms"] <= 1500
    assert 1.0 - 0.3 <= lived <= 2.0 + 0.6, lived
    assert (await healthz(server))["lifetime_closes"] == 1


async def test_an_sse_lifetime_ends_with_a_reconnect_event_and_retry(
        serve_factory: Serve, ids: Ids) -> None:
    server = serve_factory(ZUULPUSH_LIFETIME_MIN_S="1", ZUULPUSH_LIFETIME_MAX_S="2")
    curl = await Curl.start("-N", "--max-time", "6",
                            f"{server.edge}/sse?token={server.token(ids('tv'))}")
    try:
        first = await curl.next_event(messages_only=False)
        assert first.retry is not None
        reconnect = await curl.next_event(5.0)
        retry = await curl.next_event(messages_only=False)
    finally:
        await curl.stop()
    assert reconnect.event == "reconnect"
    hint = reconnect.json()
    assert (hint["code"], hint["reason"]) == (4000, "lifetime")
    assert retry.retry == hint["reconnect_after_ms"]


async def test_healthz_reports_the_loop_lag_and_the_limits(server: ServerProcess) -> None:
    health = await healthz(server)
    assert health["status"] == "ok" and health["node_id"] == server.node_id
    assert 0 <= health["loop_lag_ms"] <= health["loop_lag_ms_peak"] + 1000
    assert health["loop_lag_ms_peak"] < 10_000  # milliseconds (a busy test machine lags)
    assert 0 < health["max_connections"] < health["hard_max_connections"]
    assert set(health["shed"]) == {"hard_limit", "max_connections", "loop_lag", "rate"}


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_listening_socket_closed_under_the_node_is_opened_again(run: Any) -> None:
    """uvloop closes the listening socket, silently, after an accept error it cannot recover
    from (EMFILE with no spare descriptor, ENFILE): the node's once-a-second check listens
    again on the same port."""
    async def body() -> None:
        edge = EdgeServer(EdgeConfig(port=0), verifier=TokenVerifier(AuthConfig(secret=SECRET)),
                          registry=MemoryRegistry(), inbox=MemoryInbox(10),
                          channel=MemoryNodeChannel(10))
        await edge.start()
        try:
            port = edge.port
            assert edge.listener.server is not None
            edge.listener.server.close()  # as uvloop does; the node did not ask for it
            assert listener_status(edge.listener.server, port) == "gone"
            await edge.listener.check()
            assert listener_status(edge.listener.server, port) == "ok"
            assert edge.stats.relistens == 1 and edge.port == port
            async with ws_connect(f"ws://127.0.0.1:{port}/ws?token={mint_token('back')}") as ws:
                await ws.ping()
            await edge.listener.check()
            assert edge.stats.relistens == 1
        finally:
            await edge.shutdown(1.0)
    run(body())
