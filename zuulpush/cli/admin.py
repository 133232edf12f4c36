"""`zuulpush admin`: call an edge node's admin API (its status, a client's connection, closing
it) at the node's URL, or at the node the registry on Redis says holds the client."""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

import orjson

from zuulpush.cli import options
from zuulpush.cli.fleet import on_registry
from zuulpush.config import ConfigError, load_settings

if TYPE_CHECKING:
    from registry.base import Registry

ADMIN_ATTEMPTS_PER_NODE = 8
"""With --redis, tries per node sharing the target's address: a new connection to an address
several nodes listen on (workers on one port) reaches any of them."""

ADMIN = ("Call an edge node's admin API (GET /admin/status, GET /admin/clients/ID, POST "
         "/admin/clients/ID/close) with the admin key (--admin-key, or ZUULPUSH_ADMIN_KEY / "
         "admin_key in --config) and print its JSON answer. Name the node with --edge URL, or "
         "for a client let the registry on Redis find the node holding it (--redis URL). Exit "
         "status 1 unless the node answers 200.")


def admin_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="the node's state, connections, loop lag, "
                                               "sheds and counters")
    _where(status, redis=False)
    client = actions.add_parser("client", help="a client's connection on its node")
    client.add_argument("client_id", metavar="ID", help="the client (device) id")
    _where(client, redis=True)
    close = actions.add_parser("close", help="close a client's connection (4000 with a "
                                             "reconnect hint, or --code 1000)")
    close.add_argument("client_id", metavar="ID", help="the client (device) id")
    close.add_argument("--code", type=int, choices=[4000, 1000], default=4000,
                       help="4000: go away with a reconnect hint (default); 1000: normal close")
    _where(close, redis=True)


def _where(p: argparse.ArgumentParser, *, redis: bool) -> None:
    """The options of every action: the node (or the registry that finds it), key, timeout."""
    options.config_file(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--edge", metavar="URL", help="the edge node, e.g. http://10.0.0.7:8080")
    if redis:
        where.add_argument("--redis", dest="redis_url", metavar="URL",
                           help="find the client's node in the registry on Redis")
    p.add_argument("--admin-key", help="the admin key (default: ZUULPUSH_ADMIN_KEY)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for an answer (default 10)")


def run_admin(args: argparse.Namespace) -> int:
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
        found = _through_registry(args, method, path, key)
        if found is None:
            return 1
        status, body = found
    print(body, file=sys.stdout if status == 200 else sys.stderr)
    return 0 if status == 200 else 1


def _through_registry(args: argparse.Namespace, method: str, path: str,
                      key: str) -> tuple[int, str] | None:
    """The answer of the node the registry says holds the client, or None (said why)."""
    async def locate(registry: Registry) -> Any:
        reg = await registry.lookup(args.client_id)
        return reg, (await registry.nodes() if reg is not None else [])

    located = on_registry(args, f"admin {args.action}", locate)
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
        # urllib wraps what failed while connecting in a URLError, which says why in `reason`;
        # an OSError met later (reading the answer) says it itself.
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return 0, f"zuulpush: cannot reach {base}: {reason}"
