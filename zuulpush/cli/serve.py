"""The commands that serve: `zuulpush serve` (everything in one process, in memory), and a
fleet's `zuulpush edge`, `zuulpush api` and `zuulpush router` on Redis. Each builds its app of
`zuulpush.app` from its settings and runs it until a signal (`zuulpush.cli.running`)."""

from __future__ import annotations

import argparse
import secrets
from typing import Any

from zuulpush.cli import options, workers
from zuulpush.cli.running import run_app
from zuulpush.config import ConfigError, load_settings

SERVE = ("Run the edge (WebSocket GET /ws, SSE GET /sse) and the push-send API (POST /v1/push) "
         "in one process with an in-memory registry, queue and inbox, and the operator's "
         "dashboard at the API's / (log in with the admin key). Without a secret, API key or "
         "admin key configured, makes ones for this run and prints them, with lines to paste "
         "into another terminal: a device token (only when the secret was made for the run; "
         "else a zuulpush token line that signs with yours), listen and curl lines that push "
         "to it. The API also serves a demo page (GET /demo; --no-demo turns it off).")
EDGE = ("Run one edge node (WebSocket GET /ws, SSE GET /sse) that registers every connection in "
        "the registry on Redis: batched, refreshed before its TTL runs out, removed on close. If "
        "Redis goes away the node keeps its connections and registers them all again when Redis "
        "is back. With --workers N, this process supervises N such nodes, one process each, on "
        "the same port: it starts a worker again when it exits, and on SIGTERM or SIGINT drains "
        "them all and exits. Needs a token secret or public key (ZUULPUSH_SECRET / "
        "ZUULPUSH_PUBLIC_KEY).")
API = ("Run the push-send API (POST /v1/push) for backend services: it resolves targets in the "
       "registry on Redis and enqueues on the priority queue there, for `zuulpush router` to "
       "deliver. Needs API keys (ZUULPUSH_API_KEYS).")
ROUTER = ("Run N router workers: take messages off the priority queue on Redis (high first, low "
          "never starved), drop expired ones, store each in its clients' inboxes and publish it "
          "to the node channel of the edge node holding each client. With peer regions, a "
          "message for a client connected in a peer region is stored here and forwarded to that "
          "region's queue, whose routers deliver it there; one for a client connected nowhere, "
          "and every broadcast, is forwarded to every peer region; a forwarded message is never "
          "forwarded again. The registry read is this region's (replicated by the edges). "
          "Stateless: run any number of these processes; a killed one's messages are claimed by "
          "the others after claim_idle_s. SIGTERM stops taking and finishes the batches in hand.")


def serve_arguments(p: argparse.ArgumentParser) -> None:
    options.config_file(p)
    options.edge_listener(p)
    options.api_listener(p)


def run_serve(args: argparse.Namespace) -> int:
    from zuulpush.app import EmbeddedApp, ServeConfig

    settings = load_settings(args.config, {
        "host": args.host, "port": args.port, "echo": args.echo, **options.api_flags(args),
        "log_format": args.log_format, **options.edge_limit_flags(args)})
    options.start_logging(args, settings)
    settings.setdefault("demo", True)  # the quick start, on loopback: see it work in a browser
    generated = fill_secrets(settings)
    return run_app(lambda: EmbeddedApp(ServeConfig.from_settings(settings)),
                   lambda app: app.describe(generated, config_file=args.config))


def fill_secrets(settings: dict[str, Any]) -> list[str]:
    """Make the secrets that are not configured, for this run only; returns their names. No
    token secret is made when a public key is configured: then this node only verifies."""
    generated = []
    for key, value in (("secret", secrets.token_urlsafe(32)),
                       ("api_keys", (secrets.token_urlsafe(24),)),
                       ("admin_key", secrets.token_urlsafe(24))):
        if key == "secret" and settings.get("public_key"):
            continue
        if not settings.get(key):
            settings[key] = value
            generated.append(key)
    return generated


def edge_arguments(p: argparse.ArgumentParser) -> None:
    options.config_file(p)
    options.redis(p)
    p.add_argument("--region", help="this region's name (default 'local')")
    p.add_argument("--peer-region", dest="peer_regions", metavar="NAME=URL", action="append",
                   help="another region's Redis to replicate with (repeatable)")
    options.edge_listener(p)
    p.add_argument("--node-id", help="this node's id (default host-pid-random); with "
                                     "--workers N, the workers are ID-1 .. ID-N")
    p.add_argument("--workers", dest="edge_workers", type=int, metavar="N",
                   help="run N edge nodes, each a process of its own, on the same port "
                        "(SO_REUSEPORT) under this process, which restarts a worker that exits "
                        "and on SIGTERM drains them all (default 1: this process is the node)")
    p.add_argument("--reuse-port", action="store_true", default=None,
                   help="bind with SO_REUSEPORT, so that other edge processes of this user may "
                        "listen on the same port (implied by --workers N)")


def run_edge(args: argparse.Namespace) -> int:
    from zuulpush.app import EdgeApp, EdgeAppConfig

    settings = load_settings(args.config, {
        "redis_url": args.redis_url, "region": args.region, "peer_regions": args.peer_regions,
        "host": args.host, "port": args.port, "node_id": args.node_id, "echo": args.echo,
        "edge_workers": args.edge_workers, "reuse_port": args.reuse_port,
        "log_format": args.log_format, **options.edge_limit_flags(args)})
    options.start_logging(args, settings)
    options.need_redis(settings, "edge")
    if not settings.get("secret") and not settings.get("public_key"):
        raise ConfigError("no token secret or public key: set ZUULPUSH_SECRET or "
                          "ZUULPUSH_PUBLIC_KEY")
    count = settings.get("edge_workers", 1)
    if count < 1:
        raise ConfigError("--workers (edge_workers) must be at least 1")
    if count > 1:
        return workers.supervise(settings, count)
    return run_app(lambda: EdgeApp(EdgeAppConfig.from_settings(settings)), EdgeApp.describe)


def api_arguments(p: argparse.ArgumentParser) -> None:
    options.config_file(p)
    options.redis(p)
    options.api_listener(p)
    options.logging_options(p)


def run_api(args: argparse.Namespace) -> int:
    from zuulpush.app import ApiApp, FleetAppConfig

    settings = load_settings(args.config, {"redis_url": args.redis_url,
                                           **options.api_flags(args),
                                           "log_format": args.log_format})
    options.start_logging(args, settings)
    options.need_redis(settings, "api")
    if not settings.get("api_keys"):
        raise ConfigError("no API key: set ZUULPUSH_API_KEYS (comma-separated)")
    return run_app(lambda: ApiApp(FleetAppConfig.from_settings(settings)), ApiApp.describe)


def router_arguments(p: argparse.ArgumentParser) -> None:
    options.config_file(p)
    options.redis(p)
    p.add_argument("--region", help="this region's name, as its edges' --region "
                                    "(default 'local')")
    p.add_argument("--peer-region", dest="peer_regions", metavar="NAME=URL", action="append",
                   help="another region's Redis, whose queue this router forwards that "
                        "region's clients' messages to (repeatable)")
    p.add_argument("--workers", dest="router_workers", type=int,
                   help="router workers (queue consumers) in this process (default 1)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve GET /metrics on this port (default -1: none; 0: a free port)")
    p.add_argument("--metrics-host", metavar="HOST",
                   help="address of the metrics port (default 127.0.0.1)")
    options.logging_options(p)


def run_router(args: argparse.Namespace) -> int:
    from zuulpush.app import FleetAppConfig, RouterApp

    settings = load_settings(args.config, {
        "redis_url": args.redis_url, "region": args.region, "peer_regions": args.peer_regions,
        "router_workers": args.router_workers, "metrics_port": args.metrics_port,
        "metrics_host": args.metrics_host, "log_format": args.log_format})
    options.start_logging(args, settings)
    options.need_redis(settings, "router")
    return run_app(lambda: RouterApp(FleetAppConfig.from_settings(settings)), RouterApp.describe)
