"""`BroadcastLog` on Redis: the fleet's broadcast history in one sorted set and one hash.

Key layout (prefix `zp` by default), both keys under the one hash tag `{zp:bh}`, so every call
is one script on one Cluster slot:

    {zp:bh}      sorted set: every member scored 0, so ordered by id bytewise (time order);
                 "after X" is ZRANGEBYLEX (X +
    {zp:bh}:e    hash: id -> EXPIRES_AT (15 digits, wall-clock ms), the length of the device
                 types (8 digits), the device types (a JSON list, sorted), the payload

It is the inbox's layout for one more "client" (whose marks and handed keys stay empty:
nothing is given or forwarded from the history), and runs the inbox's own scripts
(`router.stores.redis_inbox_lua.ADD` and `AFTER`): ZADD NX and HSET, the oldest dropped past the
cap, the keys' TTL extended to the newest broadcast's remaining life (so an idle history disappears
by itself); reads skip and delete expired broadcasts. Expiry is judged on the caller's wall
clock.

Errors. An unreachable Redis raises `Unavailable`; both operations are idempotent.
"""

from __future__ import annotations

import orjson

from core.clock import ClockMs, wall_ms
from core.redis.client import Client
from core.redis.common import run_script, unavailable
from core.redis.store import RedisStore
from router.base import Broadcast
from router.stores.redis_inbox import EXPIRY_DIGITS
from router.stores.redis_inbox_lua import ADD, AFTER

TYPES_DIGITS = 8


class RedisBroadcastLog(RedisStore):
    """`BroadcastLog` on Redis (layout in the module docstring). `client` is a redis-py asyncio
    `Redis` or `RedisCluster` with bytes replies; closed here only if made here (`from_url`)."""

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "zp",
        max_entries: int,
        clock_ms: ClockMs = wall_ms,
    ) -> None:
        super().__init__(client, prefix=prefix)
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._cap = max_entries
        self._clock_ms = clock_ms
        ids = f"{{{prefix}:bh}}"
        # The inbox scripts' marks and handed keys too: never written for the history.
        self.keys = [ids, ids + ":e", ids + ":g", ids + ":h"]

    async def add(self, broadcast: Broadcast) -> None:
        ttl_ms = broadcast.expires_at_ms - self._clock_ms()
        if ttl_ms <= 0:
            return
        args = [broadcast.id, _encode(broadcast), self._cap, ttl_ms]
        with unavailable("broadcast history"):
            await run_script(self._client, ADD, self.keys, args)

    async def after(self, last_id: str, limit: int) -> list[Broadcast]:
        if limit <= 0:
            return []
        with unavailable("broadcast history"):
            found = await run_script(self._client, AFTER, self.keys,
                                     ["(" + last_id, limit, self._clock_ms()])
        return [_decode(found[i], found[i + 1]) for i in range(0, len(found), 2)]


def _encode(broadcast: Broadcast) -> bytes:
    types = orjson.dumps(sorted(broadcast.device_types))
    return b"%015d%08d%b%b" % (broadcast.expires_at_ms, len(types), types, broadcast.payload)


def _decode(broadcast_id: bytes, value: bytes) -> Broadcast:
    start = EXPIRY_DIGITS + TYPES_DIGITS
    end = start + int(value[EXPIRY_DIGITS:start])
    return Broadcast(broadcast_id.decode(), value[end:], int(value[:EXPIRY_DIGITS]),
                     frozenset(orjson.loads(value[start:end])))
