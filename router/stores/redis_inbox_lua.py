"""The Lua scripts of `router.stores.redis_inbox`, one per operation, each on one client's three
keys.

KEYS of every script: the client's ids (sorted set), entries (hash: id -> EXPIRES_AT, 15 digits,
then `F` for a forwarded entry, then the payload, a JSON object), marks (hash: id -> mark, for
the entries given; `router.base.Inbox`) and handed (hash: id -> the regions it was forwarded
to, each followed by a comma). Ids and marks are compared bytewise (`before`): Lua's own `<`
on strings follows the server's locale (strcoll).
"""

from __future__ import annotations

from core.redis.lua import Lua

_COMMON = r"""
local function remove(ids)
  local n = 0
  for i = 1, #ids, 500 do
    local part = {unpack(ids, i, math.min(i + 499, #ids))}
    n = n + redis.call('ZREM', KEYS[1], unpack(part))
    redis.call('HDEL', KEYS[2], unpack(part))
    redis.call('HDEL', KEYS[3], unpack(part))
    redis.call('HDEL', KEYS[4], unpack(part))
  end
  return n
end
local function before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local function keep_with_ids(key)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 and redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
local function page(start, limit, now)
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
end
local function received(resume_id, strict)
  local gone = {}
  if redis.call('ZSCORE', KEYS[1], resume_id) then gone[1] = resume_id end
  if strict == '1' then
    local value = redis.call('HGET', KEYS[2], resume_id)
    if not value or string.sub(value, 16, 16) == 'F'
        or not redis.call('HGET', KEYS[3], resume_id) then
      return gone
    end
  end
  local marks = redis.call('HGETALL', KEYS[3])
  for i = 1, #marks, 2 do
    if marks[i] ~= resume_id and before(marks[i + 1], resume_id) then
      gone[#gone + 1] = marks[i]
    end
  end
  return gone
end
"""

# ARGV: id, EXPIRES_AT .. payload, cap, ttl_ms. Returns 1 if added.
ADD = Lua("inbox_add", _COMMON + r"""
if redis.call('ZADD', KEYS[1], 'NX', 0, ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if excess > 0 then
  local old = redis.call('ZRANGE', KEYS[1], 0, excess - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('HDEL', KEYS[3], unpack(old))
  redis.call('HDEL', KEYS[4], unpack(old))
end
local ttl = tonumber(ARGV[4])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
for k = 3, 4 do
  local left = redis.call('PTTL', KEYS[k])
  if left ~= -2 and left < ttl then redis.call('PEXPIRE', KEYS[k], ttl) end
end
return 1
""")

# ARGV: start ('-' or '(' .. id), limit, now_ms, mark ('1': mark each entry answered given, its
# own id the mark, unless it has one). Returns id, value, id, value... of up to `limit`
# unexpired entries; deletes the expired ones passed.
AFTER = Lua("inbox_after", _COMMON + r"""
local out = page(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
if ARGV[4] == '1' and #out > 0 then
  for i = 1, #out, 2 do redis.call('HSETNX', KEYS[3], out[i], out[i]) end
  keep_with_ids(KEYS[3])
end
return out
""")

# ARGV: resume id ('' for none), limit, now_ms, strict ('1' or '0'). Removes what a device
# resuming after the id has (the id, and the entries given with a mark below it; with strict,
# only the id unless it is marked and not forwarded), then answers like AFTER from the start.
RESUME = Lua("inbox_resume", _COMMON + r"""
if ARGV[1] ~= '' then remove(received(ARGV[1], ARGV[4])) end
return page('-', tonumber(ARGV[2]), tonumber(ARGV[3]))
""")

# ARGV: id, strict. Removes what RESUME removes; returns how many entries that was.
THROUGH = Lua("inbox_through", _COMMON + r"""
return remove(received(ARGV[1], ARGV[2]))
""")

# ARGV: id, mark, id, mark... Records each present entry given with its mark (a mark only rises).
GIVEN = Lua("inbox_given", _COMMON + r"""
local set = 0
for i = 1, #ARGV, 2 do
  local id, mark = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', KEYS[1], id) then
    local old = redis.call('HGET', KEYS[3], id)
    if not old or before(old, mark) then
      redis.call('HSET', KEYS[3], id, mark)
      set = set + 1
    end
  end
end
if set > 0 then keep_with_ids(KEYS[3]) end
return set
""")

# ARGV: ids. Returns how many were present.
ACK = Lua("inbox_ack", r"""
local n = redis.call('ZREM', KEYS[1], unpack(ARGV))
redis.call('HDEL', KEYS[2], unpack(ARGV))
redis.call('HDEL', KEYS[3], unpack(ARGV))
redis.call('HDEL', KEYS[4], unpack(ARGV))
return n
""")

# ARGV: region, ids. Records each present entry as handed to the region (forwarded there).
HANDED = Lua("inbox_handed", _COMMON + r"""
local region, set = ARGV[1] .. ',', 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], id) then
    local old = redis.call('HGET', KEYS[4], id) or ''
    if not string.find(',' .. old, ',' .. region, 1, true) then
      redis.call('HSET', KEYS[4], id, old .. region)
      set = set + 1
    end
  end
end
if set > 0 then keep_with_ids(KEYS[4]) end
return set
""")

# ARGV: region, limit, now_ms. Like AFTER from the start, skipping entries handed to the region.
UNHANDED = Lua("inbox_unhanded", _COMMON + r"""
local found = page('-', tonumber(ARGV[2]), tonumber(ARGV[3]))
local region, out = ',' .. ARGV[1] .. ',', {}
for i = 1, #found, 2 do
  local handed = redis.call('HGET', KEYS[4], found[i])
  if not handed or not string.find(',' .. handed, region, 1, true) then
    out[#out + 1] = found[i]; out[#out + 1] = found[i + 1]
  end
end
return out
""")
