"""Configuration of the registry (frozen, built once at start-up)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Where the registry lives. No `redis_url`: in this process's memory.

    `redis_url` is `redis://host:port/db` for one Redis, or `redis+cluster://host:port` for a
    Redis Cluster. With `peer_regions` ("NAME=URL" each), writes are also replicated to, and
    applied from, those regions' Redis; `region` names this one.
    """

    redis_url: str = ""
    region: str = "local"
    peer_regions: tuple[str, ...] = ()
    registry_prefix: str = "zp"
    device_ttl_s: float = 7 * 24 * 3600.0

    def peers(self) -> dict[str, str]:
        """`peer_regions` as {region: url}; ValueError naming a malformed entry."""
        peers: dict[str, str] = {}
        for entry in self.peer_regions:
            name, sep, url = entry.partition("=")
            if not sep or not name or not url:
                raise ValueError(f"peer_regions: expected NAME=URL, got {entry!r}")
            if name == self.region:
                raise ValueError(f"peer_regions: {name!r} is this region")
            peers[name] = url
        return peers
