"""Turn a `Target` into the client ids it reaches, using the registry.

The push API resolves before enqueueing, so a queued targeted message names clients only and the
worker needs no user lookups. A user's devices are the registry's *known* devices, connected or
not: a message to a user reaches the inboxes of devices that are offline now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence

from registry.base import Device, NodeInfo, NodeState, Registry
from router.base import Target


async def resolve_clients(target: Target, registry: Registry) -> tuple[str, ...]:
    """The clients a non-broadcast `target` reaches: its named clients, then the known devices of
    its named users, each once, in that order (a user's devices sorted by client id).

    With `device_types`, only clients of those types remain; a named client the registry has never
    seen has no known type and is then left out. Without them every named client is kept, seen or
    not, so a message can wait in the inbox of a device that has yet to connect.
    """
    [clients] = await resolve_many([target], registry)
    return clients


async def resolve_many(targets: Sequence[Target], registry: Registry) -> list[tuple[str, ...]]:
    """`resolve_clients` of each target, with one registry round for them all: one
    `devices_many` for the named clients that need a type, one `devices_of_user` per distinct
    user (concurrently). Raises ValueError for a broadcast target."""
    if any(t.broadcast for t in targets):
        raise ValueError("a broadcast target reaches nodes, not named clients")
    typed = dict.fromkeys(c for t in targets if t.device_types for c in t.clients)
    users = list(dict.fromkeys(u for t in targets for u in t.users))
    if not typed and not users:  # named clients only: nothing to look up
        return [tuple(dict.fromkeys(t.clients)) for t in targets]
    known, per_user = await asyncio.gather(
        registry.devices_many(list(typed)) if typed else _no_devices(),
        asyncio.gather(*(registry.devices_of_user(u) for u in users)),
    )
    devices_of = {u: sorted(d, key=lambda d: d.client_id) for u, d in zip(users, per_user,
                                                                          strict=True)}
    return [_resolved(t, known, devices_of) for t in targets]


def _resolved(
    target: Target, known: Mapping[str, Device], devices_of: Mapping[str, list[Device]]
) -> tuple[str, ...]:
    types = target.device_types
    reached: dict[str, None] = {}
    for client_id in target.clients:
        if not types or (client_id in known and known[client_id].device_type in types):
            reached[client_id] = None
    for user_id in target.users:
        for device in devices_of[user_id]:
            if not types or device.device_type in types:
                reached[device.client_id] = None
    return tuple(reached)


async def _no_devices() -> dict[str, Device]:
    return {}


async def count_broadcast(device_types: frozenset[str], registry: Registry) -> int:
    """Connections a broadcast narrowed to `device_types` would reach now: those held by active
    nodes, which are the only ones the worker delivers a broadcast to."""
    return broadcast_reach(device_types, await registry.nodes())


def broadcast_reach(device_types: frozenset[str], nodes: Iterable[NodeInfo]) -> int:
    """`count_broadcast` over nodes already read."""
    return sum(n.count(device_types) for n in nodes if n.state is NodeState.ACTIVE)
