"""Every Lua script of the store, written with the layout's field names.

The scripts are generic (compare, read, write); no domain logic lives in Lua.
Each one that reads or writes the model first compares the identity marker
with the generation the caller is bound to, in the same call, so nothing is
read from or written over a model Redis has lost.
"""

from __future__ import annotations

from typing import Final

from stocksync.store.layout import (
    ORDER_STATE_FIELD,
    POSITION_FIELD,
    SERVED_FIELD,
    SKU_FIELD,
    SOURCE_FIELD,
    STATE_MARK_FIELD,
    VERSION_FIELD,
)

__all__ = [
    "BEAT",
    "LIVE_WORKERS",
    "LOAD_POSITIONS",
    "LOAD_STATES",
    "LOST",
    "READ_SERVED_PAGE",
    "RELEASE_LOCK",
    "RENEW_LOCK",
    "SAVE_STATES",
    "WRITE_BATCH",
]

#: What a script returns when the identity marker is not the caller's generation.
LOST: Final = -1


def _lua(text: str) -> str:
    for name, value in (
        ("$v", VERSION_FIELD),
        ("$pos", POSITION_FIELD),
        ("$srv", SERVED_FIELD),
        ("$sku", SKU_FIELD),
        ("$s", ORDER_STATE_FIELD),
        ("$src", SOURCE_FIELD),
        ("$m", STATE_MARK_FIELD),
    ):
        text = text.replace(f"'{name}'", f"'{value}'")
    assert "'$" not in text, text
    return text


# KEYS: n SKU hashes, the change stream, the identity marker.
# ARGV: n, maxlen, generation, announce (1: append change entries, 0: not), then per SKU:
# expected version, new version, position, served form, sku.
# Returns LOST, or the (1-based) indexes of SKUs whose version did not match (none written).
WRITE_BATCH: Final = _lua("""
local n = tonumber(ARGV[1])
if redis.call('GET', KEYS[n + 2]) ~= ARGV[3] then
  return -1
end
local conflicts = {}
for i = 1, n do
  local cur = redis.call('HGET', KEYS[i], '$v') or '0'
  if cur ~= ARGV[5 + (i - 1) * 5] then
    conflicts[#conflicts + 1] = i
  end
end
if #conflicts > 0 then
  return conflicts
end
local stream = KEYS[n + 1]
local announce = ARGV[4] == '1'
for i = 1, n do
  local a = 5 + (i - 1) * 5
  redis.call('HSET', KEYS[i], '$v', ARGV[a + 1], '$pos', ARGV[a + 2], '$srv', ARGV[a + 3])
  if announce then
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], '*',
               '$sku', ARGV[a + 4], '$v', ARGV[a + 1], '$srv', ARGV[a + 3])
  end
end
return conflicts
""")

# KEYS: the identity marker, then SKU hashes. ARGV: generation.
# Returns {LOST}, or {1, position or false per SKU}.
LOAD_POSITIONS: Final = _lua("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {-1}
end
local found = {1}
for i = 2, #KEYS do
  found[i] = redis.call('HGET', KEYS[i], '$pos')
end
return found
""")

# KEYS: the identity marker, then order or RMA hashes. ARGV: generation.
# Returns {LOST}, or {1, state or false per key}.
LOAD_STATES: Final = _lua("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {-1}
end
local found = {1}
for i = 2, #KEYS do
  found[i] = redis.call('HGET', KEYS[i], '$s')
end
return found
""")

# KEYS: the identity marker, then order or RMA hashes.
# ARGV: generation, ttl seconds, then per key: source partition, mark, state.
# A key is written unless it holds a state from the same source partition that is not
# older: a zombie translator finishing a batch after a rebalance must not roll a newer
# state back. Returns LOST, or how many were written.
SAVE_STATES: Final = _lua("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local written = 0
for i = 2, #KEYS do
  local a = 3 + (i - 2) * 3
  local src = redis.call('HGET', KEYS[i], '$src')
  local skip = false
  if src == ARGV[a] then
    local mark = redis.call('HGET', KEYS[i], '$m')
    skip = mark and mark >= ARGV[a + 1]
  end
  if not skip then
    redis.call('HSET', KEYS[i], '$src', ARGV[a], '$m', ARGV[a + 1], '$s', ARGV[a + 2])
    redis.call('EXPIRE', KEYS[i], ARGV[2])
    written = written + 1
  end
end
return written
""")

# One SCAN page and the served form of each key in it, in one call: the client neither
# sends the keys back nor pays redis-py's per-command cost for each. ARGV: cursor, MATCH
# pattern, COUNT. Returns {next cursor, values}. SCAN is per server, as this script is.
READ_SERVED_PAGE: Final = _lua("""
local page = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local values = {}
for i, key in ipairs(page[2]) do
  values[i] = redis.call('HGET', key, '$srv')
end
return {page[1], values}
""")

# KEYS[1]: the workers sorted set. ARGV: worker id, seconds after which a beat is stale.
# Scores are Redis's own clock, so workers on hosts with skewed clocks agree.
BEAT: Final = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * tonumber(ARGV[2]))
return now
"""

# KEYS[1]: the workers sorted set. ARGV: seconds a beat stays fresh. Returns live worker ids.
LIVE_WORKERS: Final = """
local now = tonumber(redis.call('TIME')[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""

# KEYS[1]: the rebuild lock. ARGV: owner, ttl ms. Extends the lock if the owner holds it.
RENEW_LOCK: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1]: the rebuild lock. ARGV: owner. Deletes the lock if the owner holds it.
RELEASE_LOCK: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
