"""One call of every `Registry` operation, for tests that must cover them all (outages, the
timing wrapper), and the operations the `Registry` protocol has."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from registry.base import (
    Connections,
    Devices,
    NodeControl,
    NodeInfo,
    Nodes,
    NodeState,
    Registration,
    Registry,
)

REG = Registration("c1", "u1", "phone", "n1", 1)
NODE = NodeInfo("n1", "10.0.0.1:8080", "eu", NodeState.ACTIVE, 1)

CALLS: dict[str, Callable[[Registry], Awaitable[object]]] = {
    "register": lambda r: r.register([REG], 60.0),
    "refresh": lambda r: r.refresh("n1", ["c1"], 60.0),
    "unregister": lambda r: r.unregister("c1", "n1", 1),
    "lookup": lambda r: r.lookup("c1"),
    "lookup_many": lambda r: r.lookup_many(["c1"]),
    "locate_many": lambda r: r.locate_many(["c1"]),
    "devices_many": lambda r: r.devices_many(["c1"]),
    "devices_of_user": lambda r: r.devices_of_user("u1"),
    "device": lambda r: r.device("c1"),
    "heartbeat_node": lambda r: r.heartbeat_node(NODE, 60.0),
    "remove_node": lambda r: r.remove_node("n1"),
    "nodes": lambda r: r.nodes(),
    "request_drain": lambda r: r.request_drain("n1", 60.0),
    "take_drain_request": lambda r: r.take_drain_request("n1"),
    "drain_pending": lambda r: r.drain_pending("n1"),
}
"""Every operation of a `Registry` (`close` aside), called once with small valid arguments."""


def registry_ops() -> set[str]:
    """The operations of the `Registry` protocol: the methods of its narrow parts."""
    return {name for part in (Connections, Devices, Nodes, NodeControl)
            for name, value in vars(part).items() if callable(value) and not name.startswith("_")}
