"""`MessageQueue` on Redis Streams: one stream per priority, one consumer group for all routers.

Key layout (prefix `zp` by default); every key shares the hash tag `{zp:q}`, so the whole queue
lives in one Redis Cluster slot:

    {zp:q}:high, {zp:q}:normal, {zp:q}:low   one stream per priority; entry fields
                                             `m` (the message's metadata, compact JSON) and
                                             `p` (its payload bytes, as sent), laid out by
                                             `router.stores.redis_queue_layout`
    {zp:q}:credits                           hash: the weighted round's credit left per priority
    {zp:q}:d:<dedup key>                     the id of the message put under the key, with
                                             PX = the dedup window

Every key is in one Cluster slot, so dedup-and-enqueue is one atomic script (PUT) and a take
one script over the three streams (TAKE: weighted rounds whose credit is kept in Redis, claiming
entries pending longer than `claim_idle_s`, marking the previous batch done). Single puts are
coalesced per turn of the event loop. How put, take, claim, done and the consumer group work,
and why one slot: docs/queue.md.

Errors. An unreachable Redis raises `Unavailable` (see `core.redis.common`); `put` is not
idempotent without a dedup key, so the API answers 503 and the sender retries with one if it
cares. After `close`, `put` raises `Unavailable`, a waiting take returns [] at once and later
takes return [] after their timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import ResponseError

from core.errors import Unavailable
from core.redis.client import Client
from core.redis.common import block_ms, idle, run_script, unavailable, unless_closed
from core.redis.lua import Lua
from core.redis.store import RedisStore
from router.base import Message, Priority, PutResult, Taken
from router.stores import redis_queue_layout as layout
from router.stores.memory import DEFAULT_WEIGHTS

DEFAULT_MAX_DEPTH = 1_000_000
DONE_ITEMS = 1000

# KEYS: high, normal, low, then the dedup keys of the messages that have one
# ARGV: window_ms, max_depth (0: none), then per message: stream index (1-3), index of its dedup
#       key in KEYS (0: none), meta, payload, its id (empty without a dedup key)
# Returns per message 1 (enqueued) or, for a duplicate within the window, the id stored under
# its key (the original message's), stopping short at the first message that found the queue
# full.
PUT = Lua("queue_put_many", r"""
local window, max = ARGV[1], tonumber(ARGV[2])
local n = 0
if max > 0 then
  n = redis.call('XLEN', KEYS[1]) + redis.call('XLEN', KEYS[2]) + redis.call('XLEN', KEYS[3])
end
local out = {}
for i = 3, #ARGV, 5 do
  local dedup = tonumber(ARGV[i + 1])
  local original = dedup > 0 and redis.call('GET', KEYS[dedup])
  if original then
    out[#out + 1] = original
  elseif max > 0 and n >= max then
    break
  else
    if dedup > 0 then redis.call('SET', KEYS[dedup], ARGV[i + 4], 'PX', window) end
    redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', 'm', ARGV[i + 2], 'p', ARGV[i + 3])
    n = n + 1
    out[#out + 1] = 1
  end
end
return out
""")

PUT_ITEMS = 500
"""Messages in one PUT script call (a coalesced turn or a batch larger than this takes several)."""

# KEYS: high, normal, low, credits
# ARGV: group, consumer, max_n, weight high, normal, low, claim_min_idle_ms (0: no claim), then
#       (stream index, entry id) pairs of entries done (XACKed and XDELed first, as DONE does)
# Returns {entries, ids}: entries flat (stream index, entry id, meta, payload)...; when there are
# none, ids are the group's last-delivered id per stream (what to block after).
_LAST_DELIVERED = r"""
local function last_delivered(key, group)  -- the group's last-delivered id on stream `key`
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
    local name, id
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then
        id = g[i + 1] end
    end
    if name == group then return id end
  end
  return '0-0'
end
"""

TAKE = Lua("queue_take", _LAST_DELIVERED + r"""
local group, consumer, max_n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local weights = {tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}
local min_idle = tonumber(ARGV[7])
for i = 8, #ARGV, 2 do
  local key = KEYS[tonumber(ARGV[i])]
  redis.call('XACK', key, group, ARGV[i + 1])
  redis.call('XDEL', key, ARGV[i + 1])
end
local out, taken = {}, 0
local function keep(p, entries)
  local got = 0
  for _, e in ipairs(entries) do
    local f = e[2]
    if f then  -- a claimed entry deleted meanwhile comes back without fields
      out[#out + 1] = p; out[#out + 1] = e[1]; out[#out + 1] = f[2]; out[#out + 1] = f[4]
      got = got + 1
    end
  end
  taken = taken + got
  return got
end
if min_idle > 0 then
  for p = 1, 3 do
    if taken >= max_n then break end
    local r = redis.call('XAUTOCLAIM', KEYS[p], group, consumer, min_idle, '0-0',
                         'COUNT', max_n - taken)
    keep(p, r[2])
  end
end
local stored = redis.call('HMGET', KEYS[4], '1', '2', '3')
local credits = {}
for p = 1, 3 do credits[p] = tonumber(stored[p]) or weights[p] end
local empty, saved, took = {false, false, false}, nil, false
while taken < max_n do
  local p
  for i = 1, 3 do
    if not empty[i] and credits[i] > 0 then p = i; break end
  end
  if p then
    local want = math.min(credits[p], max_n - taken)
    local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want,
                         'STREAMS', KEYS[p], '>')
    local got = 0
    if r then got = keep(p, r[1][2]) end
    if got > 0 then took = true end
    credits[p] = credits[p] - got
    if got < want then empty[p] = true end
  elseif empty[1] and empty[2] and empty[3] then
    break
  else  -- every priority with messages has spent its credit: a new round
    saved, took = {credits[1], credits[2], credits[3]}, false
    credits = {weights[1], weights[2], weights[3]}
  end
end
if saved and not took then credits = saved end  -- a round begins only when it serves
redis.call('HSET', KEYS[4], '1', credits[1], '2', credits[2], '3', credits[3])
local ids = {}
if taken == 0 then
  for p = 1, 3 do ids[p] = last_delivered(KEYS[p], group) end
end
return {out, ids}
""")

# KEYS: high, normal, low; ARGV: group, then (stream index, entry id) pairs. Returns XACKed.
DONE = Lua("queue_done", r"""
local n = 0
for i = 2, #ARGV, 2 do
  local key = KEYS[tonumber(ARGV[i])]
  n = n + redis.call('XACK', key, ARGV[1], ARGV[i + 1])
  redis.call('XDEL', key, ARGV[i + 1])
end
return n
""")

# KEYS: high, normal, low; ARGV: group. Returns the entries not yet delivered per stream.
DEPTH = Lua("queue_depth", r"""
local out = {}
for p = 1, 3 do
  out[p] = redis.call('XLEN', KEYS[p]) - redis.call('XPENDING', KEYS[p], ARGV[1])[1]
end
return out
""")

# KEYS: high, normal, low; ARGV: group. Returns per stream the ms the oldest entry not yet
# delivered to the group has waited since it was added, -1 when none waits.
LAG = Lua("queue_lag", _LAST_DELIVERED + r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for p = 1, 3 do
  local last = last_delivered(KEYS[p], ARGV[1])
  local first = redis.call('XRANGE', KEYS[p], '(' .. last, '+', 'COUNT', 1)[1]
  out[p] = -1
  if first then out[p] = math.max(0, now - tonumber(string.match(first[1], '^(%d+)'))) end
end
return out
""")


class RedisQueue(RedisStore):
    """`MessageQueue` on Redis Streams (layout in the module docstring, behaviour in
    docs/queue.md).

    `client` is a redis-py asyncio `Redis` or `RedisCluster` with bytes replies; the queue closes
    it only if it made it (`from_url`). Queues with different `prefix`es are separate queues.
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "zp",
        dedup_window_s: float,
        group: str = "routers",
        claim_idle_s: float = 30.0,
        weights: Mapping[Priority, int] = DEFAULT_WEIGHTS,
        max_depth: int | None = DEFAULT_MAX_DEPTH,
    ) -> None:
        super().__init__(client, prefix=prefix)
        if any(weights.get(p, 0) < 1 for p in Priority):
            raise ValueError("every priority needs a weight of at least 1")
        if claim_idle_s <= 0 or dedup_window_s <= 0:
            raise ValueError("claim_idle_s and dedup_window_s must be positive")
        tag = f"{{{prefix}:q}}"
        self.streams = tuple(f"{tag}:{p.label}" for p in Priority)
        self.credits_key = f"{tag}:credits"
        self._dedup_prefix = f"{tag}:d:"
        self._window_ms = max(1, round(dedup_window_s * 1000))
        self._group = group
        self._claim_idle_ms = max(1, round(claim_idle_s * 1000))
        self._claim_every_s = claim_idle_s / 2
        self._next_claim = 0.0
        self._weights = [weights[p] for p in Priority]
        self._max_depth = max_depth or 0
        self._groups_made = False
        self._coalesced: list[tuple[Message, asyncio.Future[PutResult]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def dedup_key(self, key: str) -> str:
        return self._dedup_prefix + key

    async def put(self, message: Message) -> PutResult:
        """Coalesced with the other puts of this turn of the event loop (docs/queue.md)."""
        if self._closed.is_set():
            raise Unavailable("message queue is closed")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[PutResult] = loop.create_future()
        self._coalesced.append((message, answer))
        if len(self._coalesced) == 1:
            loop.call_soon(self._send_coalesced)
        return await answer

    async def put_many(self, messages: Sequence[Message]) -> list[PutResult]:
        if self._closed.is_set():
            raise Unavailable("message queue is closed")
        results: list[PutResult] = []
        for start in range(0, len(messages), PUT_ITEMS):
            chunk = messages[start:start + PUT_ITEMS]
            try:
                results += await self._put_now(chunk)
            except Unavailable:
                if not results:
                    raise
                return results
            if len(results) < start + len(chunk):
                break
        if not results and messages:
            raise _full()
        return results

    def _send_coalesced(self) -> None:
        batch, self._coalesced = self._coalesced, []
        task = asyncio.get_running_loop().create_task(self._answer(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _answer(self, batch: list[tuple[Message, asyncio.Future[PutResult]]]) -> None:
        """Put `batch` as `put_many` does; answer each put's future."""
        error: Exception = _full()
        try:
            results = await self.put_many([message for message, _ in batch])
        except Exception as exc:
            results, error = [], exc
        for i, (_, answer) in enumerate(batch):
            if answer.done():  # its request went away; the put happened or not, as sent
                continue
            if i < len(results):
                answer.set_result(results[i])
            else:
                answer.set_exception(error)

    async def _put_now(self, messages: Sequence[Message]) -> list[PutResult]:
        """One PUT script call: a result per message, shorter if the queue filled up."""
        keys = list(self.streams)
        args: list[Any] = [self._window_ms, self._max_depth]
        for message in messages:
            dedup, own_id = 0, ""
            if message.dedup_key is not None:
                keys.append(self.dedup_key(message.dedup_key))
                dedup, own_id = len(keys), message.id
            meta = layout.encode_meta(message)
            args += (int(message.priority) + 1, dedup, meta, message.payload, own_id)
        with unavailable("message queue"):
            results = await run_script(self._client, PUT, keys, args)
        return [layout.put_result(m, answer)
                for m, answer in zip(messages, results, strict=False)]

    async def take(self, consumer: str, max_n: int, timeout_s: float,
                   done: Sequence[str] = ()) -> list[Taken]:
        if self._closed.is_set():
            await idle(timeout_s)
            return []
        if len(done) > DONE_ITEMS:  # a big batch: its own calls
            await self.done(consumer, done)
            done = ()
        if max_n <= 0:
            await self.done(consumer, done)
            return []
        pairs = layout.done_pairs(done)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        with unavailable("message queue"):
            while True:
                taken, after = await self._take_now(consumer, max_n, pairs)
                pairs = []
                remaining = deadline - loop.time()
                if taken or remaining <= 0 or self._closed.is_set():
                    return taken
                wait_s = min(remaining, max(0.001, self._next_claim - loop.time()))
                if not await self._wait_for_new(after, wait_s):
                    return []

    async def done(self, consumer: str, receipts: Sequence[str]) -> None:
        if not receipts:
            return
        pairs = layout.done_pairs(receipts)
        with unavailable("message queue"):
            for start in range(0, len(pairs), 2 * DONE_ITEMS):
                await self._script(DONE, [self._group, *pairs[start:start + 2 * DONE_ITEMS]])

    async def depth(self) -> dict[Priority, int]:
        with unavailable("message queue"):
            counts = await self._script(DEPTH, [self._group])
        return {p: int(n) for p, n in zip(Priority, counts, strict=True)}

    async def lag(self) -> dict[Priority, float]:
        with unavailable("message queue"):
            waited = await self._script(LAG, [self._group])
        return {p: max(0, int(ms)) / 1000 for p, ms in zip(Priority, waited, strict=True)}

    async def _closing(self) -> None:
        await asyncio.sleep(0)  # let waiting takes see the close, coalesced puts leave
        if self._sending:  # puts already accepted get their answers before the client goes
            await asyncio.wait(list(self._sending), timeout=5.0)

    async def _take_now(self, consumer: str, max_n: int,
                        done_pairs: list[str]) -> tuple[list[Taken], list[bytes]]:
        now = asyncio.get_running_loop().time()
        claim_ms = 0
        if now >= self._next_claim:
            claim_ms, self._next_claim = self._claim_idle_ms, now + self._claim_every_s
        entries, after = await self._script(
            TAKE, [self._group, consumer, max_n, *self._weights, claim_ms, *done_pairs],
            keys=[*self.streams, self.credits_key])
        taken = [layout.taken(entries[i:i + 4]) for i in range(0, len(entries), 4)]
        return taken, after

    async def _wait_for_new(self, after: list[bytes], wait_s: float) -> bool:
        """Block until some stream has an entry after `after` (or `wait_s` passes); False if the
        queue was closed meanwhile."""
        read = self._client.execute_command(
            "XREAD", "COUNT", 1, "BLOCK", block_ms(wait_s), "STREAMS", *self.streams, *after)
        finished, _ = await unless_closed(self._closed, read)
        return finished and not self._closed.is_set()

    async def _script(self, script: Lua, args: list[Any], *,
                      keys: Sequence[str] | None = None) -> Any:
        """Run a group script; make the groups first if needed, or again after NOGROUP."""
        keys = self.streams if keys is None else keys
        if not self._groups_made:
            await self._make_groups()
        try:
            return await run_script(self._client, script, keys, args)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        await self._make_groups()
        return await run_script(self._client, script, keys, args)

    async def _make_groups(self) -> None:
        for stream in self.streams:
            try:
                await self._client.execute_command(
                    "XGROUP", "CREATE", stream, self._group, "0", "MKSTREAM")
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_made = True


def _full() -> Unavailable:
    return Unavailable("message queue is full", retry_after_s=1.0)
