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
from typing import Any, TypeVar, cast

from core.redis.client import Client, connect
from core.redis.common import run_script, unavailable
from core.redis.keys import check_prefix
from core.redis.lua import RECORD_DELETE, RECORD_PRUNE, RECORD_PUT
from router.pages.process_stats import ProcessStats, decode, encode

T = TypeVar("T")

# A set of ids and one record key per id, under one hash tag: the scripts of the registry's
# node records (`registry.redis_lua`) do exactly this, so they serve process records too.
PROCESS_PUT, PROCESS_DELETE, PROCESS_PRUNE = RECORD_PUT, RECORD_DELETE, RECORD_PRUNE


class RedisProcessStats:
    """`ProcessStatsStore` on Redis (layout in the module docstring). `client` is a redis-py
    asyncio `Redis` or `RedisCluster` with bytes replies; closed only if made here
    (`from_url`)."""

    __slots__ = ("_client", "_closed", "_owns_client", "set_key")

    def __init__(self, client: Client, *, prefix: str = "zp") -> None:
        check_prefix(prefix)
        self._client = client
        self.set_key = f"{{{prefix}:procs}}"
        self._owns_client = False
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisProcessStats:
        """A store on a client made by `connect(url)`, closed by `close()`."""
        store = cls(connect(url), **kwargs)
        store._owns_client = True
        return store

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

    async def close(self) -> None:
        if self._owns_client and not self._closed:
            self._closed = True
            await self._client.aclose()


async def _awaited(result: Awaitable[T]) -> T:
    return await result
