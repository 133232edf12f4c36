"""The commands that read and steer a fleet's edge nodes through the registry on Redis:
`zuulpush status` (the live nodes) and `zuulpush drain` (ask one to drain)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from core.errors import Unavailable
from zuulpush.cli import options
from zuulpush.config import ConfigError, build, load_settings

if TYPE_CHECKING:
    from registry.base import NodeInfo, Registry

DRAIN_REQUEST_TTL_S = 60.0
"""How long a drain request waits for its node to take it (nodes look every few seconds)."""

STATUS = ("Read the node records in the registry on Redis and print each live edge node: "
          "region, state (active/draining), connections, by device type.")
DRAIN = ("Record a drain request for edge node ID in the registry on Redis (this region's; the "
         "node's own region). The node takes it at its next heartbeat, within a few seconds, "
         "and drains as on SIGTERM: it turns draining (routers stop targeting it; its messages "
         "wait in inboxes), stops accepting, closes its connections in batches spread over its "
         "drain window with reconnect hints, and exits when empty or at the window's end (a "
         "worker of `zuulpush edge --workers N` is then started again, under the same id). "
         "Exit status 1 if no such node is live, or (--wait) if it has not drained after "
         "--timeout.")


def on_registry(args: argparse.Namespace, command: str,
                work: Callable[[Registry], Awaitable[Any]]) -> Any:
    """What `work(registry)` returns, on this region's registry on Redis (`--redis`); None
    (after saying why on stderr) when the registry cannot be reached (`Unavailable`)."""
    from registry.config import RegistryConfig
    from registry.factory import open_registry

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
    except Unavailable as exc:
        print(f"zuulpush: cannot reach the registry at {config.redis_url}: {exc}",
              file=sys.stderr)
        return None


def status_arguments(p: argparse.ArgumentParser) -> None:
    options.config_file(p)
    options.redis(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_status(args: argparse.Namespace) -> int:
    nodes = on_registry(args, "status", lambda registry: registry.nodes())
    if nodes is None:
        return 1
    print(_status_json(nodes) if args.json else _status_table(nodes))
    return 0


def _status_json(nodes: Sequence[NodeInfo]) -> str:
    return orjson.dumps([{
        "node_id": n.node_id, "address": n.address, "region": n.region, "state": str(n.state),
        "connections": n.connections, "by_device_type": dict(n.by_device_type)}
        for n in sorted(nodes, key=lambda n: (n.region, n.node_id))],
        option=orjson.OPT_INDENT_2).decode()


def _status_table(nodes: Sequence[NodeInfo]) -> str:
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


def drain_arguments(p: argparse.ArgumentParser) -> None:
    options.config_file(p)
    options.redis(p)
    p.add_argument("--node", required=True, metavar="ID", help="the edge node's id")
    p.add_argument("--wait", action="store_true",
                   help="follow the node, printing its connections, until its record is gone "
                        "(or, once it took the request, it is active again: a new process)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="seconds --wait follows the node (default 600)")


def run_drain(args: argparse.Namespace) -> int:
    async def drain(registry: Registry) -> int:
        if not any(n.node_id == args.node for n in await registry.nodes()):
            print(f"zuulpush drain: no live edge node {args.node!r}", file=sys.stderr)
            return 1
        await registry.request_drain(args.node, DRAIN_REQUEST_TTL_S)
        print(f"drain requested: node={args.node}", flush=True)
        if not args.wait:
            return 0
        return await _follow(registry, args.node, args.timeout)

    code = on_registry(args, "drain", drain)
    return 1 if code is None else int(code)


async def _follow(registry: Registry, node_id: str, timeout_s: float) -> int:
    """`zuulpush drain --wait`: print the node's connections every second until it is gone
    (0), or 1 after `timeout_s`."""
    from registry.base import NodeState

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    taken = False
    while loop.time() < deadline:
        node = next((n for n in await registry.nodes() if n.node_id == node_id), None)
        if node is None:
            print(f"drained: node={node_id}", flush=True)
            return 0
        if taken and node.state is NodeState.ACTIVE:
            # Taken a look ago, active again: the node drained and exited, and a new
            # process serves under its id (a worker of `zuulpush edge --workers N`).
            print(f"drained: node={node_id} (a new process serves under its id)", flush=True)
            return 0
        print(f"  {node.node_id}: {node.state}, {node.connections} connection(s)", flush=True)
        taken = taken or not await registry.drain_pending(node_id)
        await asyncio.sleep(1.0)
    print(f"zuulpush drain: node {node_id!r} still live after {timeout_s:g} s",
          file=sys.stderr)
    return 1
