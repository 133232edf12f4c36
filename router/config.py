"""Configuration of the push-send API and the router workers (frozen, built once at start-up)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The push-send API for backend services.

    `max_batch` messages at most in one `POST /v1/push/batch`, whose body may be up to
    `max_batch_payload_bytes` (each message in it is still held to `max_payload_bytes`).
    `max_inbox_page` bounds a device's `GET /v1/inbox?limit=` and the ids of one inbox ack.
    With `api_tls_cert_file` (and `api_tls_key_file`, or the key in the same file) the API serves
    https:// only (`zuulpush.tls`).

    `demo` adds the demo page (`router.pages.demo`): a device token for anyone who asks, so off by
    default; `zuulpush serve` turns it on unless it is set. `public_edge_url` is the edge's URL
    as a browser reaches it (`https://push.example.com`), for the demo page; empty: `serve`
    derives it from the edge's address and port, `zuulpush api` has no demo without it.

    `api_key_rate_per_s` and `api_key_burst` hold each API key to a token bucket on
    `POST /v1/push` (a push costs 1) and `POST /v1/push/batch` (a batch costs its number of
    messages, so batching does not multiply the rate): past it, 429 with `Retry-After`. Per API
    process. A rate of 0 (the default): no limit. With a rate, `api_key_burst` must be at least
    `max_batch`, or a full batch could never pass.

    Brute-force brakes (`core.auth_throttle`), per source address and API process: a source
    may fail `api_key_failures_max` times in a row with a wrong API key on the push routes, and
    `dashboard_failures_max` times with a wrong admin key on the dashboard (its login, or a
    bearer admin key); then its attempts of that kind are answered 429 with `Retry-After`,
    unchecked, until a failure has drained: they drain at `*_failures_max` per
    `*_failures_window_s`. A `*_failures_max` of 0: no brake.
    """

    api_host: str = "127.0.0.1"
    api_port: int = 8081
    max_payload_bytes: int = 64 * 1024
    default_ttl_s: int = 3600
    max_ttl_s: int = 7 * 24 * 3600
    max_targets: int = 10_000
    max_batch: int = 500
    max_batch_payload_bytes: int = 1024 * 1024
    max_inbox_page: int = 1000
    api_tls_cert_file: str = ""
    api_tls_key_file: str = ""
    demo: bool = False
    public_edge_url: str = ""
    api_key_rate_per_s: float = 0.0
    api_key_burst: int = 1000
    api_key_failures_max: int = 20
    api_key_failures_window_s: float = 60.0
    dashboard_failures_max: int = 10
    dashboard_failures_window_s: float = 60.0

    def __post_init__(self) -> None:
        check_failure_limit("api_key", self.api_key_failures_max,
                            self.api_key_failures_window_s)
        check_failure_limit("dashboard", self.dashboard_failures_max,
                            self.dashboard_failures_window_s)
        if self.api_key_rate_per_s < 0:
            raise ValueError("api_key_rate_per_s must not be negative")
        if self.api_key_rate_per_s and self.api_key_burst < self.max_batch:
            raise ValueError("api_key_burst must be at least max_batch when "
                             "api_key_rate_per_s is set")


def check_failure_limit(role: str, failures_max: int, window_s: float) -> None:
    """ValueError unless `<role>_failures_max` is at least 0 and `<role>_failures_window_s` is
    positive (shared by the API's and the edge's configs)."""
    if failures_max < 0:
        raise ValueError(f"{role}_failures_max must not be negative")
    if window_s <= 0:
        raise ValueError(f"{role}_failures_window_s must be positive")


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Queue consumers, dedup, inboxes, and the broadcast history (the newest
    `broadcast_history_max` broadcasts, each kept until its TTL, that resuming devices replay)."""

    dedup_window_s: float = 600.0
    inbox_max_per_client: int = 1000
    worker_batch: int = 256
    node_channel_max_pending: int = 100_000
    broadcast_history_max: int = 1000
