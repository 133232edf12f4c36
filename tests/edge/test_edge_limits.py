"""The edge's abuse limits on a fake transport and clock: the browser Origin allow list (on the
plain-/ws fast path, on h11's path, and on SSE), and the counters behind the limits' metrics
(inbound-rate closes, replaced connections, origin refusals)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from tests.edge.test_edge_protocol import UPGRADE, Edge, SseDevice, request, token
from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.wsframes import Close
from zuulpush.metrics import Exporter, Metrics

APP = "https://app.example.com"


def upgrade(edge: Edge, origin: str | None, *, split: bool = False) -> tuple[int, dict[str, str],
                                                                           bytes]:
    """A WebSocket upgrade with `Origin` (none: without); `split` sends the head in two reads,
    so that h11 parses it instead of the fast path."""
    device = edge.device()
    extra = [("Origin", origin)] if origin is not None else []
    data = request(f"/ws?token={token('c1')}", [*UPGRADE, *extra])
    if split:
        device.send(data[:20])
        device.send(data[20:])
    else:
        device.send(data)
    response = device.response()
    return response.status, response.headers, response.body


@pytest.mark.parametrize("split", [False, True], ids=["fast-path", "h11"])
def test_an_origin_not_on_the_list_is_403_before_any_upgrade(split: bool) -> None:
    edge = Edge(allowed_origins=(APP,))
    status, headers, body = upgrade(edge, "https://evil.example.net", split=split)
    assert status == 403
    assert b'"code":"origin_not_allowed"' in body
    assert headers["connection"] == "close"
    assert edge.server.stats.origin_refused == 1
    assert edge.server.stats.rejects[403] == 1 and not edge.server.stats.auth_failures
    assert edge.server.connections == {}


@pytest.mark.parametrize("split", [False, True], ids=["fast-path", "h11"])
@pytest.mark.parametrize("origin", [APP, "HTTPS://App.Example.com", None],
                         ids=["listed", "other-case", "native-app"])
def test_a_listed_origin_or_none_upgrades(split: bool, origin: str | None) -> None:
    edge = Edge(allowed_origins=(APP + "/", "http://localhost:8081"))
    assert upgrade(edge, origin, split=split)[0] == 101
    assert edge.server.stats.origin_refused == 0


@pytest.mark.parametrize("allowed", [(), ("*",), (APP, "*")], ids=["empty", "star", "with-star"])
def test_without_a_list_any_origin_upgrades(allowed: tuple[str, ...]) -> None:
    assert upgrade(Edge(allowed_origins=allowed), "https://anything.example")[0] == 101


def test_the_origin_is_checked_before_the_token() -> None:
    edge = Edge(allowed_origins=(APP,))
    device = edge.device()
    device.send(request("/ws?token=forged", [*UPGRADE, ("Origin", "null")]))
    assert device.response().status == 403
    assert not edge.server.stats.auth_failures


def test_sse_from_a_refused_origin_is_403() -> None:
    edge = Edge(allowed_origins=(APP,))
    sse = SseDevice(edge.server, f"/sse?token={token('c1')}", [("origin", "https://evil.test")])
    sse.read()
    assert sse.response is not None and sse.response.status_code == 403
    assert edge.server.stats.origin_refused == 1


def test_sse_names_the_allowed_origin_instead_of_star() -> None:
    edge = Edge(allowed_origins=(APP,))
    sse = SseDevice(edge.server, f"/sse?token={token('c1')}", [("origin", APP)])
    sse.read()
    assert sse.response is not None and sse.response.status_code == 200
    headers = dict(sse.response.headers)
    assert headers[b"access-control-allow-origin"] == APP.encode()
    assert headers[b"vary"] == b"origin"


@pytest.mark.parametrize("allowed", [(), (APP,)], ids=["no-list", "list-without-origin"])
def test_sse_keeps_star_without_a_list_or_an_origin(allowed: tuple[str, ...]) -> None:
    edge = Edge(allowed_origins=allowed)
    headers = [("origin", APP)] if not allowed else []
    sse = SseDevice(edge.server, f"/sse?token={token('c1')}", headers)
    sse.read()
    assert sse.response is not None
    assert dict(sse.response.headers)[b"access-control-allow-origin"] == b"*"


@pytest.mark.parametrize("bad", ["app.example.com", "https://app.example.com/path", "",
                                 "https://a.example https://b.example"])
def test_a_malformed_allowed_origin_is_a_config_error(bad: str) -> None:
    with pytest.raises(ValueError, match="allowed_origins"):
        EdgeConfig(allowed_origins=(bad,))


def test_origin_allow_list_is_normalised() -> None:
    config = EdgeConfig(allowed_origins=("HTTPS://App.Example.com/", "null"))
    assert config.origin_allow_list() == frozenset({APP, "null"})
    assert EdgeConfig(allowed_origins=(APP, "*")).origin_allow_list() is None


# counters of the other edge limits, and their metrics

async def test_inbound_rate_closes_are_counted_apart_from_violations() -> None:
    edge = Edge(ws_inbound_rate_per_s=1.0, ws_inbound_burst=2)
    device = edge.ws("c1")
    await edge.flush()
    edge.clock.now = 6000.0
    for _ in range(3):
        device.ack("m")
    assert device.close_frame()[0] == Close.POLICY_VIOLATION
    stats = edge.server.stats
    assert (stats.rate_limited, stats.violations) == (1, 0)


async def test_the_edge_limits_reach_their_metrics() -> None:
    edge = Edge(ws_inbound_rate_per_s=1.0, ws_inbound_burst=1, allowed_origins=(APP,))
    old = edge.ws("c1")
    edge.ws("c1")  # replaces the first
    assert old.close_frame()[0] == Close.REPLACED
    fast = edge.ws("c2")
    await edge.flush()
    edge.clock.now = 6000.0
    fast.ack("m")
    fast.ack("m")
    upgrade(edge, "https://evil.example.net")
    metrics = Metrics(CollectorRegistry())
    exporter = Exporter(metrics)
    exporter.watch_edge(edge.server)
    exporter.sync()
    registry = metrics.registry
    assert registry is not None

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("zuulpush_edge_closes_total", reason="replaced") == 1
    assert value("zuulpush_edge_closes_total", reason="rate_limited") == 1
    assert value("zuulpush_edge_closes_total", reason="violation") is None  # never counted
    assert value("zuulpush_edge_origin_refused_total") == 1
