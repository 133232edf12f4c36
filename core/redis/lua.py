"""Lua scripts for Redis: a script's source and SHA, and the scripts every store of records
with a TTL shares (the registry's records, the API's process records).

A set names the members; each member's record is its own key with a TTL. A reader lists the set
and prunes the members whose record has expired (`RECORD_PRUNE`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Lua:
    """One script: its source and the SHA1 that EVALSHA names it by."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# KEYS: set, record   ARGV: member, record, ttl_ms
RECORD_PUT = Lua("record_put", r"""
local had = redis.call('EXISTS', KEYS[2])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
return had
""")

# KEYS: set, record   ARGV: member
RECORD_DELETE = Lua("record_delete", r"""
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], ARGV[1])
return 0
""")

# KEYS: set, record1, record2, ...   ARGV: member1, member2, ...
# Removes from the set the members whose record is (still) gone.
RECORD_PRUNE = Lua("record_prune", r"""
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('SREM', KEYS[1], ARGV[i - 1])
  end
end
return 0
""")
