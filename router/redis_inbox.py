"""`Inbox` on Redis: per client, a sorted set of ids and a hash of their entries.

Key layout (prefix `zp` by default; `T(id)` is the client id as a hash tag, as the registry makes
it: `registry.redis_layout.tag`):

    zp:i:{T(client)}     sorted set: every member scored 0, so ordered by id bytewise (message
                         ids are time-ordered ASCII, so that is time order); "after X" is
                         ZRANGEBYLEX (X +, "through X" is ZRANGEBYLEX - [X
    zp:i:{T(client)}:e   hash: id -> EXPIRES_AT (15 digits, wall-clock ms) followed by the payload

Both keys of a client share its tag, so each call is one script on one Cluster slot. A script
per operation keeps the two keys in step: ADD (ZADD NX, HSET, drop the oldest past the cap,
extend the keys' TTL), AFTER (range, skip and delete expired entries, until `limit` live ones or
the end), ACK (ZREM + HDEL) and ACK_THROUGH (range up to X, remove).

Time. An entry is expired when the caller's wall clock (`clock_ms`, passed to the scripts) has
reached its `expires_at_ms`; reads skip and delete expired entries. Redis TTLs only reclaim
memory: each add extends both keys' TTL to the entry's remaining life (never shortens it), so an
inbox disappears by itself once its latest entry has expired. Entries that expire before newer
ones stay (counted against the cap, which bounds them) until a read passes over them.

Batching. `add` for many clients (a message to a user's devices) is one script call per client,
all in one pipeline: one round trip per `PIPELINE_ITEMS` clients, whatever their slots (a cluster
pipeline sends each node its share at once).

Errors. An unreachable Redis raises `Unavailable`. Every operation is idempotent, so callers
retry the whole call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from registry.redis_client import Client, connect
from registry.redis_layout import check_prefix, tag
from registry.redis_lua import Lua
from router.base import InboxEntry
from router.clock import ClockMs, wall_ms
from router.redis_common import ScriptCall, run_pipelined, run_script, unavailable

EXPIRY_DIGITS = 15
ACK_ITEMS = 1000

_CHUNKED_DELETE = r"""
local function remove(ids)
  for i = 1, #ids, 500 do
    local part = {unpack(ids, i, math.min(i + 499, #ids))}
    redis.call('ZREM', KEYS[1], unpack(part))
    redis.call('HDEL', KEYS[2], unpack(part))
  end
end
"""

# KEYS: ids, entries; ARGV: id, EXPIRES_AT .. payload, cap, ttl_ms. Returns 1 if added.
ADD = Lua("inbox_add", r"""
if redis.call('ZADD', KEYS[1], 'NX', 0, ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if excess > 0 then
  local old = redis.call('ZRANGE', KEYS[1], 0, excess - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
  redis.call('HDEL', KEYS[2], unpack(old))
end
local ttl = tonumber(ARGV[4])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
""")

# KEYS: ids, entries; ARGV: start ('-' or '(' .. id), limit, now_ms.
# Returns id, value, id, value... of up to `limit` unexpired entries; deletes expired ones passed.
AFTER = Lua("inbox_after", _CHUNKED_DELETE + r"""
local start, limit, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out, expired, found = {}, {}, 0
while found < limit do
  local ids = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0,
                         math.min(limit - found, 500))
  if #ids == 0 then break end
  local values = redis.call('HMGET', KEYS[2], unpack(ids))
  for i, id in ipairs(ids) do
    local value = values[i]
    if value and tonumber(string.sub(value, 1, 15)) > now then
      out[#out + 1] = id; out[#out + 1] = value; found = found + 1
    else
      expired[#expired + 1] = id
    end
  end
  start = '(' .. ids[#ids]
end
remove(expired)
return out
""")

# KEYS: ids, entries; ARGV: ids. Returns how many were present.
ACK = Lua("inbox_ack", r"""
local n = redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('HDEL', KEYS[2], unpack(ARGV))
return n
""")

# KEYS: ids, entries; ARGV: last id. Returns how many were removed.
ACK_THROUGH = Lua("inbox_ack_through", _CHUNKED_DELETE + r"""
local total = 0
while true do
  local ids = redis.call('ZRANGEBYLEX', KEYS[1], '-', '[' .. ARGV[1], 'LIMIT', 0, 500)
  if #ids == 0 then break end
  remove(ids)
  total = total + #ids
end
return total
""")


class RedisInbox:
    """`Inbox` on Redis (layout and behaviour in the module docstring).

    `client` is a redis-py asyncio `Redis` or `RedisCluster` with bytes replies; the inbox closes
    it only if it made it (`from_url`).
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "zp",
        max_per_client: int,
        clock_ms: ClockMs = wall_ms,
    ) -> None:
        check_prefix(prefix)
        if max_per_client < 1:
            raise ValueError("max_per_client must be at least 1")
        self._client = client
        self._prefix = prefix
        self._cap = max_per_client
        self._clock_ms = clock_ms
        self._owns_client = False
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisInbox:
        """An inbox on a client made by `connect(url)`, closed by `close()`."""
        inbox = cls(connect(url), **kwargs)
        inbox._owns_client = True
        return inbox

    def keys(self, client_id: str) -> list[str]:
        """The client's two keys: its ids (sorted set) and its entries (hash)."""
        ids = f"{self._prefix}:i:{{{tag(client_id)}}}"
        return [ids, ids + ":e"]

    async def add(self, client_ids: Iterable[str], entry: InboxEntry) -> None:
        await self.add_many([(tuple(client_ids), entry)])

    async def add_many(self, items: Sequence[tuple[Sequence[str], InboxEntry]]) -> None:
        now_ms = self._clock_ms()
        calls: list[ScriptCall] = []
        for client_ids, entry in items:
            ttl_ms = entry.expires_at_ms - now_ms
            if ttl_ms <= 0:
                continue
            value = b"%015d%b" % (entry.expires_at_ms, entry.payload)
            args = [entry.id, value, self._cap, ttl_ms]
            calls += [(ADD, self.keys(c), args) for c in dict.fromkeys(client_ids)]
        if calls:
            with unavailable("inbox"):
                await run_pipelined(self._client, calls)

    async def after(self, client_id: str, last_id: str | None, limit: int) -> list[InboxEntry]:
        if limit <= 0:
            return []
        with unavailable("inbox"):
            found = await self._run(AFTER, client_id, _after_args(last_id, limit,
                                                                  self._clock_ms()))
        return _page(found)

    async def after_many(self, reads: Sequence[tuple[str, str | None]],
                         limit: int) -> list[list[InboxEntry]]:
        if limit <= 0 or not reads:
            return [[] for _ in reads]
        now_ms = self._clock_ms()
        calls: list[ScriptCall] = [
            (AFTER, self.keys(client_id), _after_args(last_id, limit, now_ms))
            for client_id, last_id in reads]
        with unavailable("inbox"):
            return [_page(found) for found in await run_pipelined(self._client, calls)]

    async def ack(self, client_id: str, ids: Sequence[str]) -> int:
        removed = 0
        with unavailable("inbox"):
            for start in range(0, len(ids), ACK_ITEMS):
                removed += await self._run(ACK, client_id, ids[start:start + ACK_ITEMS])
        return removed

    async def ack_many(self, acks: Sequence[tuple[str, Sequence[str]]]) -> int:
        calls: list[ScriptCall] = [
            (ACK, self.keys(client_id), ids[start:start + ACK_ITEMS])
            for client_id, ids in acks for start in range(0, len(ids), ACK_ITEMS)]
        if not calls:
            return 0
        with unavailable("inbox"):
            return sum(int(n) for n in await run_pipelined(self._client, calls))

    async def ack_through(self, client_id: str, last_id: str) -> int:
        with unavailable("inbox"):
            return int(await self._run(ACK_THROUGH, client_id, [last_id]))

    async def ack_through_many(self, items: Sequence[tuple[str, str]]) -> int:
        if not items:
            return 0
        calls: list[ScriptCall] = [(ACK_THROUGH, self.keys(client_id), [last_id])
                                   for client_id, last_id in items]
        with unavailable("inbox"):
            return sum(int(n) for n in await run_pipelined(self._client, calls))

    async def close(self) -> None:
        if self._owns_client and not self._closed:
            self._closed = True
            await self._client.aclose()

    async def _run(self, script: Lua, client_id: str, args: Sequence[Any]) -> Any:
        return await run_script(self._client, script, self.keys(client_id), args)


def _after_args(last_id: str | None, limit: int, now_ms: int) -> list[Any]:
    """ARGV of the AFTER script: from just after `last_id` (or the start), `limit`, now."""
    return ["-" if last_id is None else "(" + last_id, limit, now_ms]


def _page(found: Sequence[bytes]) -> list[InboxEntry]:
    """The entries an AFTER script answered: flat (id, value) pairs."""
    return [_entry(found[i], found[i + 1]) for i in range(0, len(found), 2)]


def _entry(entry_id: bytes, value: bytes) -> InboxEntry:
    return InboxEntry(entry_id.decode(), value[EXPIRY_DIGITS:], int(value[:EXPIRY_DIGITS]))

