"""What a fleet's `zuulpush api` and `zuulpush router` share: their config, and this region's
registry, which they read and do not replicate (the edges do)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from core.tokens import AuthConfig
from registry.config import RegistryConfig
from registry.factory import RegistryHandle, open_registry
from router.config import ApiConfig, RouterConfig
from zuulpush.config import Components, FleetConfig, OpsConfig


@dataclass(frozen=True, slots=True)
class FleetAppConfig(Components):
    """What `zuulpush api` and `zuulpush router` are built from."""

    auth: AuthConfig
    api: ApiConfig
    router: RouterConfig
    registry: RegistryConfig
    fleet: FleetConfig
    ops: OpsConfig = dataclasses.field(default_factory=OpsConfig)


def local_registry(config: RegistryConfig) -> RegistryHandle:
    """This region's registry alone: the API and routers read, they do not replicate."""
    if not config.redis_url:
        raise ValueError("a fleet process needs redis_url (--redis URL or ZUULPUSH_REDIS_URL)")
    return open_registry(dataclasses.replace(config, peer_regions=()))
