"""`RedisStore`: the set-up and close that every Redis-backed store shares.

A store is made on a redis-py asyncio client (`Redis` or `RedisCluster`) and a key prefix, or
by `from_url`, which makes the client (`core.redis.client.connect`) and so owns it. `close()`
is idempotent: the first call marks the store closed (`_closed`, an `asyncio.Event` that
blocking reads wait on through `core.redis.common.unless_closed`), runs the store's own
`_closing()`, and closes the client only if the store made it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Self

from core.redis.client import Client, connect
from core.redis.keys import check_prefix


class RedisStore:
    """Base of the Redis stores: `_client`, `_prefix` (checked by `check_prefix`), `_closed`.

    Subclasses take `client` first and their options as keywords, so that `from_url(url,
    **options)` passes the options on."""

    __slots__ = ("_client", "_closed", "_owns_client", "_prefix")

    def __init__(self, client: Client, *, prefix: str) -> None:
        self._client = client
        self._prefix = check_prefix(prefix)
        self._owns_client = False
        self._closed = asyncio.Event()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """A store on a client made by `connect(url)`, closed by `close()`; `kwargs` are the
        constructor's."""
        store = cls(connect(url), **kwargs)
        store._owns_client = True
        return store

    @property
    def client(self) -> Client:
        """The client the store runs on (closed by `close()` only if made by `from_url`)."""
        return self._client

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed.is_set()

    async def close(self) -> None:
        """Mark the store closed, run `_closing()` and close an owned client; once."""
        if self._closed.is_set():
            return
        self._closed.set()
        await self._closing()
        if self._owns_client:
            await asyncio.sleep(0)  # let calls waiting on the close give way before the client
            await self._client.aclose()

    async def _closing(self) -> None:
        """What the store finishes after it is marked closed, before its client goes."""
