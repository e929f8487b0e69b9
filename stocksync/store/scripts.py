"""Every Lua script of the store, written with the layout's field names.

The scripts of the model are generic (compare, read, write); no domain logic
lives in them. The hold scripts are the exception, by design: a hold is decided
where the SKU's figure is, in one atomic call (see :mod:`stocksync.store.holds`).
Each one that reads or writes the model first compares the identity marker
with the generation the caller is bound to, in the same call, so nothing is
read from or written over a model Redis has lost.
"""

from __future__ import annotations

from typing import Final

from stocksync.store.layout import (
    CORRELATION_FIELD,
    HELD_FIELD,
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
    "CONVERT_HOLD",
    "CREATE_HOLD",
    "EXTEND_HOLD",
    "GET_HOLD",
    "LIVE_WORKERS",
    "LOAD_POSITIONS",
    "LOAD_STATES",
    "LOST",
    "READ_HELD",
    "READ_HELD_PAGE",
    "READ_SERVED_PAGE",
    "RELEASE_HOLD",
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
        ("$held", HELD_FIELD),
        ("$cid", CORRELATION_FIELD),
    ):
        text = text.replace(f"'{name}'", f"'{value}'")
    assert "'$" not in text, text
    return text


# Lua helpers of every script that reads or changes a SKU's held hash (the hold scripts,
# WRITE_BATCH's conversions, the sharded ones). Layout (see store.holds): v hold version,
# h:{hold_id} lines, t:{channel} the sum of qty of the hash's lines on that channel, x the
# hold version the sums and the expiry index were last made exact at; the index is a
# sorted set of the hash's hold ids by expiry, in the hash's slot. A change touches only
# the lines it changes and the expired ones (taken from the index), whatever the number
# of lines: a hot SKU costs a grant the same with thousands of holds as with none.
_HOLD_PRELUDE: Final = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The expiry index of a held hash (Keys.held_expiry): ':held-exp:' for its ':held:'.
-- Namespaces hold no braces, so the SKU's hash tag is the key's first brace.
local function index_of(key)
  local b = string.find(key, '{', 1, true)
  return string.sub(key, 1, b - 7) .. ':held-exp:' .. string.sub(key, b)
end
-- A held hash opened for reading or changing: its index key and hold version. A hash
-- whose x is not its v was written without the sums and index (before they existed, or
-- by a process of that code during an upgrade): they are built here from its lines.
local function open_held(key)
  local zkey = index_of(key)
  local f = redis.call('HMGET', key, 'v', 'x')
  if f[2] and f[1] == f[2] then return zkey, tonumber(f[1]) end
  local hv = tonumber(f[1] or '0')
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return zkey, 0 end
  redis.call('DEL', zkey)
  local totals, stale = {}, {}
  for i = 1, #flat, 2 do
    local field = flat[i]
    local kind = string.sub(field, 1, 2)
    if kind == 'h:' then
      local l = cmsgpack.unpack(flat[i + 1])
      redis.call('ZADD', zkey, l[3], string.sub(field, 3))
      totals[l[1]] = (totals[l[1]] or 0) + l[2]
    elseif kind == 't:' then
      stale[#stale + 1] = field
    end
  end
  for _, field in ipairs(stale) do redis.call('HDEL', key, field) end
  for channel, qty in pairs(totals) do redis.call('HSET', key, 't:' .. channel, qty) end
  redis.call('HSET', key, 'v', hv, 'x', hv)
  return zkey, hv
end
-- What the hash's lines hold on `channel` (expired ones too until pruned).
local function total(key, channel)
  return tonumber(redis.call('HGET', key, 't:' .. channel) or '0')
end
-- Delete one line, keeping sum and index exact; whether it was there.
local function remove_line(key, zkey, hold_id)
  local raw = redis.call('HGET', key, 'h:' .. hold_id)
  if not raw then return false end
  local l = cmsgpack.unpack(raw)
  redis.call('HINCRBY', key, 't:' .. l[1], -l[2])
  redis.call('HDEL', key, 'h:' .. hold_id)
  redis.call('ZREM', zkey, hold_id)
  return true
end
-- Delete the lines expired by `now` (only those: from the index); their hold ids.
local function prune(key, zkey, now)
  local ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', now)
  local removed = {}
  for _, id in ipairs(ids) do
    if remove_line(key, zkey, id) then removed[#removed + 1] = id end
  end
  return removed
end
-- Add a line (a hold id the hash does not have); the line as a change carries it.
local function add_line(key, zkey, hold_id, channel, qty, exp)
  redis.call('HSET', key, 'h:' .. hold_id, cmsgpack.pack({channel, qty, exp}))
  redis.call('HINCRBY', key, 't:' .. channel, qty)
  redis.call('ZADD', zkey, exp, hold_id)
  return {hold_id, channel, qty, exp}
end
-- One line as {hold_id, channel, qty, exp}, or nil.
local function line_of(key, hold_id)
  local raw = redis.call('HGET', key, 'h:' .. hold_id)
  if not raw then return nil end
  local l = cmsgpack.unpack(raw)
  return {hold_id, l[1], l[2], l[3]}
end
-- Move the expiry of hold_id's line to `exp`; the line as a change carries it, or nil.
local function move_expiry(key, zkey, hold_id, exp)
  local l = line_of(key, hold_id)
  if not l then return nil end
  l[4] = exp
  redis.call('HSET', key, 'h:' .. hold_id, cmsgpack.pack({l[2], l[3], exp}))
  redis.call('ZADD', zkey, exp, hold_id)
  return l
end
-- Count `changes` on the hold version (sums and index exact at it); the change as a
-- change-stream field value (codecs.holds.HeldDelta): [before, after, lines added or
-- updated, hold ids removed].
local function delta(key, hv, changes, upserts, removed)
  local v = hv + changes
  redis.call('HSET', key, 'v', v, 'x', v)
  return cmsgpack.pack({hv, v, upserts, removed})
end
local function publish(key, stream, maxlen, sku, hv, changes, upserts, removed)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
             'sku', sku, 'held', delta(key, hv, changes, upserts, removed))
end
-- Prune `key`, then delete hold_id's line; publish if anything changed; whether it had one.
-- With `exp` (and `channel`), only a line of that expiry (and channel) is deleted: the
-- lines of one try of a hold, not those a later try with that hold_id granted since.
local function drop_line(key, stream, maxlen, sku, hold_id, now, exp, channel)
  local zkey, hv = open_held(key)
  local removed = prune(key, zkey, now)
  local had = false
  local l = exp and line_of(key, hold_id)
  if not exp or (l and l[4] == exp and (not channel or l[2] == channel)) then
    had = remove_line(key, zkey, hold_id)
  end
  if had then removed[#removed + 1] = hold_id end
  if #removed > 0 then publish(key, stream, maxlen, sku, hv, #removed, {}, removed) end
  return had
end
-- Prune `key`, then move hold_id's line's expiry; publish if anything changed.
local function extend_line(key, stream, maxlen, sku, hold_id, exp, now)
  local zkey, hv = open_held(key)
  local removed = prune(key, zkey, now)
  local l = move_expiry(key, zkey, hold_id, exp)
  local upserts = {}
  if l then upserts[1] = l end
  if #removed + #upserts > 0 then
    publish(key, stream, maxlen, sku, hv, #removed + #upserts, upserts, removed)
  end
end
"""

# KEYS: n SKU hashes, the change stream, the identity marker, then the held hash of
# each SKU with conversions, in order.
# ARGV: n, maxlen, generation, announce (1: append change entries, 0: not), then per SKU:
# expected version, new version, position, served form, sku, checkout holds it converts
# ('' for none, else comma-separated ids), correlation id of its last event ('' for none).
# Converting deletes the holds' lines of the SKU
# in this call and puts that change of its lines in its change entry, so the order's
# reservation starts to count in the same step in which the held quantity stops.
# Returns LOST, or the (1-based) indexes of SKUs whose version did not match (none written).
WRITE_BATCH: Final = _lua(_HOLD_PRELUDE + """
local function convert_lines(key, ids, now)
  local zkey, hv = open_held(key)
  local removed = prune(key, zkey, now)
  for id in string.gmatch(ids, '[^,]+') do
    if remove_line(key, zkey, id) then removed[#removed + 1] = id end
  end
  if #removed == 0 then return false end
  return delta(key, hv, #removed, {}, removed)
end

local n = tonumber(ARGV[1])
if redis.call('GET', KEYS[n + 2]) ~= ARGV[3] then
  return -1
end
local conflicts = {}
for i = 1, n do
  local cur = redis.call('HGET', KEYS[i], '$v') or '0'
  if cur ~= ARGV[5 + (i - 1) * 7] then
    conflicts[#conflicts + 1] = i
  end
end
if #conflicts > 0 then
  return conflicts
end
local stream = KEYS[n + 1]
local announce = ARGV[4] == '1'
local held_key = n + 2
local now = nil
for i = 1, n do
  local a = 5 + (i - 1) * 7
  redis.call('HSET', KEYS[i], '$v', ARGV[a + 1], '$pos', ARGV[a + 2], '$srv', ARGV[a + 3])
  local snap = false
  if ARGV[a + 5] ~= '' then
    held_key = held_key + 1
    now = now or now_ms()
    snap = convert_lines(KEYS[held_key], ARGV[a + 5], now)
  end
  if snap then
    local entry = {'XADD', stream, 'MAXLEN', '~', ARGV[2], '*',
                   '$sku', ARGV[a + 4], '$v', ARGV[a + 1], '$srv', ARGV[a + 3],
                   '$held', snap}
    if ARGV[a + 6] ~= '' then
      entry[#entry + 1] = '$cid'
      entry[#entry + 1] = ARGV[a + 6]
    end
    redis.call(unpack(entry))
  elseif announce then
    -- The common entry, without a table and unpack per SKU.
    if ARGV[a + 6] ~= '' then
      redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], '*', '$sku', ARGV[a + 4],
                 '$v', ARGV[a + 1], '$srv', ARGV[a + 3], '$cid', ARGV[a + 6])
    else
      redis.call('XADD', stream, 'MAXLEN', '~', ARGV[2], '*', '$sku', ARGV[a + 4],
                 '$v', ARGV[a + 1], '$srv', ARGV[a + 3])
    end
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

# KEYS[1]: the generation pointer. ARGV: the generation it must name ('' for none), the new
# one. Sets the pointer if it still names the first; returns 1, or what it names instead
# (switch_to on a cluster, where a WATCH transaction is not available).
SWITCH_POINTER: Final = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then
  return current or false
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
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


# The channel's pre-hold figure read from a SKU's served form (the grant scripts).
_PRE_AVAILABLE: Final = """
-- A msgpack item's header at byte i of s: kind ('int', 'str' for str and bin, 'arr'),
-- its value or length, and where what follows the header starts. Redis's cmsgpack
-- cannot read msgpack bin, which the served form holds, so the figure is read here.
local function mp_uint(s, i, n)
  local v = 0
  for k = 0, n - 1 do v = v * 256 + string.byte(s, i + k) end
  return v
end
local function mp(s, i)
  local b = string.byte(s, i)
  if b < 0x80 then return 'int', b, i + 1 end
  if b >= 0xe0 then return 'int', b - 256, i + 1 end
  if b >= 0xa0 and b <= 0xbf then return 'str', b - 0xa0, i + 1 end
  if b >= 0x90 and b <= 0x9f then return 'arr', b - 0x90, i + 1 end
  if b == 0xcc then return 'int', mp_uint(s, i + 1, 1), i + 2 end
  if b == 0xcd then return 'int', mp_uint(s, i + 1, 2), i + 3 end
  if b == 0xce then return 'int', mp_uint(s, i + 1, 4), i + 5 end
  if b == 0xcf then return 'int', mp_uint(s, i + 1, 8), i + 9 end
  if b == 0xd9 or b == 0xc4 then return 'str', mp_uint(s, i + 1, 1), i + 2 end
  if b == 0xda or b == 0xc5 then return 'str', mp_uint(s, i + 1, 2), i + 3 end
  if b == 0xdb or b == 0xc6 then return 'str', mp_uint(s, i + 1, 4), i + 5 end
  if b == 0xdc then return 'arr', mp_uint(s, i + 1, 2), i + 3 end
  if b == 0xdd then return 'arr', mp_uint(s, i + 1, 4), i + 5 end
  error('unexpected msgpack byte ' .. b .. ' in a served form')
end
-- The channel's pre-hold available figure, from the SKU's served form (codecs.projections
-- Served: [sku, version, [[channel, available, document], ...], detail]); 0 if none.
local function pre_available(key, channel)
  local srv = redis.call('HGET', key, '$srv')
  if not srv then return 0 end
  local _, n, i = mp(srv, 1)
  _, n, i = mp(srv, i)
  i = i + n
  _, n, i = mp(srv, i)
  local count
  _, count, i = mp(srv, i)
  for _ = 1, count do
    _, n, i = mp(srv, i)
    _, n, i = mp(srv, i)
    local name = string.sub(srv, i, i + n - 1)
    local available
    _, available, i = mp(srv, i + n)
    _, n, i = mp(srv, i)
    i = i + n
    if name == channel then return available end
  end
  return 0
end

"""


# KEYS: hold, stream, then per line: SKU hash (live), held hash (base).
# ARGV: fp, channel, ttl ms, partial, memory ms, maxlen, hold_id, n, then per line: sku, qty.
# Returns {'conflict', now} | {'exists', now, st, exp, lines, ch} | {'short', now, avail...}
#       | {'created', now, st, exp, lines, ch}
CREATE_HOLD: Final = _lua(_HOLD_PRELUDE + _PRE_AVAILABLE + """
local now = now_ms()
local hold = KEYS[1]
local fp = redis.call('HGET', hold, 'fp')
if fp then
  if fp ~= ARGV[1] then return {'conflict', now} end
  local found = redis.call('HMGET', hold, 'st', 'exp', 'lines', 'ch')
  return {'exists', now, found[1], found[2], found[3], found[4]}
end
local channel, partial, maxlen, hold_id = ARGV[2], ARGV[4] == '1', ARGV[6], ARGV[7]
local n = tonumber(ARGV[8])
local exp = now + tonumber(ARGV[3])
local state, grants, avails, short = {}, {}, {}, false
for i = 1, n do
  local key, qty = KEYS[2 + 2 * i], tonumber(ARGV[8 + 2 * i])
  local zkey, hv = open_held(key)
  local removed = prune(key, zkey, now)
  local avail = pre_available(KEYS[1 + 2 * i], channel) - total(key, channel)
  if avail < 0 then avail = 0 end
  local g = qty
  if avail < qty then
    if partial then g = avail else g = 0; short = true end
  end
  state[i], grants[i], avails[i] = {zkey, hv, removed}, g, avail
end
local full = true
for i = 1, n do
  local key, sku, qty = KEYS[2 + 2 * i], ARGV[7 + 2 * i], tonumber(ARGV[8 + 2 * i])
  local zkey, hv, removed = state[i][1], state[i][2], state[i][3]
  if not short and grants[i] > 0 then
    local line = add_line(key, zkey, hold_id, channel, grants[i], exp)
    publish(key, KEYS[2], maxlen, sku, hv, #removed + 1, {line}, removed)
  elseif #removed > 0 then
    publish(key, KEYS[2], maxlen, sku, hv, #removed, {}, removed)
  end
  if grants[i] < qty then full = false end
end
if short then
  local reply = {'short', now}
  for i = 1, n do reply[#reply + 1] = avails[i] end
  return reply
end
local stored = {}
for i = 1, n do stored[i] = {ARGV[7 + 2 * i], tonumber(ARGV[8 + 2 * i]), grants[i]} end
local st = 'held'
if not full then st = 'partial' end
local packed = cmsgpack.pack(stored)
redis.call('HSET', hold, 'fp', ARGV[1], 'ch', channel, 'st', st, 'exp', exp, 'lines', packed)
redis.call('PEXPIREAT', hold, exp + tonumber(ARGV[5]))
return {'created', now, st, tostring(exp), packed, channel}
""")

# KEYS: hold. Returns {now, st, exp, lines, ch} or {now} when unknown.
GET_HOLD: Final = _lua(_HOLD_PRELUDE + """
local now = now_ms()
local f = redis.call('HMGET', KEYS[1], 'st', 'exp', 'lines', 'ch')
if not f[1] then return {now} end
return {now, f[1], f[2], f[3], f[4]}
""")

# KEYS: hold, stream, then the held hash of each SKU of the hold.
# ARGV: memory ms, maxlen, hold_id, then the SKUs. Ends an active hold as released.
# Returns {now, st, exp, lines, ch} (st as it is after the call) or {now} when unknown.
RELEASE_HOLD: Final = _lua(_HOLD_PRELUDE + """
local now = now_ms()
local hold = KEYS[1]
local f = redis.call('HMGET', hold, 'st', 'exp', 'lines', 'ch')
if not f[1] then return {now} end
if (f[1] == 'held' or f[1] == 'partial') and tonumber(f[2]) > now then
  redis.call('HSET', hold, 'st', 'released', 'end', now)
  redis.call('PEXPIRE', hold, ARGV[1])
  f[1] = 'released'
  for i = 3, #KEYS do
    drop_line(KEYS[i], KEYS[2], ARGV[2], ARGV[1 + i], ARGV[3], now)
  end
end
return {now, f[1], f[2], f[3], f[4]}
""")

# KEYS: hold, stream, then the held hash of each SKU of the hold.
# ARGV: ttl ms, memory ms, maxlen, hold_id, then the SKUs.
# Returns {'ended' | 'extended', now, st, exp, lines, ch} or {'unknown', now}.
EXTEND_HOLD: Final = _lua(_HOLD_PRELUDE + """
local now = now_ms()
local hold = KEYS[1]
local f = redis.call('HMGET', hold, 'st', 'exp', 'lines', 'ch')
if not f[1] then return {'unknown', now} end
if not ((f[1] == 'held' or f[1] == 'partial') and tonumber(f[2]) > now) then
  return {'ended', now, f[1], f[2], f[3], f[4]}
end
local exp = now + tonumber(ARGV[1])
redis.call('HSET', hold, 'exp', exp)
redis.call('PEXPIREAT', hold, exp + tonumber(ARGV[2]))
for i = 3, #KEYS do
  extend_line(KEYS[i], KEYS[2], ARGV[3], ARGV[2 + i], ARGV[4], exp, now)
end
return {'extended', now, f[1], tostring(exp), f[3], f[4]}
""")

# KEYS: hold, stream, then the held hash of each SKU of the hold that the order lacks.
# ARGV: order_id, memory ms, maxlen, hold_id, then those SKUs.
# Converts an active hold (or one this order converted already): releases the listed
# SKUs and returns {1, lines}; else {0}. The applier deletes the other lines.
CONVERT_HOLD: Final = _lua(_HOLD_PRELUDE + """
local now = now_ms()
local hold = KEYS[1]
local f = redis.call('HMGET', hold, 'st', 'exp', 'lines', 'ord')
if not f[1] then return {0} end
local active = (f[1] == 'held' or f[1] == 'partial') and tonumber(f[2]) > now
if not active and not (f[1] == 'converted' and f[4] == ARGV[1]) then return {0} end
if active then
  redis.call('HSET', hold, 'st', 'converted', 'end', now, 'ord', ARGV[1])
  redis.call('PEXPIRE', hold, ARGV[2])
end
for i = 3, #KEYS do
  drop_line(KEYS[i], KEYS[2], ARGV[3], ARGV[2 + i], ARGV[4], now)
end
return {1, f[3]}
""")

# A held hash's snapshot (codecs.holds.HeldSnapshot, msgpack): its hold version and every
# line, expired ones too; only the v and h: fields are read. Loads and re-reads share it.
_HELD_SNAPSHOT: Final = """
local function held_snapshot(key)
  local flat = redis.call('HGETALL', key)
  local hv, lines = 0, {}
  for j = 1, #flat, 2 do
    local f = flat[j]
    if f == 'v' then
      hv = tonumber(flat[j + 1])
    elseif string.sub(f, 1, 2) == 'h:' then
      local l = cmsgpack.unpack(flat[j + 1])
      lines[#lines + 1] = {string.sub(f, 3), l[1], l[2], l[3]}
    end
  end
  return cmsgpack.pack({hv, lines})
end
"""

# One SCAN page of held hashes: per key, the key and its snapshot (hold version and
# every line, expired ones too: a replica counts those by its clock, as followers do).
# Only the v and h: fields are read, so hashes with or without sums and index load alike.
# ARGV: cursor, MATCH pattern, COUNT. Returns {next cursor, {key, snapshot, ...}}.
READ_HELD_PAGE: Final = _lua(_HELD_SNAPSHOT + """
local page = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3])
local out = {}
for _, key in ipairs(page[2]) do
  out[#out + 1] = key
  out[#out + 1] = held_snapshot(key)
end
return {page[1], out}
""")


# KEYS: one held hash. Its snapshot, as READ_HELD_PAGE gives it: what a replica re-reads
# when it missed a change of that SKU's lines.
READ_HELD: Final = _lua(_HELD_SNAPSHOT + """
return held_snapshot(KEYS[1])
""")


# --- checkout holds on a Redis Cluster (see stocksync.store.sharded_holds) -------------
# A script may touch one slot only, so a hold is decided in steps: its record (slot of its
# hold_id), then its lines one shard group at a time (each group's SKU hashes, held hashes
# and change stream share the shard's slot), then its record again.

# KEYS: hold. ARGV: fp, channel, ttl ms, partial, memory ms, lines (msgpack, held 0), lease ms.
# Claims the hold_id for a new hold ('pending' until finished, its creator's for the lease),
# or finds it; a pending hold whose lease ran out (its creator died) is resumed.
# Returns {'conflict', now} | {'exists', now, st, exp, lines, ch} | {'busy', now}
#       | {'begun' | 'resumed', now, exp, partial}
SHARDED_HOLD_BEGIN: Final = _lua(_HOLD_PRELUDE + """
local now = now_ms()
local hold = KEYS[1]
local f = redis.call('HMGET', hold, 'fp', 'st', 'exp', 'lines', 'ch', 'pa', 'ls')
if f[1] and f[2] ~= 'refused' then
  if f[1] ~= ARGV[1] then return {'conflict', now} end
  if f[2] == 'pending' then
    if tonumber(f[7]) > now then return {'busy', now} end
    redis.call('HSET', hold, 'ls', now + tonumber(ARGV[7]))
    return {'resumed', now, f[3], f[6]}
  end
  return {'exists', now, f[2], f[3], f[4], f[5]}
end
local exp = now + tonumber(ARGV[3])
redis.call('DEL', hold)
redis.call('HSET', hold, 'fp', ARGV[1], 'ch', ARGV[2], 'st', 'pending', 'exp', exp,
           'lines', ARGV[6], 'pa', ARGV[4], 'ls', now + tonumber(ARGV[7]))
redis.call('PEXPIREAT', hold, exp + tonumber(ARGV[5]))
return {'begun', now, tostring(exp), ARGV[4]}
""")

# KEYS: the shard's change stream, then per line: SKU hash (live), held hash (base), then
# (optional) the hold's sealed key of the shard.
# ARGV: hold_id, channel, exp, partial, maxlen, n, then per line: sku, qty.
# Grants the lines of one shard group (a line this hold has already is kept as it is:
# an earlier try of the same hold, with its expiry; one of another expiry or channel was
# left by an ended try and is replaced). All or nothing within the group unless partial is
# '1'; '2' grants nothing and only tells the figures (the groups after a short one).
# Returns {'granted' | 'short', now, then per line: available before, held}, or
# {'ended', now} when the hold was converted meanwhile (sealed: nothing granted).
SHARDED_HOLD_GRANT: Final = _lua(_HOLD_PRELUDE + _PRE_AVAILABLE + """
local now = now_ms()
local hold_id, channel, exp, partial = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local maxlen, n = ARGV[5], tonumber(ARGV[6])
if #KEYS > 1 + 2 * n and redis.call('EXISTS', KEYS[#KEYS]) == 1 then return {'ended', now} end
local state, grants, avails, short = {}, {}, {}, ARGV[4] == '2'
for i = 1, n do
  local key, qty = KEYS[1 + 2 * i], tonumber(ARGV[6 + 2 * i])
  local zkey, hv = open_held(key)
  local removed = prune(key, zkey, now)
  local held, mine, stale = total(key, channel), nil, false
  local own = line_of(key, hold_id)
  if own then
    if own[2] == channel then held = held - own[3] end
    -- This hold's, granted by an earlier try (a resumed one has the same expiry); else
    -- left by an ended try (a refusal whose undo died): replaced, decided afresh.
    if (own[2] == channel and own[4] == exp) or ARGV[4] == '2' then
      mine = own[3]
    else
      stale = true
    end
  end
  local avail = pre_available(KEYS[2 * i], channel) - held
  if avail < 0 then avail = 0 end
  local g = qty
  if mine then
    g = mine
  elseif avail < qty then
    if partial then g = avail else g = 0; short = true end
  end
  state[i], grants[i], avails[i] = {zkey, hv, removed, mine, stale}, g, avail
end
for i = 1, n do
  local key = KEYS[1 + 2 * i]
  local zkey, hv, removed, mine = state[i][1], state[i][2], state[i][3], state[i][4]
  local upserts = {}
  if state[i][5] then
    remove_line(key, zkey, hold_id)
    removed[#removed + 1] = hold_id
  end
  if not short and grants[i] > 0 and not mine then
    upserts[1] = add_line(key, zkey, hold_id, channel, grants[i], exp)
  end
  if #removed + #upserts > 0 then
    publish(key, KEYS[1], maxlen, ARGV[5 + 2 * i], hv, #removed + #upserts, upserts, removed)
  end
end
local reply = {'granted', now}
if short then reply[1] = 'short' end
for i = 1, n do
  reply[#reply + 1] = avails[i]
  if short then reply[#reply + 1] = 0 else reply[#reply + 1] = grants[i] end
end
return reply
""")

# KEYS: the shard's change stream, then the held hash of each SKU. ARGV: hold_id, maxlen,
# then the SKUs, then (optional) an expiry and a channel. Deletes the hold's lines of these
# SKUs (a release, the SKUs a conversion releases: whatever line the hold has); with the
# expiry (a creator's undo: its try's), only a line of that expiry and channel, so an undo
# landing after a new request with that hold_id granted its own line leaves that line.
# Without them (an older caller) every line of the hold, as before. Returns how many
# lines it deleted.
SHARDED_HOLD_DROP: Final = _lua(_HOLD_PRELUDE + """
local now = now_ms()
local dropped = 0
local exp, channel = tonumber(ARGV[#KEYS + 2]), ARGV[#KEYS + 3]
for i = 2, #KEYS do
  if drop_line(KEYS[i], KEYS[1], ARGV[2], ARGV[1 + i], ARGV[1], now, exp, channel) then
    dropped = dropped + 1
  end
end
return dropped
""")

# KEYS: the shard's change stream, then the held hash of each SKU. ARGV: hold_id, exp,
# maxlen, then the SKUs. Moves the expiry of the hold's lines of these SKUs.
SHARDED_HOLD_EXTEND_LINES: Final = _lua(_HOLD_PRELUDE + """
local now = now_ms()
local exp = tonumber(ARGV[2])
for i = 2, #KEYS do
  extend_line(KEYS[i], KEYS[1], ARGV[3], ARGV[2 + i], ARGV[1], exp, now)
end
return 1
""")

# KEYS: hold. ARGV: fp, status ('held' | 'partial' | 'refused'), lines (msgpack), memory ms,
# then (optional) the lines as granted so far (msgpack; for a refusal: those of the groups
# before the short one).
# Ends the 'pending' state of the hold this request began (converted meanwhile: records
# the lines it granted, ARGV[5] or, without it, ARGV[3] unless refused). Returns {now, st,
# exp, lines, ch, 1 if this call ended it, 1 if the record is this request's (its
# fingerprint: 0 once this try's record was refused and forgotten, and another body claimed
# the hold_id)} as the hold is after the call, or {now} when it is gone.
SHARDED_HOLD_FINISH: Final = _lua(_HOLD_PRELUDE + """
local now = now_ms()
local hold = KEYS[1]
local f = redis.call('HMGET', hold, 'fp', 'st', 'cp')
if not f[1] then return {now} end
local ended = 0
if f[1] == ARGV[1] and f[2] == 'pending' then
  redis.call('HSET', hold, 'st', ARGV[2], 'lines', ARGV[3])
  if ARGV[2] == 'refused' then redis.call('PEXPIRE', hold, ARGV[4]) end
  ended = 1
elseif f[1] == ARGV[1] and f[2] == 'converted' and f[3] == '1' then
  local granted = ARGV[5]
  if not granted and ARGV[2] ~= 'refused' then granted = ARGV[3] end
  if granted then redis.call('HSET', hold, 'lines', granted) end
end
local g = redis.call('HMGET', hold, 'st', 'exp', 'lines', 'ch')
local same = 0
if f[1] == ARGV[1] then same = 1 end
return {now, g[1], g[2], g[3], g[4], ended, same}
""")

# KEYS: hold. ARGV: 'released' | 'converted' | 'extend', memory ms, order_id or new exp.
# Ends an active hold as released (also one still being decided: its creator then undoes
# what it granted) or converted (also one still being decided: marked cp, see
# store.sharded_holds; converted again by the same order: as it is), or moves its expiry.
# Returns {changed (1/0), now, st, exp, lines, ch, cp ('1': converted while being
# decided)} or {0, now}.
SHARDED_HOLD_SET: Final = _lua(_HOLD_PRELUDE + """
local now = now_ms()
local hold = KEYS[1]
local f = redis.call('HMGET', hold, 'st', 'exp', 'lines', 'ch', 'ord', 'cp')
if not f[1] or f[1] == 'refused' then return {0, now} end
local active = (f[1] == 'held' or f[1] == 'partial') and tonumber(f[2]) > now
local pending = f[1] == 'pending' and tonumber(f[2]) > now
local changed = 0
if active and ARGV[1] == 'extend' then
  redis.call('HSET', hold, 'exp', ARGV[3])
  redis.call('PEXPIREAT', hold, tonumber(ARGV[3]) + tonumber(ARGV[2]))
  f[2], changed = ARGV[3], 1
elseif ARGV[1] == 'released' and (active or f[1] == 'pending') then
  redis.call('HSET', hold, 'st', 'released', 'end', now)
  redis.call('PEXPIRE', hold, ARGV[2])
  f[1], changed = 'released', 1
elseif ARGV[1] == 'converted'
    and (active or pending or (f[1] == 'converted' and f[5] == ARGV[3])) then
  if active or pending then
    redis.call('HSET', hold, 'st', 'converted', 'end', now, 'ord', ARGV[3])
    if pending then
      redis.call('HSET', hold, 'cp', '1')
      f[6] = '1'
    end
    redis.call('PEXPIRE', hold, ARGV[2])
  end
  f[1], changed = 'converted', 1
end
return {changed, now, f[1], f[2], f[3], f[4], f[6] or '0'}
""")

# KEYS: the hold's sealed key of one shard. ARGV: the hold's expiry (ms since the epoch).
# A hold converted while being decided: its creator's grants in this shard are refused
# from now on (SHARDED_HOLD_GRANT answers 'ended'). Returns 1.
SHARDED_HOLD_SEAL: Final = _lua(_HOLD_PRELUDE + """
if tonumber(ARGV[1]) > now_ms() then redis.call('SET', KEYS[1], '1', 'PXAT', ARGV[1]) end
return 1
""")
