"""The registry in one process's memory: the embedded default of `zuulpush serve`.

TTLs run on an injected monotonic clock. Expired records are dropped when read, and a sweep over
all records runs at most once per TTL, so memory stays bounded without a timer per record.

Memory per connected client is a design constraint (the embedded edge counts it per idle
connection): one slotted record per client holds both its live registration and its device
record, and a user's clients are stored as a plain string while the user has one device, a tuple
while they have a few, and a set only past that.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from registry.base import Device, Location, NodeInfo, Registration

DEFAULT_DEVICE_TTL_S = 7 * 24 * 3600.0
_TUPLE_MAX = 16

UserClients = str | tuple[str, ...] | set[str]


class _Client:
    """A client's device record and, while connected, its live registration."""

    __slots__ = ("device_type", "device_until", "live", "live_until", "user_id")

    def __init__(self, user_id: str, device_type: str, device_until: float) -> None:
        self.user_id = user_id
        self.device_type = device_type
        self.device_until = device_until
        self.live: Registration | None = None
        self.live_until = 0.0


class MemoryRegistry:
    """`Registry` in memory. Not shared between processes."""

    def __init__(
        self,
        *,
        device_ttl_s: float = DEFAULT_DEVICE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._device_ttl_s = device_ttl_s
        self._clients: dict[str, _Client] = {}
        self._by_user: dict[str, UserClients] = {}
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}
        self._drains: dict[str, float] = {}  # node id -> until (monotonic clock)
        self._next_sweep = 0.0

    async def register(self, registrations: Sequence[Registration], ttl_s: float) -> None:
        now = self._clock()
        for reg in registrations:
            client = self._remember_device(reg, now)
            current = self._live(client, now)
            if current is None or (reg.version, reg.node_id) > (current.version, current.node_id):
                client.live = reg
                client.live_until = now + ttl_s
        self._maybe_sweep(now, ttl_s)

    async def refresh(self, node_id: str, client_ids: Sequence[str], ttl_s: float) -> int:
        now = self._clock()
        extended = 0
        for client_id in client_ids:
            client = self._clients.get(client_id)
            reg = self._live(client, now)
            if client is not None and reg is not None and reg.node_id == node_id:
                client.live_until = now + ttl_s
                extended += 1
        self._maybe_sweep(now, ttl_s)
        return extended

    async def unregister(self, client_id: str, node_id: str, version: int) -> bool:
        client = self._clients.get(client_id)
        reg = self._live(client, self._clock())
        if client is None or reg is None or reg.node_id != node_id or reg.version != version:
            return False
        client.live = None
        return True

    async def lookup(self, client_id: str) -> Registration | None:
        return self._live(self._clients.get(client_id), self._clock())

    async def lookup_many(self, client_ids: Iterable[str]) -> dict[str, Registration]:
        now = self._clock()
        found: dict[str, Registration] = {}
        for client_id in client_ids:
            reg = self._live(self._clients.get(client_id), now)
            if reg is not None:
                found[client_id] = reg
        return found

    async def locate_many(self, client_ids: Iterable[str]) -> dict[str, Location]:
        found = await self.lookup_many(client_ids)
        nodes = {node.node_id: node for node in await self.nodes()}
        return {cid: Location(reg, nodes.get(reg.node_id)) for cid, reg in found.items()}

    async def devices_many(self, client_ids: Iterable[str]) -> dict[str, Device]:
        now = self._clock()
        found: dict[str, Device] = {}
        for client_id in client_ids:
            client = self._device(client_id, now)
            if client is not None:
                found[client_id] = Device(client_id, client.device_type)
        return found

    async def devices_of_user(self, user_id: str) -> list[Device]:
        now = self._clock()
        devices = []
        for client_id in _members(self._by_user.get(user_id)):
            client = self._device(client_id, now)
            if client is not None:
                devices.append(Device(client_id, client.device_type))
        return devices

    async def device(self, client_id: str) -> Device | None:
        client = self._device(client_id, self._clock())
        return None if client is None else Device(client_id, client.device_type)

    async def heartbeat_node(self, node: NodeInfo, ttl_s: float) -> bool:
        now = self._clock()
        old = self._nodes.get(node.node_id)
        self._nodes[node.node_id] = (node, now + ttl_s)
        return old is not None and old[1] > now

    async def remove_node(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    async def nodes(self) -> list[NodeInfo]:
        now = self._clock()
        for node_id, (_, expires) in tuple(self._nodes.items()):
            if expires <= now:
                del self._nodes[node_id]
        return [node for node, _ in self._nodes.values()]

    async def request_drain(self, node_id: str, ttl_s: float) -> None:
        self._drains[node_id] = self._clock() + ttl_s

    async def take_drain_request(self, node_id: str) -> bool:
        until = self._drains.pop(node_id, None)
        return until is not None and until > self._clock()

    async def drain_pending(self, node_id: str) -> bool:
        until = self._drains.get(node_id)
        return until is not None and until > self._clock()

    async def close(self) -> None:
        return None

    @staticmethod
    def _live(client: _Client | None, now: float) -> Registration | None:
        if client is None or client.live is None:
            return None
        if client.live_until <= now:
            client.live = None
            return None
        return client.live

    def _remember_device(self, reg: Registration, now: float) -> _Client:
        until = now + self._device_ttl_s
        client = self._clients.get(reg.client_id)
        if client is None:
            client = self._clients[reg.client_id] = _Client(reg.user_id, reg.device_type, until)
            self._add_to_user(reg.user_id, reg.client_id)
            return client
        if client.user_id != reg.user_id:
            self._remove_from_user(client.user_id, reg.client_id)
            self._add_to_user(reg.user_id, reg.client_id)
            client.user_id = reg.user_id
        client.device_type = reg.device_type
        client.device_until = until
        return client

    def _device(self, client_id: str, now: float) -> _Client | None:
        client = self._clients.get(client_id)
        if client is None:
            return None
        if client.device_until <= now and self._live(client, now) is None:
            del self._clients[client_id]
            self._remove_from_user(client.user_id, client_id)
            return None
        return client

    def _add_to_user(self, user_id: str, client_id: str) -> None:
        current = self._by_user.get(user_id)
        if current is None:
            self._by_user[user_id] = client_id
        elif isinstance(current, set):
            current.add(client_id)
        else:
            members = _members(current)
            if client_id in members:
                return
            grown = (*members, client_id)
            self._by_user[user_id] = grown if len(grown) <= _TUPLE_MAX else set(grown)

    def _remove_from_user(self, user_id: str, client_id: str) -> None:
        current = self._by_user.get(user_id)
        if current is None:
            return
        if isinstance(current, set):
            current.discard(client_id)
            remaining: tuple[str, ...] = tuple(current) if len(current) <= 1 else ()
            if len(current) > 1:
                return
        else:
            remaining = tuple(c for c in _members(current) if c != client_id)
        if not remaining:
            del self._by_user[user_id]
        else:
            self._by_user[user_id] = remaining[0] if len(remaining) == 1 else remaining

    def _maybe_sweep(self, now: float, ttl_s: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + ttl_s
        for client_id in tuple(self._clients):
            self._device(client_id, now)


def _members(value: UserClients | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)
