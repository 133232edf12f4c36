"""`zuulpush edge --workers N` (N > 1): the supervisor's process refuses here, before any fork,
what a worker would refuse, then `zuulpush.supervisor` runs the N workers, each an `EdgeApp` in
a forked process (`edge_worker`)."""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

from zuulpush.cli.running import StartError, run_app
from zuulpush.config import ConfigError

if TYPE_CHECKING:
    from zuulpush.app import EdgeApp
    from zuulpush.supervisor import Slot


def supervise(settings: dict[str, Any], workers: int) -> int:
    """Run `workers` edge nodes under a supervisor in this process; its exit status."""
    from zuulpush.app import EdgeAppConfig
    from zuulpush.app.edge import describe_workers
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
        workers, base, edge.host, edge.port, functools.partial(edge_worker, settings),
        announce=functools.partial(describe_workers, config, base, tls),
        stop_timeout_s=edge.drain_window_s + edge.heartbeat_interval_s + STOP_GRACE_S)
    try:
        return supervisor.run()
    except (ValueError, ListenError) as exc:
        raise ConfigError(str(exc)) from None


def edge_worker(settings: dict[str, Any], slot: Slot) -> int:
    """One worker of `zuulpush edge --workers N`, in its forked process: the node
    `slot.node_id` on `slot.port` (SO_REUSEPORT), telling the supervisor once it serves."""
    from zuulpush.app import EdgeApp, EdgeAppConfig

    mine = {**settings, "node_id": slot.node_id, "port": slot.port, "reuse_port": True}

    def ready(app: EdgeApp) -> str:
        slot.ready()
        return ""  # the supervisor prints the banner, once all serve

    try:
        return run_app(lambda: EdgeApp(EdgeAppConfig.from_settings(mine)), ready,
                       slot.lifeline_fd)
    except (ConfigError, StartError) as exc:
        print(f"zuulpush: worker {slot.node_id}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
