"""The registry's Lua scripts: every step that must be atomic for one client, user or node.

Each script declares every key it touches, and the keys of one call share one hash tag, so a
call runs on one Redis Cluster slot. Batched scripts take many items per call (on a single Redis
a whole chunk of a batch; on a cluster the items of one slot), so a batch costs a few EVALSHA
calls, not one per client. Records are laid out as `registry.redis_layout` describes: the version
is bytes 1-20 (compared as equal-length digit strings, exact beyond 2**53), the node id follows
from byte 22 up to the next 0xFF byte.

Node ids are compared byte by byte (a loop, not Lua's `<`, which follows the server's locale), so
that Redis orders equal versions exactly as Python orders the `str` node ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

_RECORDS = r"""
local function node_of(r)
  return string.sub(r, 22, string.find(r, '\255', 22, true) - 1)
end
local function user_of(r)
  local a = string.find(r, '\255', 22, true)
  return string.sub(r, a + 1, string.find(r, '\255', a + 1, true) - 1)
end
local function bytes_gt(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
-- does record a win over record b: a higher (version, node id)
local function wins(a, b)
  local va, vb = string.sub(a, 1, 20), string.sub(b, 1, 20)
  if va ~= vb then return va > vb end
  return bytes_gt(node_of(a), node_of(b))
end
"""


@dataclass(frozen=True, slots=True)
class Lua:
    """One script: its source and the SHA1 that EVALSHA names it by."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# KEYS: registration1, device1, registration2, device2, ...  (a pair per client)
# ARGV: ttl_ms, device_ttl_ms, record1, record2, ...
# The registration is replaced only by a record that wins (last writer wins); the device record is
# replaced unless the stored one wins, and is kept for the device TTL either way. Returns
# {i, previous device record, ...} for the items whose device record moved from another user, so
# that the caller can drop the client from that user's index.
REGISTER = Lua("register", _RECORDS + r"""
local ttl, device_ttl, moved = ARGV[1], ARGV[2], {}
for i = 1, #KEYS / 2 do
  local record, key, device_key = ARGV[i + 2], KEYS[2 * i - 1], KEYS[2 * i]
  local live = redis.call('GET', key)
  if not live or wins(record, live) then
    redis.call('SET', key, record, 'PX', ttl)
  end
  local old = redis.call('SET', device_key, record, 'PX', device_ttl, 'GET')
  if old then
    if wins(old, record) then
      redis.call('SET', device_key, old, 'PX', device_ttl)
    elseif user_of(old) ~= user_of(record) then
      moved[#moved + 1] = i
      moved[#moved + 1] = old
    end
  end
end
return moved
""")

# KEYS: registration1, registration2, ...   ARGV: ttl_ms, '\xff' .. node_id .. '\xff'
# Extends the registrations that name this node; returns how many.
REFRESH = Lua("refresh", r"""
local ttl, mark, n = ARGV[1], ARGV[2], 0
for i = 1, #KEYS do
  local live = redis.call('GET', KEYS[i])
  if live and string.sub(live, 21, 20 + #mark) == mark then
    redis.call('PEXPIRE', KEYS[i], ttl)
    n = n + 1
  end
end
return n
""")

# KEYS: registration   ARGV: version .. '\xff' .. node_id .. '\xff'
# Compare-and-delete: 1 if the registration was this node's at this version and is now gone.
UNREGISTER = Lua("unregister", r"""
local live = redis.call('GET', KEYS[1])
if live and string.sub(live, 1, #ARGV[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
""")

# KEYS: user index1, user index2, ...  (one per client; repeats allowed)
# ARGV: now_ms, expiry_ms, device_ttl_ms, client1, client2, ...
# Adds each client to its user's index, scored by its device record's expiry. When the index
# grows, its expired members are dropped, so it never holds more than the user's live devices
# plus the ones added since.
INDEX_ADD = Lua("index_add", r"""
local now, expiry, ttl = ARGV[1], ARGV[2], ARGV[3]
for i = 1, #KEYS do
  if redis.call('ZADD', KEYS[i], expiry, ARGV[i + 3]) == 1 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  end
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return 0
""")

# KEYS: user index   ARGV: now_ms
# Drops expired members; returns the others with their scores: {client, score, ...}.
INDEX_READ = Lua("index_read", r"""
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
""")

# KEYS: user index   ARGV: client1, score1, client2, score2, ...
# Removes members whose score is still the one read (a member re-added since then stays).
INDEX_PRUNE = Lua("index_prune", r"""
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
""")

# KEYS: node set, node record   ARGV: node_id, record, ttl_ms
NODE_PUT = Lua("node_put", r"""
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
return 0
""")

# KEYS: node set, node record   ARGV: node_id
NODE_DELETE = Lua("node_delete", r"""
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], ARGV[1])
return 0
""")

# KEYS: node set, record1, record2, ...   ARGV: node_id1, node_id2, ...
# Removes from the set the nodes whose record is (still) gone.
NODE_PRUNE = Lua("node_prune", r"""
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('SREM', KEYS[1], ARGV[i - 1])
  end
end
return 0
""")

ALL = (REGISTER, REFRESH, UNREGISTER, INDEX_ADD, INDEX_READ, INDEX_PRUNE, NODE_PUT, NODE_DELETE,
       NODE_PRUNE)
