"""The edge's admin API, `GET /metrics` and the plain counters metrics are made from: routing
(sans I/O) and answers on a fake transport (`test_edge_protocol`'s `Edge`)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from wsproto.frame_protocol import Opcode

from core.errors import Forbidden, Unauthorized
from core.ids import IdGenerator
from tests.edge.test_edge_protocol import NOW_MS, Edge, request
from tests.edge.test_edge_request import rejected, run
from zuulpush.edge.request import Accept, Route
from zuulpush.edge.state import State
from zuulpush.edge.wsframes import Close
from zuulpush.tally import LATENCY_BOUNDS_MS

KEY = "admin-key-1"
AUTH = [(b"authorization", f"Bearer {KEY}".encode())]
AUTH_HEADER = ("Authorization", f"Bearer {KEY}")


# routing, sans I/O


def test_metrics_needs_no_token_and_is_get_only() -> None:
    assert run("/metrics") == Accept(Route.METRICS, None, None, None)
    assert rejected("/metrics", method=b"POST").http_status == 405


@pytest.mark.parametrize(("target", "method", "route", "client_id"), [
    ("/admin/status", b"GET", Route.ADMIN_STATUS, None),
    ("/admin/clients/c1", b"GET", Route.ADMIN_CLIENT, "c1"),
    ("/admin/clients/a%2Fb%20c", b"GET", Route.ADMIN_CLIENT, "a/b c"),
    ("/admin/clients/c1/close", b"POST", Route.ADMIN_CLOSE, "c1"),
])
def test_admin_routes_name_the_client(target: str, method: bytes, route: Route,
                                      client_id: str | None) -> None:
    accept = run(target, AUTH, method=method, admin_key=KEY)
    assert (accept.route, accept.client_id, accept.close_code) == (route, client_id, 4000)


@pytest.mark.parametrize("target", ["/admin/status", "/admin/clients/c1"])
@pytest.mark.parametrize(("headers", "admin_key", "error"), [
    ([], KEY, Unauthorized),
    ([(b"authorization", b"Bearer nope")], KEY, Forbidden),
    (AUTH, "", Forbidden),  # no admin key configured: never
])
def test_admin_routes_refuse_a_missing_or_wrong_key(target: str, headers: Any, admin_key: str,
                                                    error: type[Exception]) -> None:
    with pytest.raises(error):
        run(target, headers, admin_key=admin_key)


def test_admin_close_is_a_post_and_takes_a_close_code() -> None:
    exc = rejected("/admin/clients/c1/close", AUTH, admin_key=KEY)
    assert exc.http_status == 405 and ("allow", "POST") in exc.headers
    accept = run("/admin/clients/c1/close?code=1000", AUTH, method=b"POST", admin_key=KEY)
    assert accept.close_code == 1000
    bad = rejected("/admin/clients/c1/close?code=4003", AUTH, method=b"POST", admin_key=KEY)
    assert bad.http_status == 400


@pytest.mark.parametrize("target", ["/admin/clients/", "/admin/clients/c1/open",
                                    "/admin/clients//close", "/admin/clients/" + "x" * 257])
def test_admin_unknown_paths_are_404(target: str) -> None:
    assert rejected(target, AUTH, admin_key=KEY).http_status == 404


# answers on a fake transport


@pytest.fixture
def edge() -> Edge:
    edge = Edge(node_id="edge-admin-1")
    edge.server.admin_key = KEY
    return edge


def ask(edge: Edge, target: str, method: str = "GET",
        headers: tuple[tuple[str, str], ...] = (AUTH_HEADER,)) -> tuple[int, Any]:
    device = edge.device()
    device.send(request(target, headers, method=method))
    response = device.response()
    assert response.headers["connection"] == "close" and device.transport.half_closed
    return response.status, response.json()


async def test_status_reports_connections_by_transport_and_device_type(edge: Edge) -> None:
    edge.ws("c1", device_type="ios")
    edge.ws("c2", device_type="ios")
    edge.ws("c3", device_type="tv")
    edge.sse("c4")
    await edge.flush()
    status, body = ask(edge, "/admin/status")
    assert status == 200
    assert (body["node_id"], body["state"], body["region"]) == ("edge-admin-1", "active", "local")
    assert body["connections"] == 4
    assert body["open"] == {"sse": {"android": 1}, "ws": {"ios": 2, "tv": 1}}
    assert body["shed"]["rate"] == 0 and "loop_lag_ms" in body and body["connects"] == 4


def test_status_without_the_key_is_401_and_counted_as_an_auth_failure(edge: Edge) -> None:
    assert ask(edge, "/admin/status", headers=())[0] == 401
    assert ask(edge, "/admin/status", headers=(("Authorization", "Bearer no"),))[0] == 403
    assert edge.server.stats.auth_failures == {"admin_key": 2}
    assert edge.server.stats.rejects == {401: 1, 403: 1}


def test_a_bad_device_token_is_an_auth_failure(edge: Edge) -> None:
    assert edge.device().upgrade("/ws?token=x.y.z").status == 401
    assert edge.server.stats.auth_failures == {"device_token": 1}


async def test_client_answers_its_connection_here_or_404(edge: Edge) -> None:
    edge.ws("c1", device_type="tv")
    await edge.flush()
    status, body = ask(edge, "/admin/clients/c1")
    assert status == 200
    assert {k: body[k] for k in ("client_id", "node_id", "user_id", "device_type", "transport",
                                 "state")} == {
        "client_id": "c1", "node_id": "edge-admin-1", "user_id": "user-1", "device_type": "tv",
        "transport": "ws", "state": "open"}
    assert body["connected_at"] > 1.6e9 and 0 <= body["connected_s"] < 60
    status, body = ask(edge, "/admin/clients/nobody")
    assert status == 404 and body["node_id"] == "edge-admin-1"
    assert body["error"]["code"] == "not_found"


async def test_close_sends_the_go_away_with_an_admin_hint(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    status, body = ask(edge, "/admin/clients/c1/close", "POST")
    assert (status, body["closed"], body["code"]) == (200, True, 4000)
    [(opcode, (code, reason))] = device.frames()
    assert (opcode, code) == (Opcode.CLOSE, Close.RECONNECT)
    hint = orjson.loads(reason)
    assert hint["reason"] == "admin" and 500 <= hint["reconnect_after_ms"] <= 1500
    assert device.conn.state is State.CLOSING
    assert ask(edge, "/admin/clients/nobody/close", "POST")[0] == 404


async def test_close_with_code_1000_gives_no_hint(edge: Edge) -> None:
    device = edge.ws("c1")
    await edge.flush()
    assert ask(edge, "/admin/clients/c1/close?code=1000", "POST")[0] == 200
    assert device.close_frame() == (1000, "closed by an operator")


async def test_close_of_an_sse_stream_ends_it_with_a_reconnect_event(edge: Edge) -> None:
    device = edge.sse("c1")
    await edge.flush()
    device.read()
    assert ask(edge, "/admin/clients/c1/close", "POST")[0] == 200
    [event] = [e for e in device.events() if e.get("event") == "reconnect"]
    assert orjson.loads(event["data"])["reason"] == "admin"


def test_metrics_is_404_without_an_exporter_and_the_page_with_one(edge: Edge) -> None:
    assert ask(edge, "/metrics", headers=())[0] == 404
    edge.server.metrics_page = lambda: (b"zuulpush_x 1\n", "text/plain; version=0.0.4")
    device = edge.device()
    device.send(request("/metrics"))
    response = device.response()
    assert response.status == 200 and response.body == b"zuulpush_x 1\n"
    assert response.headers["content-type"] == "text/plain; version=0.0.4"


# plain counters for metrics


async def test_a_delivery_is_timed_from_its_ids_clock_reading_once_per_delivery(
        edge: Edge) -> None:
    edge.server.wall_clock_ms = lambda: NOW_MS + 30
    message_id = IdGenerator().new(NOW_MS)
    edge.ws("c1")
    edge.ws("c2")
    await edge.flush()
    edge.deliver(message_id, "c1", "c2")
    edge.deliver(IdGenerator().new(NOW_MS), "absent")  # written nowhere: not timed
    latency = edge.server.stats.latency
    assert (latency.count, latency.total) == (1, 30)
    assert latency.counts[LATENCY_BOUNDS_MS.index(50)] == 1
    assert edge.server.stats.delivered == 2


async def test_replays_count_their_messages_and_the_inbox_depth(edge: Edge) -> None:
    await edge.store("c1", "m1", "m2", "m3")
    edge.ws("c1")
    edge.ws("c2")
    await edge.flush()
    stats = edge.server.stats
    assert stats.replayed == 3
    assert stats.inbox_depth.counts[:3] == [1, 0, 1]  # one empty inbox, one of 3 (<= 5)
