"""`ProcessStatsStore` on Redis or Redis Cluster, kept as the registry keeps node records.

Key layout (prefix `zp` by default, the router's prefix); every key shares the hash tag
`{zp:procs}`, so every call touches one Cluster slot:

    {zp:procs}              set of the process ids that published (members pruned once their
                            record is gone)
    {zp:procs}:<process>    the process's record (`router.pages.process_stats.encode`), PX = its TTL

`publish` writes the record and adds the id to the set in one script (PROCESS_PUT); `remove`
deletes both (PROCESS_DELETE). `live` reads the set, then the records (one MGET: one slot), and
prunes from the set the ids whose record has expired (PROCESS_PRUNE checks again, so a process
that published meanwhile stays). Liveness is the record key's Redis TTL: no clocks compared.

Errors. An unreachable Redis raises `core.errors.Unavailable`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar, cast

from core.redis.client import Client
from core.redis.common import run_script, unavailable
from core.redis.lua import RECORD_DELETE, RECORD_PRUNE, RECORD_PUT
from core.redis.store import RedisStore
from router.pages.process_stats import ProcessStats, decode, encode

T = TypeVar("T")

# A set of ids and one record key per id, under one hash tag: the scripts of the registry's
# node records (`registry.redis_lua`) do exactly this, so they serve process records too.
PROCESS_PUT, PROCESS_DELETE, PROCESS_PRUNE = RECORD_PUT, RECORD_DELETE, RECORD_PRUNE


class RedisProcessStats(RedisStore):
    """`ProcessStatsStore` on Redis (layout in the module docstring). `client` is a redis-py
    asyncio `Redis` or `RedisCluster` with bytes replies; closed only if made here
    (`from_url`)."""

    __slots__ = ("set_key",)

    def __init__(self, client: Client, *, prefix: str = "zp") -> None:
        super().__init__(client, prefix=prefix)
        self.set_key = f"{{{prefix}:procs}}"

    def key(self, process_id: str) -> str:
        return f"{self.set_key}:{process_id}"

    async def publish(self, record: ProcessStats, ttl_s: float) -> None:
        keys = [self.set_key, self.key(record.process_id)]
        with unavailable("process stats"):
            await run_script(self._client, PROCESS_PUT, keys,
                             [record.process_id, encode(record), max(1, round(ttl_s * 1000))])

    async def remove(self, process_id: str) -> None:
        with unavailable("process stats"):
            await run_script(self._client, PROCESS_DELETE, [self.set_key, self.key(process_id)],
                             [process_id])

    async def live(self) -> list[ProcessStats]:
        with unavailable("process stats"):
            members = cast(set[bytes], await _awaited(self._client.smembers(self.set_key)))
            ids = sorted(member.decode() for member in members)
            if not ids:
                return []
            records = cast(list[bytes | None],
                           await self._client.mget([self.key(p) for p in ids]))
            gone = [p for p, raw in zip(ids, records, strict=True) if raw is None]
            if gone:
                await run_script(self._client, PROCESS_PRUNE,
                                 [self.set_key, *(self.key(p) for p in gone)], gone)
        return [decode(raw) for raw in records if raw is not None]


async def _awaited(result: Awaitable[T]) -> T:
    return await result
