"""The edge's one-shot routes, answered from the node's state and closed: `GET /healthz`,
`GET /metrics` and the admin API. `zuulpush.edge.request` routes them and checks the admin key
first; what each answers is in the README (Admin API).

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

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from zuulpush.edge.answers import http_answer, http_error
from zuulpush.edge.request import Accept, Route
from zuulpush.edge.wsframes import Close

if TYPE_CHECKING:
    from zuulpush.edge.server import EdgeServer

JsonAnswer = tuple[int, dict[str, object]]


def answer(server: EdgeServer, accept: Accept) -> bytes:
    """The whole HTTP answer to a one-shot route."""
    if accept.route is Route.METRICS:
        return metrics(server)
    status, body = _JSON[accept.route](server, accept)
    return http_error(status, body)


def metrics(server: EdgeServer) -> bytes:
    """`GET /metrics`: the page the node's app exports, or 404 when it exports none."""
    if server.metrics_page is None:
        return http_error(404, {"error": {"code": "not_found",
                                          "message": "this node exports no metrics"}})
    body, content_type = server.metrics_page()
    return http_answer(200, body, content_type)


def status(server: EdgeServer, accept: Accept | None = None) -> JsonAnswer:
    """`GET /admin/status` (module docstring)."""
    _, body = server.health()
    stats = server.stats
    open_by: dict[str, dict[str, int]] = {}
    for (transport, device_type), n in sorted(server.open_by_kind().items()):
        open_by.setdefault(transport, {})[device_type] = n
    body.update(
        state=str(server.state), region=server.config.region, open=open_by,
        delivered=stats.delivered, replayed=stats.replayed, acks=stats.acks,
        rejected={str(code): n for code, n in sorted(stats.rejects.items())},
        auth_failures=dict(stats.auth_failures), slow_consumers=stats.slow_consumers,
        heartbeat_timeouts=stats.heartbeat_timeouts, violations=stats.violations,
        rate_limited=stats.rate_limited, replaced=stats.replaced,
        origin_refused=stats.origin_refused, auth_throttled=stats.auth_throttled,
        registry_errors=stats.registry_errors)
    return 200, body


def client(server: EdgeServer, accept: Accept) -> JsonAnswer:
    """`GET /admin/clients/<id>` (module docstring)."""
    conn = server.connections.get(accept.client_id or "")
    reg = None if conn is None else conn.registration
    if conn is None or reg is None or conn.wire is None:
        return _not_here(server, accept)
    connected_at = reg.version / 1e9  # a registration's version is its wall-clock ns
    return 200, {
        "client_id": reg.client_id, "node_id": server.node_id, "user_id": reg.user_id,
        "device_type": reg.device_type, "transport": conn.wire.name,
        "state": conn.state.name.lower(), "connected_at": round(connected_at, 3),
        "connected_s": round(max(0.0, time.time() - connected_at), 3),
    }


def close(server: EdgeServer, accept: Accept) -> JsonAnswer:
    """`POST /admin/clients/<id>/close` (module docstring)."""
    conn = server.connections.get(accept.client_id or "")
    if conn is None:
        return _not_here(server, accept)
    if accept.close_code == Close.RECONNECT:
        conn.goaway(Close.RECONNECT, "admin")
    else:
        conn.close(Close.NORMAL, "closed by an operator")
    return 200, {"closed": True, "client_id": accept.client_id, "node_id": server.node_id,
                 "code": accept.close_code}


def _not_here(server: EdgeServer, accept: Accept) -> JsonAnswer:
    message = f"client {accept.client_id!r} has no connection on node {server.node_id}"
    return 404, {"error": {"code": "not_found", "message": message},
                 "node_id": server.node_id}


_JSON: dict[Route, Callable[[EdgeServer, Accept], JsonAnswer]] = {
    Route.HEALTH: lambda server, _: server.health(),
    Route.ADMIN_DRAIN: lambda server, _: server.admin_drain(),
    Route.ADMIN_STATUS: status,
    Route.ADMIN_CLIENT: client,
    Route.ADMIN_CLOSE: close,
}
