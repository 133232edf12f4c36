"""The registry's Lua scripts: every step that must be atomic for one client, user or node.

Each script declares every key it touches, and the keys of one call share one hash tag, so a
call runs on one Redis Cluster slot. Batched scripts take many items per call (on a single Redis
a whole chunk of a batch; on a cluster the items of one slot), so a batch costs a few EVALSHA
calls, not one per client. Records are laid out as `registry.redis_layout` describes: the version
is bytes 1-20, DEVICE_UNTIL bytes 22-36, LIVE_UNTIL bytes 38-52 (all compared as equal-length
digit strings: exact beyond 2**53, no number conversions), the node id follows from byte 54 up
to the next 0xFF byte. Times are wall-clock ms passed in by the caller (`now`): scripts never
read the server's clock. Lua strings are interned, so every substring costs a hash: the
register script, the reconnect storm's path, makes as few as it can.

Node ids are compared byte by byte (a loop, not Lua's `<`, which follows the server's locale), so
that Redis orders equal versions exactly as Python orders the `str` node ids.
"""

from __future__ import annotations

from core.redis.lua import RECORD_DELETE, RECORD_PRUNE, RECORD_PUT, Lua

_RECORDS = r"""
local SEP = '\255'
local function bytes_gt(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
"""

# KEYS: client1, client2, ...
# ARGV: now, live_until, pending, renew_before (15-digit ms), px_ms, head1, head2, ...
# Each head is a registration's VERSION 0xFF NODE 0xFF USER 0xFF DEVICE_TYPE. It is written if
# the client has no record, if its stored registration is no longer live, or if it wins (a
# higher version, or an equal one and a node id not lower: the same registration sent again
# wins, so a retry after a lost answer indexes it): with KEEPTTL and the stored DEVICE_UNTIL
# while the user and device type stay and DEVICE_UNTIL is not before renew_before (the caller
# makes that at least live_until); otherwise with DEVICE_UNTIL `pending` and PX px_ms.
# `pending` is before any later renew_before: the device part counts as due, and is written and
# indexed again by the next registration, until CONFIRM (after the index write) sets the real
# DEVICE_UNTIL. So a device whose index write never happened is never skipped as known.
# Returns the items whose device part was (re)written, for the user index: i, or -i followed by
# the previous user when the device moved from another user. Kept lean: it is the storm's path.
REGISTER = Lua("register", _RECORDS + r"""
local now, live, pending, renew_before, px = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local fresh_times, written = SEP .. pending .. SEP .. live .. SEP, {}
for i = 1, #KEYS do
  local head, key = ARGV[i + 5], KEYS[i]
  local old = redis.call('GET', key)
  if not old then
    redis.call('SET', key, string.sub(head, 1, 20) .. fresh_times .. string.sub(head, 22),
               'PX', px)
    written[#written + 1] = i
  else
    local version, old_version = string.sub(head, 1, 20), string.sub(old, 1, 20)
    local h, o = string.find(head, SEP, 22, true), string.find(old, SEP, 54, true)
    if version > old_version or string.sub(old, 38, 52) <= now or (version == old_version
        and not bytes_gt(string.sub(old, 54, o - 1), string.sub(head, 22, h - 1))) then
      local old_device = string.sub(old, 22, 36)
      if old_device >= renew_before and string.sub(head, h) == string.sub(old, o) then
        redis.call('SET', key, version .. SEP .. old_device .. SEP .. live .. SEP
                   .. string.sub(head, 22), 'KEEPTTL')
      else
        redis.call('SET', key, version .. fresh_times .. string.sub(head, 22), 'PX', px)
        local old_user = string.sub(old, o + 1, string.find(old, SEP, o + 1, true) - 1)
        if old_user ~= string.sub(head, h + 1, string.find(head, SEP, h + 1, true) - 1) then
          written[#written + 1] = -i
          written[#written + 1] = old_user
        else
          written[#written + 1] = i
        end
      end
    end
  end
end
return written
""")

# KEYS: client1, client2, ...   ARGV: pending, device_until (15-digit ms), version1, version2, ...
# After the user index has the devices REGISTER wrote: each record still at that version whose
# device part is still `pending` gets the real DEVICE_UNTIL (KEEPTTL); returns how many.
CONFIRM = Lua("confirm", r"""
local pending, device_until, n = ARGV[1], ARGV[2], 0
for i = 1, #KEYS do
  local old = redis.call('GET', KEYS[i])
  if old and string.sub(old, 1, 20) == ARGV[i + 2] and string.sub(old, 22, 36) == pending then
    redis.call('SET', KEYS[i], string.sub(old, 1, 21) .. device_until .. string.sub(old, 37),
               'KEEPTTL')
    n = n + 1
  end
end
return n
""")

# KEYS: client1, client2, ...   ARGV: now, live_until (15-digit ms), ttl_ms, 0xFF node_id 0xFF
# Extends the live registrations that name this node to live_until (the key's TTL too, when
# the registration now outlasts the device part); returns how many.
REFRESH = Lua("refresh", r"""
local now, live, ttl, mark, n = ARGV[1], ARGV[2], ARGV[3], ARGV[4], 0
for i = 1, #KEYS do
  local old = redis.call('GET', KEYS[i])
  if old and string.sub(old, 53, 52 + #mark) == mark and string.sub(old, 38, 52) > now then
    local record = string.sub(old, 1, 37) .. live .. string.sub(old, 53)
    if string.sub(old, 22, 36) >= live then
      redis.call('SET', KEYS[i], record, 'KEEPTTL')
    else
      redis.call('SET', KEYS[i], record, 'PX', ttl)
    end
    n = n + 1
  end
end
return n
""")

# KEYS: client   ARGV: now (15-digit ms), version (20 digits), 0xFF node_id 0xFF
# Compare-and-delete of the registration (the device part stays): 1 if it was live, this node's
# at this version, and is now ended (LIVE_UNTIL all zeros).
UNREGISTER = Lua("unregister", r"""
local old = redis.call('GET', KEYS[1])
if old and string.sub(old, 1, 20) == ARGV[2] and string.sub(old, 38, 52) > ARGV[1]
    and string.sub(old, 53, 52 + #ARGV[3]) == ARGV[3] then
  redis.call('SET', KEYS[1], string.sub(old, 1, 37) .. string.rep('0', 15) .. string.sub(old, 53),
             'KEEPTTL')
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

ALL = (REGISTER, CONFIRM, REFRESH, UNREGISTER, INDEX_ADD, INDEX_READ, INDEX_PRUNE, RECORD_PUT,
       RECORD_DELETE, RECORD_PRUNE)
