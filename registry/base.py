"""The registry seam: records of live connections, known devices and edge nodes.

Three kinds of record, each with a TTL:

- a *registration* (client id -> the node holding its connection), written when a device connects,
  refreshed while the connection lives, removed when it closes. Its TTL is short (minutes), so a
  node that dies without cleaning up stops being named within one TTL.
- a *device* (user id -> client id and device type), written with every registration and kept much
  longer (days), so that a message to a user reaches the inboxes of devices that are offline now.
- a *node* (node id -> address, region, state, connection count), heartbeated by each edge node.

Versions order writes to one client's registration: a higher version wins (last writer wins; on
equal versions the higher node id, so every region picks the same winner), and
`unregister` deletes only the record it wrote (compare-and-delete), so a node that lost a client to
another node never deletes the newer record.

Errors: an implementation translates its own backend's outages. A method raises
`core.errors.Unavailable` (503, transient: retry) when the store is unreachable, never the
backend's own errors for it, so callers need not know what the registry runs on; the memory
registry never raises it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class NodeState(StrEnum):
    """An edge node's state as routers see it: only active nodes are sent live deliveries."""

    ACTIVE = "active"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class Registration:
    """One live connection: `client_id` is connected to `node_id` since this record's `version`."""

    client_id: str
    user_id: str
    device_type: str
    node_id: str
    version: int


@dataclass(frozen=True, slots=True)
class Device:
    """A device known to belong to a user, connected now or not."""

    client_id: str
    device_type: str


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """An edge node's heartbeat: where it listens, its state and how many connections it holds
    (in all, by device type, by transport `ws`/`sse`), and its `totals`: counters since the node
    started (`delivered`, `shed`, `connects`, `acks`, as the edge names them), for dashboards.
    Records written before `by_transport` and `totals` existed decode with both empty."""

    node_id: str
    address: str
    region: str
    state: NodeState
    connections: int
    by_device_type: tuple[tuple[str, int], ...] = ()
    by_transport: tuple[tuple[str, int], ...] = ()
    totals: tuple[tuple[str, int], ...] = ()

    def count(self, device_types: frozenset[str] = frozenset()) -> int:
        """Connections held, of the given device types only when any are given."""
        if not device_types:
            return self.connections
        return sum(n for device_type, n in self.by_device_type if device_type in device_types)


@dataclass(frozen=True, slots=True)
class Location:
    """Where a connected client is: its registration and its node's record, which is None when
    that node stopped heartbeating (dead). Only a client on an active node can be reached live;
    otherwise its messages wait in its inbox."""

    registration: Registration
    node: NodeInfo | None

    @property
    def reachable(self) -> bool:
        return self.node is not None and self.node.state is NodeState.ACTIVE


def new_version() -> int:
    """A version for a new registration: wall-clock nanoseconds, so that writes from different
    nodes order by time (last writer wins) and a later write from one node is always higher."""
    return time.time_ns()


class Connections(Protocol):
    """Where clients are connected: the edge writes its connections, the router looks them up.

    Every method is safe to call concurrently. Batched methods apply each item independently:
    there is no all-or-nothing guarantee across items.
    """

    async def register(self, registrations: Sequence[Registration], ttl_s: float) -> None:
        """Record each connection for `ttl_s` seconds, and its device for the device TTL.

        A registration replaces an existing one for the same client only if `(version, node_id)`
        is higher; an older one is ignored, so replays and late writes are harmless.
        Raises `Unavailable` when the store is unreachable.
        """
        ...

    async def refresh(self, node_id: str, client_ids: Sequence[str], ttl_s: float) -> int:
        """Extend the TTL of the registrations `node_id` holds for these clients.

        A client now registered to another node is left alone. Returns how many were extended;
        a record that has already expired is not revived (register it again).
        Raises `Unavailable` when the store is unreachable.
        """
        ...

    async def unregister(self, client_id: str, node_id: str, version: int) -> bool:
        """Delete the client's registration only if it is still `node_id`'s at `version`.

        Returns True if deleted. The device record stays: the device is offline, not forgotten.
        Raises `Unavailable` when the store is unreachable.
        """
        ...

    async def lookup(self, client_id: str) -> Registration | None:
        """The client's live registration, or None if it is not connected anywhere.
        Raises `Unavailable` when the store is unreachable."""
        ...

    async def lookup_many(self, client_ids: Iterable[str]) -> dict[str, Registration]:
        """Live registrations of those clients that are connected; absent ones are left out.
        Raises `Unavailable` when the store is unreachable."""
        ...

    async def locate_many(self, client_ids: Iterable[str]) -> dict[str, Location]:
        """Live registrations of the connected clients among these, each with its node's record
        (None for a node that is dead). Absent clients are left out.
        Raises `Unavailable` when the store is unreachable."""
        ...



class Devices(Protocol):
    """Which devices a user has, connected or not (the router's user and device-type targets)."""

    async def devices_many(self, client_ids: Iterable[str]) -> dict[str, Device]:
        """Known device records of these clients (connected or not); unknown ones left out.
        Raises `Unavailable` when the store is unreachable."""
        ...

    async def devices_of_user(self, user_id: str) -> list[Device]:
        """The user's known devices (connected or not), in no particular order.
        Raises `Unavailable` when the store is unreachable."""
        ...

    async def device(self, client_id: str) -> Device | None:
        """The known device record of one client, or None if it was never seen (or forgotten).
        Raises `Unavailable` when the store is unreachable."""
        ...



class Nodes(Protocol):
    """Which edge nodes are alive, and in which state (each node heartbeats its own record)."""

    async def heartbeat_node(self, node: NodeInfo, ttl_s: float) -> bool:
        """Write the node's record for `ttl_s` seconds; a node that stops heartbeating is dead.
        Returns whether its record was there: a heartbeat after the first that finds none means
        the registry lost it (its Redis restarted empty, or the node was cut off past its TTL),
        and likely the node's registrations with it.
        Raises `Unavailable` when the store is unreachable."""
        ...

    async def remove_node(self, node_id: str) -> None:
        """Delete a node's record at once (clean shutdown).
        Raises `Unavailable` when the store is unreachable."""
        ...

    async def nodes(self) -> list[NodeInfo]:
        """All live nodes, whatever their state.
        Raises `Unavailable` when the store is unreachable."""
        ...



class NodeControl(Protocol):
    """An operator's requests to a node, which the node reads at its heartbeat."""

    async def request_drain(self, node_id: str, ttl_s: float) -> None:
        """Ask node `node_id` to drain (an operator's `zuulpush drain`): the request stands for
        `ttl_s` seconds or until the node takes it, at its next heartbeat. Not replicated: it
        is made in the region whose nodes read it.
        Raises `Unavailable` when the store is unreachable."""
        ...

    async def take_drain_request(self, node_id: str) -> bool:
        """Whether a drain request for `node_id` stands; taking it removes it, so a node
        restarted under the same id does not drain again.
        Raises `Unavailable` when the store is unreachable."""
        ...

    async def drain_pending(self, node_id: str) -> bool:
        """Whether a drain request for `node_id` stands, not yet taken nor expired (read only:
        for an operator following the drain). Raises `Unavailable` when the store is unreachable."""
        ...



class Registry(Connections, Devices, Nodes, NodeControl, Protocol):
    """The whole registry, as the factory opens it: its users take the narrow part they need.

    Every method is safe to call concurrently.
    """

    async def close(self) -> None:
        """Release connections to the backing store. Idempotent."""
        ...
