"""The edge's one-shot routes, answered from the node's state and closed: `GET /healthz`,
`GET /metrics` and the admin API. `zuulpush.edge.request` routes them and checks the admin key
first; what each answers is in the README (Admin API). They read the node through `NodeView`.

- `GET /admin/status`: 200, the node's state and load: everything `GET /healthz` says (which
  answers 503 while draining, for load balancers) plus its region, open connections by
  transport and device type, and its counters since start.
- `GET /admin/clients/<id>`: 200 and the client's connection on this node (transport, device
  type, user, state, since when), or 404 when it has none here. Both name the answering
  `node_id`: nodes sharing an address (workers on one port) can be told apart.
- `POST /admin/clients/<id>/close`: closes that connection, by default with the go-away
  `4000` and `{"reason": "admin", "reconnect_after_ms"}` (SSE: the `reconnect` event), with
  `?code=1000` a normal close without a hint; 200 once the close is written, 404 as above.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from core.clock import ClockMs
from registry.base import NodeState
from zuulpush.edge.answers import http_answer, http_error
from zuulpush.edge.config import EdgeConfig
from zuulpush.edge.protocol import EdgeConnection
from zuulpush.edge.request import Accept, Route
from zuulpush.edge.stats import EdgeStats
from zuulpush.edge.wsframes import Close

JsonAnswer = tuple[int, dict[str, object]]
MetricsPage = Callable[[], tuple[bytes, str]]


class NodeView(Protocol):
    """What the one-shot routes read of the node (`EdgeServer`), and the drain they may ask."""

    @property
    def node_id(self) -> str: ...

    @property
    def state(self) -> NodeState: ...

    @property
    def config(self) -> EdgeConfig: ...

    @property
    def stats(self) -> EdgeStats: ...

    @property
    def connections(self) -> Mapping[str, EdgeConnection]:
        """Client id -> its connection here."""
        ...

    @property
    def metrics_page(self) -> MetricsPage | None:
        """`GET /metrics`: the exposition and its content type (None: 404)."""
        ...

    @property
    def wall_clock_ms(self) -> ClockMs: ...

    def health(self) -> JsonAnswer:
        """`GET /healthz`: 200 while active (503 while draining) and the node's load."""
        ...

    def open_by_kind(self) -> dict[tuple[str, str], int]: ...

    def admin_drain(self) -> JsonAnswer:
        """`POST /admin/drain`: begin a drain (unless one runs); 202 and its outline."""
        ...


def answer(node: NodeView, accept: Accept) -> bytes:
    """The whole HTTP answer to a one-shot route."""
    if accept.route is Route.METRICS:
        return metrics(node)
    status, body = _JSON[accept.route](node, accept)
    return http_error(status, body)


def metrics(node: NodeView) -> bytes:
    """`GET /metrics`: the page the node's app exports, or 404 when it exports none."""
    if node.metrics_page is None:
        return http_error(404, {"error": {"code": "not_found",
                                          "message": "this node exports no metrics"}})
    body, content_type = node.metrics_page()
    return http_answer(200, body, content_type)


def status(node: NodeView, accept: Accept | None = None) -> JsonAnswer:
    """`GET /admin/status` (module docstring)."""
    _, body = node.health()
    stats = node.stats
    open_by: dict[str, dict[str, int]] = {}
    for (transport, device_type), n in sorted(node.open_by_kind().items()):
        open_by.setdefault(transport, {})[device_type] = n
    body.update(
        state=str(node.state), region=node.config.region, open=open_by,
        delivered=stats.delivered, replayed=stats.replayed, acks=stats.acks,
        rejected={str(code): n for code, n in sorted(stats.rejects.items())},
        auth_failures=dict(stats.auth_failures), slow_consumers=stats.slow_consumers,
        heartbeat_timeouts=stats.heartbeat_timeouts, violations=stats.violations,
        rate_limited=stats.rate_limited, replaced=stats.replaced,
        origin_refused=stats.origin_refused, auth_throttled=stats.auth_throttled,
        registry_errors=stats.registry_errors)
    return 200, body


def client(node: NodeView, accept: Accept) -> JsonAnswer:
    """`GET /admin/clients/<id>` (module docstring)."""
    conn = node.connections.get(accept.client_id or "")
    reg = None if conn is None else conn.registration
    if conn is None or reg is None or conn.wire is None:
        return _not_here(node, accept)
    connected_at = reg.version / 1e9  # a registration's version is its wall-clock ns
    return 200, {
        "client_id": reg.client_id, "node_id": node.node_id, "user_id": reg.user_id,
        "device_type": reg.device_type, "transport": conn.wire.name,
        "state": conn.state.name.lower(), "connected_at": round(connected_at, 3),
        "connected_s": round(max(0.0, node.wall_clock_ms() / 1000 - connected_at), 3),
    }


def close(node: NodeView, accept: Accept) -> JsonAnswer:
    """`POST /admin/clients/<id>/close` (module docstring)."""
    conn = node.connections.get(accept.client_id or "")
    if conn is None:
        return _not_here(node, accept)
    if accept.close_code == Close.RECONNECT:
        conn.goaway(Close.RECONNECT, "admin")
    else:
        conn.close(Close.NORMAL, "closed by an operator")
    return 200, {"closed": True, "client_id": accept.client_id, "node_id": node.node_id,
                 "code": accept.close_code}


def _not_here(node: NodeView, accept: Accept) -> JsonAnswer:
    message = f"client {accept.client_id!r} has no connection on node {node.node_id}"
    return 404, {"error": {"code": "not_found", "message": message},
                 "node_id": node.node_id}


_JSON: dict[Route, Callable[[NodeView, Accept], JsonAnswer]] = {
    Route.HEALTH: lambda node, _: node.health(),
    Route.ADMIN_DRAIN: lambda node, _: node.admin_drain(),
    Route.ADMIN_STATUS: status,
    Route.ADMIN_CLIENT: client,
    Route.ADMIN_CLOSE: close,
}
