"""The registry in one process's memory: the embedded default of `zuulpush serve`.

TTLs run on an injected monotonic clock. Expired records are dropped when read, and a sweep over
all records runs at most once per TTL, so memory stays bounded without a timer per record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from registry.base import Device, NodeInfo, Registration

DEFAULT_DEVICE_TTL_S = 7 * 24 * 3600.0


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
        # client id -> (registration, expires at)
        self._live: dict[str, tuple[Registration, float]] = {}
        # client id -> (user id, device type, expires at)
        self._devices: dict[str, tuple[str, str, float]] = {}
        # user id -> client ids of the user's known devices
        self._by_user: dict[str, set[str]] = {}
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}
        self._next_sweep = 0.0

    async def register(self, registrations: Sequence[Registration], ttl_s: float) -> None:
        now = self._clock()
        for reg in registrations:
            current = self._live_record(reg.client_id, now)
            if current is None or reg.version > current.version:
                self._live[reg.client_id] = (reg, now + ttl_s)
            self._remember_device(reg, now)
        self._maybe_sweep(now, ttl_s)

    async def refresh(self, node_id: str, client_ids: Sequence[str], ttl_s: float) -> int:
        now = self._clock()
        extended = 0
        for client_id in client_ids:
            reg = self._live_record(client_id, now)
            if reg is not None and reg.node_id == node_id:
                self._live[client_id] = (reg, now + ttl_s)
                extended += 1
        self._maybe_sweep(now, ttl_s)
        return extended

    async def unregister(self, client_id: str, node_id: str, version: int) -> bool:
        reg = self._live_record(client_id, self._clock())
        if reg is None or reg.node_id != node_id or reg.version != version:
            return False
        del self._live[client_id]
        return True

    async def lookup(self, client_id: str) -> Registration | None:
        return self._live_record(client_id, self._clock())

    async def lookup_many(self, client_ids: Iterable[str]) -> dict[str, Registration]:
        now = self._clock()
        found: dict[str, Registration] = {}
        for client_id in client_ids:
            reg = self._live_record(client_id, now)
            if reg is not None:
                found[client_id] = reg
        return found

    async def devices_of_user(self, user_id: str) -> list[Device]:
        now = self._clock()
        devices = []
        for client_id in tuple(self._by_user.get(user_id, ())):
            record = self._device_record(client_id, now)
            if record is not None:
                devices.append(Device(client_id, record[1]))
        return devices

    async def device(self, client_id: str) -> Device | None:
        record = self._device_record(client_id, self._clock())
        return None if record is None else Device(client_id, record[1])

    async def heartbeat_node(self, node: NodeInfo, ttl_s: float) -> None:
        self._nodes[node.node_id] = (node, self._clock() + ttl_s)

    async def remove_node(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    async def nodes(self) -> list[NodeInfo]:
        now = self._clock()
        for node_id, (_, expires) in tuple(self._nodes.items()):
            if expires <= now:
                del self._nodes[node_id]
        return [node for node, _ in self._nodes.values()]

    async def close(self) -> None:
        return None

    def _live_record(self, client_id: str, now: float) -> Registration | None:
        record = self._live.get(client_id)
        if record is None:
            return None
        if record[1] <= now:
            del self._live[client_id]
            return None
        return record[0]

    def _remember_device(self, reg: Registration, now: float) -> None:
        previous = self._devices.get(reg.client_id)
        if previous is not None and previous[0] != reg.user_id:
            self._forget_from_user(previous[0], reg.client_id)
        self._devices[reg.client_id] = (reg.user_id, reg.device_type, now + self._device_ttl_s)
        self._by_user.setdefault(reg.user_id, set()).add(reg.client_id)

    def _device_record(self, client_id: str, now: float) -> tuple[str, str, float] | None:
        record = self._devices.get(client_id)
        if record is None:
            return None
        if record[2] <= now:
            del self._devices[client_id]
            self._forget_from_user(record[0], client_id)
            return None
        return record

    def _forget_from_user(self, user_id: str, client_id: str) -> None:
        clients = self._by_user.get(user_id)
        if clients is not None:
            clients.discard(client_id)
            if not clients:
                del self._by_user[user_id]

    def _maybe_sweep(self, now: float, ttl_s: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + ttl_s
        for client_id in [c for c, (_, exp) in self._live.items() if exp <= now]:
            del self._live[client_id]
        for client_id in [c for c, rec in self._devices.items() if rec[2] <= now]:
            self._device_record(client_id, now)
