"""Turn a `Target` into the client ids it reaches, using the registry.

The push API resolves before enqueueing, so a queued targeted message names clients only and the
worker needs no user lookups. A user's devices are the registry's *known* devices, connected or
not: a message to a user reaches the inboxes of devices that are offline now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from registry.base import Device, NodeState, Registry
from router.base import Target


async def resolve_clients(target: Target, registry: Registry) -> tuple[str, ...]:
    """The clients a non-broadcast `target` reaches: its named clients, then the known devices of
    its named users, each once, in that order (a user's devices sorted by client id).

    With `device_types`, only clients of those types remain; a named client the registry has never
    seen has no known type and is then left out. Without them every named client is kept, seen or
    not, so a message can wait in the inbox of a device that has yet to connect.
    """
    if target.broadcast:
        raise ValueError("a broadcast target reaches nodes, not named clients")
    types = target.device_types
    reached: dict[str, None] = {}
    for client_id in await _named_clients(target.clients, types, registry):
        reached[client_id] = None
    for device in await _user_devices(target.users, registry):
        if not types or device.device_type in types:
            reached[device.client_id] = None
    return tuple(reached)


async def count_broadcast(device_types: frozenset[str], registry: Registry) -> int:
    """Connections a broadcast narrowed to `device_types` would reach now: those held by active
    nodes, which are the only ones the worker delivers a broadcast to."""
    nodes = await registry.nodes()
    return sum(n.count(device_types) for n in nodes if n.state is NodeState.ACTIVE)


async def _named_clients(
    client_ids: Iterable[str], types: frozenset[str], registry: Registry
) -> list[str]:
    client_ids = list(client_ids)
    if not types:
        return client_ids
    devices = await registry.devices_many(client_ids)
    return [c for c in client_ids if c in devices and devices[c].device_type in types]


async def _user_devices(user_ids: Iterable[str], registry: Registry) -> list[Device]:
    per_user = await asyncio.gather(*(registry.devices_of_user(u) for u in user_ids))
    return [d for devices in per_user for d in sorted(devices, key=lambda d: d.client_id)]
