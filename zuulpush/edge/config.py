"""Configuration of one edge node (frozen, built once at start-up)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """Listening address, limits and timers of an edge node. Units are in the names."""

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
