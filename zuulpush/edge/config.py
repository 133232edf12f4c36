"""Configuration of one edge node (frozen, built once at start-up)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from router.config import check_failure_limit
from zuulpush.tls import DEFAULT_CIPHERS

ANY_ORIGIN = "*"
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s?#]+|null")


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """Listening address, limits and timers of an edge node. Units are in the names.

    Shedding and lifetimes (`zuulpush.edge.shedding`, `zuulpush.edge.lifetime`): ceilings of 0
    are derived from the file-descriptor limit; an `accept_rate_per_s` or `shed_loop_lag_ms` of 0
    turns that check off; a `lifetime_max_s` of 0 turns lifetimes off.

    TLS (`zuulpush.tls`): with `tls_cert_file` the node serves wss:// and https:// only (the key in
    `tls_key_file`, or in the certificate file when that is empty). `reuse_port` binds with
    SO_REUSEPORT, so that several processes (`zuulpush edge --workers N`) listen on one port.

    Browsers (`zuulpush.edge.request`): `allowed_origins` lists the `Origin`s whose pages may
    open `/ws` and `/sse`, each `scheme://host[:port]` as browsers send it (or `null`); empty,
    or with `*` in it: any. Requests without an `Origin` (native apps) always pass.

    The admin API's brute-force brake (`core.auth_throttle`), per source address and node: a
    source may send a wrong admin key `edge_admin_failures_max` times in a row, then its admin
    requests are answered 429 with `Retry-After`, unchecked, until a failure has drained (they
    drain at `edge_admin_failures_max` per `edge_admin_failures_window_s`); 0: no brake."""

    host: str = "127.0.0.1"
    port: int = 8080
    node_id: str = ""
    region: str = "local"
    echo: bool = False
    heartbeat_interval_s: float = 30.0
    handshake_timeout_s: float = 10.0
    max_header_bytes: int = 8 * 1024
    ws_max_message_bytes: int = 64 * 1024
    ws_inbound_rate_per_s: float = 50.0
    ws_inbound_burst: int = 200
    echo_max_message_bytes: int = 16 * 1024 * 1024
    write_limit_bytes: int = 1024 * 1024
    sse_retry_ms: int = 3000
    registry_ttl_s: float = 120.0
    replay_page_size: int = 500
    max_connections: int = 0
    hard_max_connections: int = 0
    accept_rate_per_s: float = 5000.0
    accept_burst: int = 1000
    shed_loop_lag_ms: int = 100
    shed_retry_after_s: int = 4
    lifetime_min_s: float = 1500.0
    lifetime_max_s: float = 2100.0
    drain_window_s: float = 30.0
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ciphers: str = DEFAULT_CIPHERS
    reuse_port: bool = False
    allowed_origins: tuple[str, ...] = ()
    edge_admin_failures_max: int = 10
    edge_admin_failures_window_s: float = 60.0

    def __post_init__(self) -> None:
        check_failure_limit("edge_admin", self.edge_admin_failures_max,
                            self.edge_admin_failures_window_s)
        for origin in self.allowed_origins:
            if origin != ANY_ORIGIN and not _ORIGIN.fullmatch(_normal(origin)):
                raise ValueError(f"allowed_origins: {origin!r} is not scheme://host[:port], "
                                 "null or *")
        for name in ("max_connections", "hard_max_connections", "accept_rate_per_s",
                     "shed_loop_lag_ms", "lifetime_min_s", "lifetime_max_s",
                     "drain_window_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.accept_burst < 1 or self.shed_retry_after_s < 1:
            raise ValueError("accept_burst and shed_retry_after_s must be at least 1")
        if self.lifetime_max_s and self.lifetime_min_s > self.lifetime_max_s:
            raise ValueError("lifetime_min_s must not be more than lifetime_max_s")

    def origin_allow_list(self) -> frozenset[str] | None:
        """The allowed origins, lower case and without a trailing `/`; None: any origin."""
        if not self.allowed_origins or ANY_ORIGIN in self.allowed_origins:
            return None
        return frozenset(_normal(origin) for origin in self.allowed_origins)


def _normal(origin: str) -> str:
    return origin.strip().lower().removesuffix("/")
