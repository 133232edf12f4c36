"""`EdgeStats`: what one edge node counts since start, shared by its parts (the connections,
the hub, the registrar, the listener) and read by `/healthz`, `/admin/status` and metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from core.errors import AuthThrottled, Forbidden, InvalidToken, Unauthorized, ZuulpushError
from zuulpush.errors import OriginRefused
from zuulpush.tally import DEPTH_BOUNDS, LATENCY_BOUNDS_MS, Buckets


@dataclass(slots=True)
class EdgeStats:
    """Counters since start: plain numbers, cheap on the hot paths; `zuulpush.metrics` copies
    them into Prometheus metrics once a second."""

    connects: int = 0
    rejects: Counter[int] = field(default_factory=Counter)
    violations: int = 0  # protocol violations closed (1002, 1003, 1007, 1008, 1009)
    rate_limited: int = 0  # closed for sending past the inbound rate (1008)
    replaced: int = 0  # closed for a newer connection of the same client id (4003)
    origin_refused: int = 0  # refused for a browser origin not on the allow list (403)
    auth_throttled: int = 0  # admin requests refused unchecked: their source is over (429)
    heartbeat_timeouts: int = 0
    slow_consumers: int = 0
    delivered: int = 0
    acks: int = 0
    registry_errors: int = 0
    reregistered: int = 0
    shed: Counter[str] = field(default_factory=Counter)
    lifetime_closes: int = 0
    fd_exhaustion_episodes: int = 0
    relistens: int = 0
    drain_closes: int = 0  # go-aways sent by a drain
    replayed: int = 0  # messages written by replays (inbox entries and missed broadcasts)
    redelivered: int = 0  # inbox entries written to open connections whose registration was lost
    auth_failures: Counter[str] = field(default_factory=Counter)  # device_token, admin_key
    latency: Buckets = field(default_factory=lambda: Buckets(LATENCY_BOUNDS_MS))
    """Milliseconds from the API's accepting a message (its id) to its live write here, one
    observation per delivery (a message for this node), however many sockets it went to."""
    inbox_depth: Buckets = field(default_factory=lambda: Buckets(DEPTH_BOUNDS))
    """Messages replayed to each connection as it opened: its inbox's depth then."""

    def count_reject(self, error: ZuulpushError) -> None:
        self.rejects[error.http_status] += 1
        if isinstance(error, OriginRefused):
            self.origin_refused += 1
        elif isinstance(error, AuthThrottled):
            self.auth_throttled += 1
        if isinstance(error, InvalidToken):
            self.auth_failures["device_token"] += 1
        elif isinstance(error, Unauthorized | Forbidden):  # only admin routes check a key
            self.auth_failures["admin_key"] += 1
