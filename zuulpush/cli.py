"""The `zuulpush` command line.

    zuulpush serve   everything in one process, in memory (no Redis): edge + push-send API
    zuulpush edge    one edge node of a fleet, on Redis (registry, inboxes, node channel), or
                     N of them on one port (--workers N)
    zuulpush api     the push-send API of a fleet, enqueueing on Redis
    zuulpush router  router workers of a fleet, on Redis
    zuulpush status  the fleet's edge nodes, their state and connection counts
    zuulpush drain   ask an edge node of the fleet to drain, through the registry
    zuulpush admin   an edge node's admin API: its status, a client's connection, close it
    zuulpush token   print a device token signed with the configured secret
    zuulpush send    push a message through the push-send API
    zuulpush listen  connect as a device over WebSocket and print what arrives

Settings come from `--config FILE` (TOML), `ZUULPUSH_*` environment variables and flags, flags
winning; `zuulpush.config` documents the keys.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import secrets
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from core.errors import Unavailable
from core.tokens import issue_token
from zuulpush import __version__, logs
from zuulpush.config import LOG_FORMATS, ConfigError, OpsConfig, build, load_settings
from zuulpush.serve_banner import schemes, serve_banner

if TYPE_CHECKING:
    from zuulpush.app import EdgeAppConfig
    from zuulpush.supervisor import Slot, Worker

def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"zuulpush: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"zuulpush: {exc}", file=sys.stderr)
        return 1


class StartError(Exception):
    """A process could not start for a reason outside it (its Redis unreachable): exit 1 with
    one line, for its supervisor to start it again."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zuulpush", description="A push-messaging edge for WebSocket and SSE devices.")
    parser.add_argument("--version", action="version", version=f"zuulpush {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _serve_parser(commands)
    _edge_parser(commands)
    _api_parser(commands)
    _router_parser(commands)
    _status_parser(commands)
    _drain_parser(commands)
    _admin_parser(commands)
    _token_parser(commands)
    _send_parser(commands)
    _listen_parser(commands)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML settings file")


def _redis_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis", dest="redis_url", metavar="URL",
                   help="redis://host:port/db, or redis+cluster://host:port for a Redis Cluster")


def _log_level(p: argparse.ArgumentParser) -> None:
    """The logging options of every long-running command."""
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="default info")
    p.add_argument("--log-format", choices=LOG_FORMATS,
                   help="text lines, or one JSON object per line (default text)")


def _start_logging(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    try:
        ops = build(OpsConfig, settings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    logs.configure(args.log_level, ops.log_format)


def _need_redis(settings: dict[str, Any], command: str) -> None:
    if not settings.get("redis_url"):
        raise ConfigError(f"zuulpush {command} needs --redis URL (or ZUULPUSH_REDIS_URL); "
                          "for one process without Redis, use zuulpush serve")


def _edge_listener(p: argparse.ArgumentParser) -> None:
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
    _edge_limits(p)
    _log_level(p)


EDGE_LIMITS = ("max_connections", "hard_max_connections", "accept_rate_per_s", "accept_burst",
               "shed_loop_lag_ms", "shed_retry_after_s", "lifetime_min_s", "lifetime_max_s",
               "drain_window_s")


def _edge_limits(p: argparse.ArgumentParser) -> None:
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


def _edge_limit_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in (*EDGE_LIMITS, "tls_cert_file", "tls_key_file")}


def _api_listener(p: argparse.ArgumentParser) -> None:
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


def _api_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key)
            for key in ("api_host", "api_port", "api_tls_cert_file", "api_tls_key_file", "demo",
                        "public_edge_url")}


def _run_app(make: Callable[[], Any], banner: Callable[[Any], str],
             lifeline_fd: int | None = None) -> int:
    """Build the app (a ValueError is a configuration error), run it on uvloop until SIGINT or
    SIGTERM (or, for an app with an edge, until a drain asked through the registry or the admin
    API is over, or until `lifeline_fd` reads end of file: a supervisor is gone), and shut it down
    cleanly: an edge drains first. The banner is printed once the app serves (if not empty)."""
    import uvloop

    try:
        app = make()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    edge = getattr(app, "edge", None)
    logs.add_context(node_id=edge.node_id if edge is not None else app.node_id)
    uvloop.run(_run_until_signal(app, banner, lifeline_fd))
    return 0


# serve

def _serve_parser(commands: Any) -> None:
    p = commands.add_parser(
        "serve", help="run edge, router and push-send API (with its dashboard and demo page) in "
        "one process, in memory (no Redis)",
        description="Run the edge (WebSocket GET /ws, SSE GET /sse) and the push-send API "
                    "(POST /v1/push) in one process with an in-memory registry, queue and "
                    "inbox, and the operator's dashboard at the API's / (log in with the admin "
                    "key). Without a secret, API key or admin key configured, makes ones for "
                    "this run and prints them, with lines to paste into another terminal: a "
                    "device token (only when the secret was made for the run; else a zuulpush "
                    "token line that signs with yours), listen and curl lines that push to it. "
                    "The API also serves a demo page (GET /demo; --no-demo turns it off).")
    _common(p)
    _edge_listener(p)
    _api_listener(p)
    p.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from zuulpush.app import EmbeddedApp, ServeConfig

    settings = load_settings(args.config, {
        "host": args.host, "port": args.port, "echo": args.echo, **_api_flags(args),
        "log_format": args.log_format, **_edge_limit_flags(args)})
    _start_logging(args, settings)
    settings.setdefault("demo", True)  # the quick start, on loopback: see it work in a browser
    generated = _fill_secrets(settings)
    return _run_app(lambda: EmbeddedApp(ServeConfig.from_settings(settings)),
                    lambda app: serve_banner(app, generated, config_file=args.config))


def _fill_secrets(settings: dict[str, Any]) -> list[str]:
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


async def _start(app: Any) -> None:
    """`app.start()`; a Redis outage while starting is a `StartError`, an address it cannot
    listen on a `ConfigError` (`zuulpush.binding`), after what had started is stopped again."""
    from core.redis.common import as_outage
    from zuulpush.binding import ListenError

    try:
        await app.start()
    except Exception as exc:
        outage = exc if isinstance(exc, Unavailable) else as_outage(exc)
        if outage is None and not isinstance(exc, ListenError):
            raise
        with contextlib.suppress(Exception):
            await app.stop(0.0)
        if outage is None:
            raise ConfigError(str(exc)) from None
        raise StartError(f"cannot start: {outage.message}") from None


async def _run_until_signal(app: Any, banner: Callable[[Any], str],
                            lifeline_fd: int | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if lifeline_fd is not None:  # only ever readable at its end: then stop, as on SIGTERM
        def supervisor_gone() -> None:
            loop.remove_reader(lifeline_fd)
            stop.set()

        loop.add_reader(lifeline_fd, supervisor_gone)
    await _start(app)
    gc.freeze()  # what start-up made lives as long as the process: no collection scans it again
    text = banner(app)
    if text:
        print(text, flush=True)
    edge = getattr(app, "edge", None)
    waits = [asyncio.ensure_future(stop.wait())]
    if edge is not None:
        waits.append(asyncio.ensure_future(edge.drained.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for waiting in waits:
        waiting.cancel()
    if edge is not None:  # a second signal during the drain cuts it short
        why = "SIGTERM or SIGINT" if stop.is_set() else "drained"
        stop.clear()
        drain = asyncio.ensure_future(edge.drain(why))
        cut = asyncio.ensure_future(stop.wait())
        await asyncio.wait([drain, cut], return_when=asyncio.FIRST_COMPLETED)
        cut.cancel()
    logging.getLogger("zuulpush").info("shutting down")
    await app.stop()


# edge

def _edge_parser(commands: Any) -> None:
    p = commands.add_parser(
        "edge", help="run one edge node of a fleet (or N: --workers), its registry on Redis",
        description="Run one edge node (WebSocket GET /ws, SSE GET /sse) that registers every "
                    "connection in the registry on Redis: batched, refreshed before its TTL "
                    "runs out, removed on close. If Redis goes away the node keeps its "
                    "connections and registers them all again when Redis is back. With "
                    "--workers N, this process supervises N such nodes, one process each, on "
                    "the same port: it starts a worker again when it exits, and on SIGTERM or "
                    "SIGINT drains them all and exits. Needs a token secret or public key "
                    "(ZUULPUSH_SECRET / ZUULPUSH_PUBLIC_KEY).")
    _common(p)
    _redis_option(p)
    p.add_argument("--region", help="this region's name (default 'local')")
    p.add_argument("--peer-region", dest="peer_regions", metavar="NAME=URL", action="append",
                   help="another region's Redis to replicate with (repeatable)")
    _edge_listener(p)
    p.add_argument("--node-id", help="this node's id (default host-pid-random); with "
                                     "--workers N, the workers are ID-1 .. ID-N")
    p.add_argument("--workers", dest="edge_workers", type=int, metavar="N",
                   help="run N edge nodes, each a process of its own, on the same port "
                        "(SO_REUSEPORT) under this process, which restarts a worker that exits "
                        "and on SIGTERM drains them all (default 1: this process is the node)")
    p.add_argument("--reuse-port", action="store_true", default=None,
                   help="bind with SO_REUSEPORT, so that other edge processes of this user may "
                        "listen on the same port (implied by --workers N)")
    p.set_defaults(run=_edge)


def _edge(args: argparse.Namespace) -> int:
    from zuulpush.app import EdgeApp, EdgeAppConfig

    settings = load_settings(args.config, {
        "redis_url": args.redis_url, "region": args.region, "peer_regions": args.peer_regions,
        "host": args.host, "port": args.port, "node_id": args.node_id, "echo": args.echo,
        "edge_workers": args.edge_workers, "reuse_port": args.reuse_port,
        "log_format": args.log_format, **_edge_limit_flags(args)})
    _start_logging(args, settings)
    _need_redis(settings, "edge")
    if not settings.get("secret") and not settings.get("public_key"):
        raise ConfigError("no token secret or public key: set ZUULPUSH_SECRET or "
                          "ZUULPUSH_PUBLIC_KEY")
    workers = settings.get("edge_workers", 1)
    if workers < 1:
        raise ConfigError("--workers (edge_workers) must be at least 1")
    if workers > 1:
        return _supervise(settings, workers)
    return _run_app(lambda: EdgeApp(EdgeAppConfig.from_settings(settings)), _edge_banner)


def _edge_banner(app: Any) -> str:
    config = app.config
    edge = f"{config.edge.host}:{app.edge.port}"
    http, ws = schemes(app.edge.tls)
    peers = ", ".join(sorted(config.registry.peers())) or "none"
    return "\n".join([
        f"zuulpush {__version__} edge node {app.edge.node_id} (region {config.registry.region}, "
        f"peer regions: {peers})",
        f"  edge: {ws}://{edge}/ws   sse: {http}://{edge}/sse",
        f"  ready: edge={http}://{edge} node={app.edge.node_id}",
    ])


def _supervise(settings: dict[str, Any], workers: int) -> int:
    """`zuulpush edge --workers N` (N > 1): everything a worker would refuse is refused here,
    before any fork; then `zuulpush.supervisor` runs the N workers."""
    from zuulpush.app import EdgeAppConfig
    from zuulpush.binding import ListenError
    from zuulpush.edge.server import default_node_id, edge_tls
    from zuulpush.supervisor import STOP_GRACE_S, Supervisor

    try:
        config = EdgeAppConfig.from_settings(settings)
        config.registry.peers()
        tls = edge_tls(config.edge)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    edge = config.edge
    base = edge.node_id or default_node_id()
    supervisor = Supervisor(
        workers, base, edge.host, edge.port, functools.partial(_edge_worker, settings),
        announce=functools.partial(_workers_banner, config, base, schemes(tls)),
        stop_timeout_s=edge.drain_window_s + edge.heartbeat_interval_s + STOP_GRACE_S)
    try:
        return supervisor.run()
    except (ValueError, ListenError) as exc:
        raise ConfigError(str(exc)) from None


def _edge_worker(settings: dict[str, Any], slot: Slot) -> int:
    """One worker of `zuulpush edge --workers N`, in its forked process: the node
    `slot.node_id` on `slot.port` (SO_REUSEPORT), telling the supervisor once it serves."""
    from zuulpush.app import EdgeApp, EdgeAppConfig

    mine = {**settings, "node_id": slot.node_id, "port": slot.port, "reuse_port": True}

    def ready(app: Any) -> str:
        slot.ready()
        return ""  # the supervisor prints the banner, once all serve

    try:
        return _run_app(lambda: EdgeApp(EdgeAppConfig.from_settings(mine)), ready,
                        slot.lifeline_fd)
    except (ConfigError, StartError) as exc:
        print(f"zuulpush: worker {slot.node_id}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def _workers_banner(config: EdgeAppConfig, base: str, schemes: tuple[str, str],
                    started: list[Worker], port: int) -> str:
    http, ws = schemes
    edge = f"{config.edge.host}:{port}"
    peers = ", ".join(sorted(config.registry.peers())) or "none"
    return "\n".join([
        f"zuulpush {__version__} edge: {len(started)} worker processes on one port, nodes "
        f"{started[0].node_id} .. {started[-1].node_id} (region {config.registry.region}, "
        f"peer regions: {peers})",
        f"  edge: {ws}://{edge}/ws   sse: {http}://{edge}/sse",
        *(f"  worker: node={w.node_id} pid={w.pid}" for w in started),
        f"  ready: edge={http}://{edge} node={base} workers={len(started)}",
    ])


# api

def _api_parser(commands: Any) -> None:
    p = commands.add_parser(
        "api", help="run the push-send API of a fleet, enqueueing on Redis",
        description="Run the push-send API (POST /v1/push) for backend services: it resolves "
                    "targets in the registry on Redis and enqueues on the priority queue "
                    "there, for `zuulpush router` to deliver. Needs API keys "
                    "(ZUULPUSH_API_KEYS).")
    _common(p)
    _redis_option(p)
    _api_listener(p)
    _log_level(p)
    p.set_defaults(run=_api)


def _api(args: argparse.Namespace) -> int:
    from zuulpush.app import ApiApp, FleetAppConfig

    settings = load_settings(args.config, {"redis_url": args.redis_url, **_api_flags(args),
                                           "log_format": args.log_format})
    _start_logging(args, settings)
    _need_redis(settings, "api")
    if not settings.get("api_keys"):
        raise ConfigError("no API key: set ZUULPUSH_API_KEYS (comma-separated)")
    return _run_app(lambda: ApiApp(FleetAppConfig.from_settings(settings)), _api_banner)


def _api_banner(app: Any) -> str:
    api = f"{schemes(app.api.tls)[0]}://{app.config.api.api_host}:{app.api_port}"
    return "\n".join([
        f"zuulpush {__version__} push-send API {app.node_id} on {app.config.registry.redis_url}",
        f"  api:  {api}/v1/push",
        f"  dashboard: {api}/  " + ("(log in with the admin key)" if app.config.auth.admin_key
                                    else "(off: no admin key, ZUULPUSH_ADMIN_KEY)"),
        f"  ready: api={api} node={app.node_id}",
    ])


# router

def _router_parser(commands: Any) -> None:
    p = commands.add_parser(
        "router", help="run router workers of a fleet, on Redis",
        description="Run N router workers: take messages off the priority queue on Redis "
                    "(high first, low never starved), drop expired ones, store each in its "
                    "clients' inboxes and publish it to the node channel of the edge node "
                    "holding each client. With peer regions, a message for a client "
                    "connected in a peer region is stored here and forwarded to that region's "
                    "queue, whose routers deliver it there; one for a client connected nowhere, "
                    "and every broadcast, is forwarded to every peer region; a forwarded "
                    "message is never forwarded again. The registry read is this region's "
                    "(replicated by the edges). Stateless: "
                    "run any number of these processes; a killed one's messages are claimed by "
                    "the others after claim_idle_s. SIGTERM stops taking and finishes the "
                    "batches in hand.")
    _common(p)
    _redis_option(p)
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
    _log_level(p)
    p.set_defaults(run=_router)


def _router(args: argparse.Namespace) -> int:
    from zuulpush.app import FleetAppConfig, RouterApp

    settings = load_settings(args.config, {
        "redis_url": args.redis_url, "region": args.region, "peer_regions": args.peer_regions,
        "router_workers": args.router_workers, "metrics_port": args.metrics_port,
        "metrics_host": args.metrics_host, "log_format": args.log_format})
    _start_logging(args, settings)
    _need_redis(settings, "router")
    return _run_app(lambda: RouterApp(FleetAppConfig.from_settings(settings)), _router_banner)


def _router_banner(app: Any) -> str:
    n = len(app.workers.workers)
    registry = app.config.registry
    peers = ", ".join(sorted(app.peers)) or "none"
    metrics = [f"  metrics: {app.metrics_site.url}"] if app.metrics_site.url else []
    return "\n".join([
        f"zuulpush {__version__} router {app.node_id}: {n} worker(s) on {registry.redis_url} "
        f"(region {registry.region}, peer regions: {peers})",
        *metrics,
        f"  ready: node={app.node_id} workers={n}",
    ])


# status

def _status_parser(commands: Any) -> None:
    p = commands.add_parser(
        "status", help="list the fleet's edge nodes, their state and connection counts",
        description="Read the node records in the registry on Redis and print each live edge "
                    "node: region, state (active/draining), connections, by device type.")
    _common(p)
    _redis_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_status)


def _status(args: argparse.Namespace) -> int:

    nodes = _on_registry(args, "status", lambda registry: registry.nodes())
    if nodes is None:
        return 1
    print(_status_json(nodes) if args.json else _status_table(nodes))
    return 0


def _on_registry(args: argparse.Namespace, command: str,
                 work: Callable[[Any], Awaitable[Any]]) -> Any:
    """What `work(registry)` returns, on this region's registry on Redis (`--redis`); None
    (after saying why on stderr) when the registry cannot be reached."""
    from registry.config import RegistryConfig
    from registry.factory import open_registry
    from zuulpush.config import build

    settings = load_settings(args.config, {"redis_url": args.redis_url})
    if not settings.get("redis_url"):
        raise ConfigError(f"zuulpush {command} needs --redis URL (or ZUULPUSH_REDIS_URL)")
    config = build(RegistryConfig, {**settings, "peer_regions": ()})

    async def run() -> Any:
        handle = open_registry(config)
        try:
            return await work(handle.registry)
        finally:
            await handle.close()

    try:
        return asyncio.run(run())
    except (OSError, ConnectionError, Unavailable) as exc:
        print(f"zuulpush: cannot reach the registry at {config.redis_url}: {exc}",
              file=sys.stderr)
        return None
    except Exception as exc:  # redis-py's errors are not OSErrors
        if type(exc).__module__.startswith("redis"):
            print(f"zuulpush: cannot reach the registry at {config.redis_url}: {exc}",
                  file=sys.stderr)
            return None
        raise


# drain

DRAIN_REQUEST_TTL_S = 60.0
"""How long a drain request waits for its node to take it (nodes look every few seconds)."""


def _drain_parser(commands: Any) -> None:
    p = commands.add_parser(
        "drain", help="ask an edge node of the fleet to drain, through the registry",
        description="Record a drain request for edge node ID in the registry on Redis (this "
                    "region's; the node's own region). The node takes it at its next heartbeat, "
                    "within a few seconds, and drains as on SIGTERM: it turns draining (routers "
                    "stop targeting it; its messages wait in inboxes), stops accepting, closes "
                    "its connections in batches spread over its drain window with reconnect "
                    "hints, and exits when empty or at the window's end (a worker of "
                    "`zuulpush edge --workers N` is then started again, under the same id). "
                    "Exit status 1 if no such node is live, or (--wait) if it has not drained "
                    "after --timeout.")
    _common(p)
    _redis_option(p)
    p.add_argument("--node", required=True, metavar="ID", help="the edge node's id")
    p.add_argument("--wait", action="store_true",
                   help="follow the node, printing its connections, until its record is gone "
                        "(or, once it took the request, it is active again: a new process)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="seconds --wait follows the node (default 600)")
    p.set_defaults(run=_drain)


def _drain(args: argparse.Namespace) -> int:
    from registry.base import NodeState

    async def drain(registry: Any) -> int:
        if not any(n.node_id == args.node for n in await registry.nodes()):
            print(f"zuulpush drain: no live edge node {args.node!r}", file=sys.stderr)
            return 1
        await registry.request_drain(args.node, DRAIN_REQUEST_TTL_S)
        print(f"drain requested: node={args.node}", flush=True)
        if not args.wait:
            return 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        taken = False
        while loop.time() < deadline:
            node = next((n for n in await registry.nodes() if n.node_id == args.node), None)
            if node is None:
                print(f"drained: node={args.node}", flush=True)
                return 0
            if taken and node.state is NodeState.ACTIVE:
                # Taken a look ago, active again: the node drained and exited, and a new
                # process serves under its id (a worker of `zuulpush edge --workers N`).
                print(f"drained: node={args.node} (a new process serves under its id)",
                      flush=True)
                return 0
            print(f"  {node.node_id}: {node.state}, {node.connections} connection(s)",
                  flush=True)
            taken = taken or not await registry.drain_pending(args.node)
            await asyncio.sleep(1.0)
        print(f"zuulpush drain: node {args.node!r} still live after {args.timeout:g} s",
              file=sys.stderr)
        return 1

    code = _on_registry(args, "drain", drain)
    return 1 if code is None else int(code)


def _status_json(nodes: list[Any]) -> str:
    return orjson.dumps([{
        "node_id": n.node_id, "address": n.address, "region": n.region, "state": str(n.state),
        "connections": n.connections, "by_device_type": dict(n.by_device_type)}
        for n in sorted(nodes, key=lambda n: (n.region, n.node_id))],
        option=orjson.OPT_INDENT_2).decode()


def _status_table(nodes: list[Any]) -> str:
    rows = [("NODE", "REGION", "STATE", "CONNECTIONS", "ADDRESS", "BY DEVICE TYPE")]
    for n in sorted(nodes, key=lambda n: (n.region, n.node_id)):
        types = " ".join(f"{t}={c}" for t, c in sorted(n.by_device_type))
        rows.append((n.node_id, n.region, str(n.state), str(n.connections), n.address, types))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    total = sum(n.connections for n in nodes)
    lines.append(f"{len(nodes)} node(s), {total} connection(s)")
    return "\n".join(lines)


# admin

ADMIN_ATTEMPTS_PER_NODE = 8
"""With --redis, tries per node sharing the target's address: a new connection to an address
several nodes listen on (workers on one port) reaches any of them."""


def _admin_parser(commands: Any) -> None:
    p = commands.add_parser(
        "admin", help="an edge node's admin API: its status, a client's connection, close it",
        description="Call an edge node's admin API (GET /admin/status, GET /admin/clients/ID, "
                    "POST /admin/clients/ID/close) with the admin key (--admin-key, or "
                    "ZUULPUSH_ADMIN_KEY / admin_key in --config) and print its JSON answer. "
                    "Name the node with --edge URL, or for a client let the registry on Redis "
                    "find the node holding it (--redis URL). Exit status 1 unless the node "
                    "answers 200.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="the node's state, connections, loop lag, "
                                               "sheds and counters")
    _admin_common(status, redis=False)
    client = actions.add_parser("client", help="a client's connection on its node")
    client.add_argument("client_id", metavar="ID", help="the client (device) id")
    _admin_common(client, redis=True)
    close = actions.add_parser("close", help="close a client's connection (4000 with a "
                                             "reconnect hint, or --code 1000)")
    close.add_argument("client_id", metavar="ID", help="the client (device) id")
    close.add_argument("--code", type=int, choices=[4000, 1000], default=4000,
                       help="4000: go away with a reconnect hint (default); 1000: normal close")
    _admin_common(close, redis=True)
    p.set_defaults(run=_admin)


def _admin_common(p: argparse.ArgumentParser, *, redis: bool) -> None:
    _common(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--edge", metavar="URL", help="the edge node, e.g. http://10.0.0.7:8080")
    if redis:
        where.add_argument("--redis", dest="redis_url", metavar="URL",
                           help="find the client's node in the registry on Redis")
    p.add_argument("--admin-key", help="the admin key (default: ZUULPUSH_ADMIN_KEY)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for an answer (default 10)")


def _admin(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, {"admin_key": args.admin_key})
    key = settings.get("admin_key")
    if not key:
        raise ConfigError("no admin key: set ZUULPUSH_ADMIN_KEY or pass --admin-key")
    method, path = "GET", "/admin/status"
    if args.action != "status":
        path = "/admin/clients/" + urllib.parse.quote(args.client_id, safe="")
        if args.action == "close":
            method, path = "POST", f"{path}/close?code={args.code}"
    if args.edge:
        status, body = _admin_call(args.edge, method, path, key, args.timeout)
    else:
        found = _admin_through_registry(args, method, path, key)
        if found is None:
            return 1
        status, body = found
    print(body, file=sys.stdout if status == 200 else sys.stderr)
    return 0 if status == 200 else 1


def _admin_through_registry(args: argparse.Namespace, method: str, path: str,
                            key: str) -> tuple[int, str] | None:
    """The answer of the node the registry says holds the client, or None (said why)."""
    async def locate(registry: Any) -> Any:
        reg = await registry.lookup(args.client_id)
        return reg, (await registry.nodes() if reg is not None else [])

    located = _on_registry(args, f"admin {args.action}", locate)
    if located is None:
        return None
    reg, nodes = located
    node = next((n for n in nodes if reg is not None and n.node_id == reg.node_id), None)
    if reg is None or node is None:
        where = "anywhere" if reg is None else f"on a live node ({reg.node_id} is gone)"
        print(f"zuulpush admin: client {args.client_id!r} is not connected {where}",
              file=sys.stderr)
        return None
    sharing = sum(1 for n in nodes if n.address == node.address)
    status, body = 0, ""
    for _ in range(ADMIN_ATTEMPTS_PER_NODE * sharing):
        status, body = _admin_call(f"http://{node.address}", method, path, key, args.timeout)
        if status != 404 or _answered_by(body) in (node.node_id, None):
            break  # 404 from another node on the same address: try another connection
    return status, body


def _answered_by(body: str) -> str | None:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return answer.get("node_id") if isinstance(answer, dict) else None


def _admin_call(base: str, method: str, path: str, key: str, timeout_s: float
                ) -> tuple[int, str]:
    """(status, body) of one admin call; status 0 when the node cannot be reached."""
    url = base.rstrip("/").replace("ws://", "http://", 1).replace("wss://", "https://", 1) + path
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None,
                                     headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode() or f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return 0, f"zuulpush: cannot reach {base}: {reason}"


# token

def _token_parser(commands: Any) -> None:
    p = commands.add_parser(
        "token", help="print a device token (HS256, signed with the configured secret)",
        description="Print a signed device token alone on stdout. The secret comes from "
                    "--config, ZUULPUSH_SECRET or --secret.")
    _common(p)
    p.add_argument("--client", required=True, help="client (device) id: claim 'cid'")
    p.add_argument("--user", required=True, help="user id: claim 'sub'")
    p.add_argument("--device-type", required=True, help="device type: claim 'dt'")
    p.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds (default 1 day)")
    p.add_argument("--secret", help="signing secret (prefer ZUULPUSH_SECRET)")
    p.set_defaults(run=_token)


def _token(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, {"secret": args.secret})
    secret = settings.get("secret")
    if not secret:
        raise ConfigError("no secret: set ZUULPUSH_SECRET, --secret or 'secret' in --config")
    if args.ttl <= 0:
        raise ConfigError("--ttl must be positive")
    print(issue_token(secret, client_id=args.client, user_id=args.user,
                      device_type=args.device_type, ttl_s=args.ttl))
    return 0


# send

def _send_parser(commands: Any) -> None:
    p = commands.add_parser(
        "send", help="push a message through the push-send API",
        description="POST /v1/push. Name targets with --client/--user (repeatable) or "
                    "--broadcast, narrow them with --device-type (alone, it names nobody: "
                    "--broadcast --device-type tv sends to every tv). Prints the API's JSON "
                    "answer.")
    _common(p)
    p.add_argument("--client", action="append", default=[], help="client id (repeatable)")
    p.add_argument("--user", action="append", default=[], help="user id (repeatable)")
    p.add_argument("--device-type", action="append", default=[],
                   help="only devices of this type (repeatable)")
    p.add_argument("--broadcast", action="store_true", help="every connected device")
    p.add_argument("--data", default="null", help="JSON payload (default null)")
    p.add_argument("--topic", default="default", help="topic (default 'default')")
    p.add_argument("--priority", choices=["high", "normal", "low"], default="normal",
                   help="the queue it waits in: high goes first, low is never starved "
                        "(default normal)")
    p.add_argument("--ttl", type=int, help="seconds the message may wait for its device")
    p.add_argument("--dedup-key", help="drop repeats of this key within the dedup window")
    p.add_argument("--api", default=None,
                   help="API base URL (default from api_host and api_port, https:// when "
                        "api_tls_cert_file is set; else http://127.0.0.1:8081)")
    p.add_argument("--api-key", help="backend API key (default: first of ZUULPUSH_API_KEYS)")
    _cacert(p)
    p.set_defaults(run=_send)


def _cacert(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cacert", metavar="FILE",
                   help="trust the certificates in this PEM file for https:// and wss:// "
                        "(e.g. a self-signed server certificate) instead of the system's")


def _client_tls(cafile: str | None) -> Any:
    """The client SSL context for `--cacert` (None: the system's trust store)."""
    import ssl

    if cafile is None:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--cacert {cafile}: {exc}") from None


def _check_targets(args: argparse.Namespace) -> None:
    """Refuse, before sending, a push that names nobody (as the API does, saying how)."""
    if args.client or args.user or args.broadcast:
        return
    if args.device_type:
        raise ConfigError("--device-type alone names nobody: add --broadcast to send to every "
                          "device of that type, or name --client or --user")
    raise ConfigError("name --client or --user (repeatable), or --broadcast for every device")


def _send(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    key = args.api_key or next(iter(settings.get("api_keys", ())), None)
    if not key:
        raise ConfigError("no API key: set ZUULPUSH_API_KEYS or pass --api-key")
    try:
        orjson.loads(args.data)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"--data is not JSON: {exc}") from None
    _check_targets(args)
    data = orjson.Fragment(args.data)  # sent as given: the API judges it (its nesting limit)
    to: dict[str, Any] = {"clients": args.client, "users": args.user,
                          "device_types": args.device_type, "broadcast": args.broadcast}
    body: dict[str, Any] = {"to": {k: v for k, v in to.items() if v}, "topic": args.topic,
                            "data": data, "priority": args.priority}
    if args.ttl is not None:
        body["ttl"] = args.ttl
    if args.dedup_key:
        body["dedup_key"] = args.dedup_key
    scheme = "https" if settings.get("api_tls_cert_file") else "http"
    base = args.api or (f"{scheme}://{settings.get('api_host', '127.0.0.1')}:"
                        f"{settings.get('api_port', 8081)}")
    context = _client_tls(args.cacert)
    request = urllib.request.Request(
        base.rstrip("/") + "/v1/push", data=orjson.dumps(body), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode() or f"HTTP {exc.code}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"zuulpush: cannot reach {base}: {exc.reason}", file=sys.stderr)
        return 1


# listen

def _listen_parser(commands: Any) -> None:
    p = commands.add_parser(
        "listen", help="connect as a device over WebSocket and print what arrives",
        description="Connect to a device URL such as ws://127.0.0.1:8080/ws?token=TOKEN, print "
                    "each pushed message as a JSON line and ack it. Like the SDK it is built "
                    "on, it reconnects and resumes after a drain, a connection's end of life or "
                    "a drop (saying so on stderr); it stops, exit 1, when replaced by a newer "
                    "connection of its client id or refused its token.")
    p.add_argument("url", help="ws:// or wss:// device URL including ?token=")
    p.add_argument("--count", type=int, help="exit after this many messages")
    p.add_argument("--timeout", type=float, help="exit after this many seconds")
    p.add_argument("--no-reconnect", action="store_true",
                   help="one connection: exit when the server closes it")
    _cacert(p)
    p.set_defaults(run=_listen)


def _listen(args: argparse.Namespace) -> int:
    from zuulpush.listen import listen

    context = _client_tls(args.cacert)
    try:
        return asyncio.run(listen(args.url, count=args.count, timeout_s=args.timeout,
                                  reconnect=not args.no_reconnect,
                                  ssl=True if context is None else context))
    except KeyboardInterrupt:
        return 0
