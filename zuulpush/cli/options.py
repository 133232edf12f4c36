"""The options several commands share, and what they turn into: the settings they pass to
`zuulpush.config.load_settings`, logging, a client's TLS context."""

from __future__ import annotations

import argparse
import ssl
from typing import Any

from zuulpush import logs
from zuulpush.config import LOG_FORMATS, ConfigError, OpsConfig, build

EDGE_LIMITS = ("max_connections", "hard_max_connections", "accept_rate_per_s", "accept_burst",
               "shed_loop_lag_ms", "shed_retry_after_s", "lifetime_min_s", "lifetime_max_s",
               "drain_window_s")


def config_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file")


def redis(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis", dest="redis_url", metavar="URL",
                   help="redis://host:port/db, or redis+cluster://host:port for a Redis Cluster")


def logging_options(p: argparse.ArgumentParser) -> None:
    """The logging options of every long-running command."""
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="default info")
    p.add_argument("--log-format", choices=LOG_FORMATS,
                   help="text lines, or one JSON object per line (default text)")


def start_logging(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    try:
        ops = build(OpsConfig, settings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    logs.configure(args.log_level, ops.log_format)


def need_redis(settings: dict[str, Any], command: str) -> None:
    if not settings.get("redis_url"):
        raise ConfigError(f"zuulpush {command} needs --redis URL (or ZUULPUSH_REDIS_URL); "
                          "for one process without Redis, use zuulpush serve")


def edge_listener(p: argparse.ArgumentParser) -> None:
    """The options of every command that runs an edge."""
    p.add_argument("--host", help="edge address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="edge port (default 8080; 0 picks a free one)")
    p.add_argument("--echo", action="store_true", default=None,
                   help="enable the diagnostic WebSocket echo endpoint GET /echo")
    p.add_argument("--tls-cert", dest="tls_cert_file", metavar="FILE",
                   help="serve the edge over TLS only (wss://, https://) with this PEM "
                        "certificate chain")
    p.add_argument("--tls-key", dest="tls_key_file", metavar="FILE",
                   help="the edge certificate's PEM private key (default: in --tls-cert's file)")
    edge_limits(p)
    logging_options(p)


def edge_limits(p: argparse.ArgumentParser) -> None:
    """Load shedding and connection lifetime (README: Load shedding and connection lifetime)."""
    g = p.add_argument_group("load shedding and connection lifetime")
    g.add_argument("--max-connections", type=int, metavar="N",
                   help="answer 503 past N open connections (default 0: 90%% of the hard one)")
    g.add_argument("--hard-max-connections", type=int, metavar="N",
                   help="close new sockets at accept past N (default 0: the file-descriptor "
                        "limit less a twentieth)")
    g.add_argument("--accept-rate", dest="accept_rate_per_s", type=float, metavar="PER_S",
                   help="new connections per second before 503 (default 5000; 0: no limit)")
    g.add_argument("--accept-burst", type=int, metavar="N",
                   help="new connections allowed at once above the rate (default 1000)")
    g.add_argument("--shed-loop-lag-ms", type=int, metavar="MS",
                   help="answer 503 to new connections while the event loop runs this late "
                        "(default 100; 0: never)")
    g.add_argument("--shed-retry-after-s", type=int, metavar="S",
                   help="shortest window of the jittered Retry-After of a 503 (default 4)")
    g.add_argument("--lifetime-min-s", type=float, metavar="S",
                   help="shortest connection lifetime (default 1500)")
    g.add_argument("--lifetime-max-s", type=float, metavar="S",
                   help="longest connection lifetime (default 2100; 0: no lifetime)")
    g.add_argument("--drain-window-s", type=float, metavar="S",
                   help="a drain (SIGTERM, POST /admin/drain, zuulpush drain) closes the "
                        "connections spread over S seconds (default 30)")


def edge_limit_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings `edge_limits` and the edge's TLS options give."""
    return {key: getattr(args, key) for key in (*EDGE_LIMITS, "tls_cert_file", "tls_key_file")}


def api_listener(p: argparse.ArgumentParser) -> None:
    """The options of every command that runs a push-send API."""
    p.add_argument("--api-host", help="push-send API address (default 127.0.0.1)")
    p.add_argument("--api-port", type=int, help="push-send API port (default 8081; 0: free)")
    p.add_argument("--api-tls-cert", dest="api_tls_cert_file", metavar="FILE",
                   help="serve the API over TLS only (https://) with this PEM certificate chain")
    p.add_argument("--api-tls-key", dest="api_tls_key_file", metavar="FILE",
                   help="the API certificate's PEM private key (default: in --api-tls-cert's "
                        "file)")
    p.add_argument("--demo", action=argparse.BooleanOptionalAction, default=None,
                   help="serve the demo page GET /demo, which hands a device token to anyone "
                        "who asks (default: on for serve, off for api)")
    p.add_argument("--public-edge-url", metavar="URL",
                   help="the edge's URL as a browser reaches it, for the demo page (serve: "
                        "default the edge's address and port)")


def api_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings `api_listener` gives."""
    return {key: getattr(args, key)
            for key in ("api_host", "api_port", "api_tls_cert_file", "api_tls_key_file", "demo",
                        "public_edge_url")}


def cacert(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cacert", metavar="FILE",
                   help="trust the certificates in this PEM file for https:// and wss:// "
                        "(e.g. a self-signed server certificate) instead of the system's")


def client_tls(cafile: str | None) -> ssl.SSLContext | None:
    """The client SSL context for `--cacert` (None: the system's trust store)."""
    if cafile is None:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--cacert {cafile}: {exc}") from None
