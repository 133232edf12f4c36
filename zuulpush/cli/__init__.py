"""The `zuulpush` command line: `main` and its table of commands (`COMMANDS`).

Each command is a row: its name, its help line, its description, the function that adds its
arguments and the function that runs it, in the module of its group: `serve` (serve, edge, api,
router; `workers` for `edge --workers N`, `running` runs an app until a signal), `fleet`
(status, drain), `admin`, `tools` (token, send, listen); `options` holds the options several
share. Settings come from `--config FILE` (TOML), `ZUULPUSH_*` environment variables and flags,
flags winning; `zuulpush.config` documents the keys.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zuulpush import __version__
from zuulpush.cli import admin, fleet, serve, tools
from zuulpush.cli.running import StartError
from zuulpush.config import ConfigError


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS = (
    Command("serve", "run edge, router and push-send API (with its dashboard and demo page) in "
            "one process, in memory (no Redis)", serve.SERVE, serve.serve_arguments,
            serve.run_serve),
    Command("edge", "run one edge node of a fleet (or N: --workers), its registry on Redis",
            serve.EDGE, serve.edge_arguments, serve.run_edge),
    Command("api", "run the push-send API of a fleet, enqueueing on Redis",
            serve.API, serve.api_arguments, serve.run_api),
    Command("router", "run router workers of a fleet, on Redis",
            serve.ROUTER, serve.router_arguments, serve.run_router),
    Command("status", "list the fleet's edge nodes, their state and connection counts",
            fleet.STATUS, fleet.status_arguments, fleet.run_status),
    Command("drain", "ask an edge node of the fleet to drain, through the registry",
            fleet.DRAIN, fleet.drain_arguments, fleet.run_drain),
    Command("admin", "an edge node's admin API: its status, a client's connection, close it",
            admin.ADMIN, admin.admin_arguments, admin.run_admin),
    Command("token", "print a device token (HS256, signed with the configured secret)",
            tools.TOKEN, tools.token_arguments, tools.run_token),
    Command("send", "push a message through the push-send API",
            tools.SEND, tools.send_arguments, tools.run_send),
    Command("listen", "connect as a device over WebSocket and print what arrives",
            tools.LISTEN, tools.listen_arguments, tools.run_listen),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zuulpush", description="A push-messaging edge for WebSocket and SSE devices.")
    parser.add_argument("--version", action="version", version=f"zuulpush {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        p = commands.add_parser(command.name, help=command.help,
                                description=command.description)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser
