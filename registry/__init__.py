"""The client registry: which edge node holds which client's connection.

`registry` knows nothing of the router or the edge. `base` holds the seam and its values (the
narrow protocols `Connections`, `Devices`, `Nodes`, `NodeControl`, and `Registry`, all four);
`memory` the in-process implementation used by `zuulpush serve`; `redis` the one on a Redis
server or Redis Cluster (imported from `registry.redis`, so that only its users load redis-py).
"""

from registry.base import (
    Connections,
    Device,
    Devices,
    Location,
    NodeControl,
    NodeInfo,
    Nodes,
    NodeState,
    Registration,
    Registry,
)
from registry.memory import MemoryRegistry

__all__ = [
    "Connections",
    "Device",
    "Devices",
    "Location",
    "MemoryRegistry",
    "NodeControl",
    "NodeInfo",
    "NodeState",
    "Nodes",
    "Registration",
    "Registry",
]
