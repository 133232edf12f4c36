"""Configuration of the push-send API and the router workers (frozen, built once at start-up)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The push-send API for backend services."""

    api_host: str = "127.0.0.1"
    api_port: int = 8081
    max_payload_bytes: int = 64 * 1024
    default_ttl_s: int = 3600
    max_ttl_s: int = 7 * 24 * 3600
    max_targets: int = 10_000


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Queue consumers, dedup and inboxes."""

    dedup_window_s: float = 600.0
    inbox_max_per_client: int = 1000
    worker_batch: int = 256
    node_channel_max_pending: int = 100_000
