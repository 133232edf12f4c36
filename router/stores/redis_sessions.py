"""`SessionRevocations` on Redis or Redis Cluster: the dashboard logouts of a region's API
processes, shared.

Key layout (prefix `zp` by default, the router's prefix); every key shares the hash tag
`{zp:sessions}`, as the process records share `{zp:procs}`, so a Redis Cluster keeps them on one
slot:

    {zp:sessions}:<session id>    "1", PX = the revocation's time (the rest of the cookie's life)

`revoke` is one SET with PX, `is_revoked` one EXISTS: Redis expires the keys, no clocks are
compared and nothing is left behind.

Errors. An unreachable Redis raises `core.errors.Unavailable`.
"""

from __future__ import annotations

from core.redis.client import Client
from core.redis.common import unavailable
from core.redis.store import RedisStore


class RedisSessionRevocations(RedisStore):
    """`SessionRevocations` on Redis (layout in the module docstring). `client` is a redis-py
    asyncio `Redis` or `RedisCluster`; closed only if made here (`from_url`)."""

    __slots__ = ("tag",)

    def __init__(self, client: Client, *, prefix: str = "zp") -> None:
        super().__init__(client, prefix=prefix)
        self.tag = f"{{{prefix}:sessions}}"

    def key(self, session_id: str) -> str:
        return f"{self.tag}:{session_id}"

    async def revoke(self, session_id: str, ttl_s: float) -> None:
        ttl_ms = round(ttl_s * 1000)
        if ttl_ms <= 0:
            return
        with unavailable("session revocations"):
            await self._client.set(self.key(session_id), b"1", px=ttl_ms)

    async def is_revoked(self, session_id: str) -> bool:
        with unavailable("session revocations"):
            return bool(await self._client.exists(self.key(session_id)))
