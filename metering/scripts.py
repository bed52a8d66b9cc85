"""Lua scripts run atomically inside Redis: each hot-path decision is one script call.

Holds: every successful reservation records a hold (hash ``holds`` + sorted set ``holdq`` by
time) naming what to give back. Commit deletes the hold and appends the usage event in one
script; release and the sweeper (holds older than the longest call) refund it in one script.
So a reservation is either committed as exactly one usage event or refunded, never both.
"""

# Refund one hold, shared by RELEASE and SWEEP. Hold value: kind|price|counter|credit|day|month
# (kind trial or demo: counter is the counter to give the call back to), and for a lease
# (lease.py: a paid hold of many calls) |leased, the account's counter of credit held by leases
_REFUND = """
local function refund(holds, holdq, rid)
  local meta = redis.call('HGET', holds, rid)
  if not meta then return 0 end
  local f = {}
  for part in string.gmatch(meta, '([^|]*)|?') do f[#f + 1] = part end
  local price = tonumber(f[2])
  if f[1] ~= 'paid' then  -- a trial or demo call gives its counter back
    redis.call('DECR', f[3])
  else
    redis.call('INCRBY', f[4], price)
    if f[5] ~= '' then redis.call('DECRBY', f[5], price) end
    if f[6] ~= '' then redis.call('DECRBY', f[6], price) end
    if f[7] and f[7] ~= '' then redis.call('DECRBY', f[7], price) end  -- a lease's rest
  end
  redis.call('HDEL', holds, rid)
  redis.call('ZREM', holdq, rid)
  return 1
end
"""

# GCRA rate limits, shared by RESERVE and THROTTLE: a bucket allows `burst` calls at once,
# refilled at `rps`. -> ok, limit, left, reset ms, retry-after ms, the new TAT to store if ok
_GCRA = """
local function gcra(key, rps, burst, now)
  if rps <= 0 then return true, -1, -1, 0, 0, nil end
  local interval = 1000.0 / rps
  local tau = interval * burst
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  if new_tat - tau > now then
    return false, burst, 0, math.ceil(tat - now), math.ceil(new_tat - tau - now), nil
  end
  local left = math.floor((tau - (new_tat - now)) / interval)
  return true, burst, left, math.ceil(new_tat - now), 0, new_tat
end
"""

# KEYS: 1 a throttle's bucket; ARGV: 1 rps, 2 burst, 3 cost (calls to take: 0 only looks)
# -> {allowed 0/1, retry-after ms}. Off the paid path: logins, sign-ups, demo use.
THROTTLE = _GCRA + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[3])
local ok, _, _, _, wait, tat = gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), now)
if not ok then return {0, wait} end
if cost > 0 and tat then
  local interval = 1000.0 / tonumber(ARGV[1])
  tat = tat + interval * (cost - 1)
  redis.call('SET', KEYS[1], tat, 'PX', math.ceil(tat - now) + 1000)
end
return {1, 0}
"""

# KEYS: 1 hydrated marker, 2 trial-used, 3 credit, 4 key bucket, 5 key x listing bucket,
#       6 key spend today, 7 key spend this month, 8 holds, 9 holdq
# ARGV: 1 trial limit, 2 price, 3 key rps, 4 key burst, 5 listing rps, 6 listing burst,
#       7 day cap (-1 none), 8 month cap (-1 none), 9 request id, 10 credit line (how far
#       below zero a postpaid account may go between billing syncs; 0 for prepaid)
# -> {status, trial_left, credits, rl_limit, rl_remaining, rl_reset_ms, retry_after_ms}
# status: -1 needs hydration, 0 insufficient credit, 1 trial, 2 paid, 3 rate limited,
#         4 daily spend cap, 5 monthly spend cap
RESERVE = _GCRA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0, 0, 0, 0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local ok1, lim1, left1, reset1, wait1, tat1 = gcra(KEYS[4], tonumber(ARGV[3]), tonumber(ARGV[4]),
                                                   now)
local ok2, lim2, left2, reset2, wait2, tat2 = gcra(KEYS[5], tonumber(ARGV[5]), tonumber(ARGV[6]),
                                                   now)
-- report the tighter of the two buckets
local limit, left, reset = lim1, left1, reset1
if lim2 >= 0 and (lim1 < 0 or left2 < left1) then limit, left, reset = lim2, left2, reset2 end
if not (ok1 and ok2) then
  return {3, 0, 0, limit, 0, reset, math.max(wait1, wait2)}
end
if tat1 then redis.call('SET', KEYS[4], tat1, 'PX', math.ceil(tat1 - now) + 1000) end
if tat2 then redis.call('SET', KEYS[5], tat2, 'PX', math.ceil(tat2 - now) + 1000) end

local trial_limit = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local credits = tonumber(redis.call('GET', KEYS[3]) or '0')
local rid = ARGV[9]
if used < trial_limit then
  redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[8], rid, 'trial|0|' .. KEYS[2] .. '|||')
  redis.call('ZADD', KEYS[9], now, rid)
  return {1, trial_limit - used - 1, credits, limit, left, reset, 0}
end
local price = tonumber(ARGV[2])
local day_cap, month_cap = tonumber(ARGV[7]), tonumber(ARGV[8])
if day_cap >= 0 and tonumber(redis.call('GET', KEYS[6]) or '0') + price > day_cap then
  return {4, 0, credits, limit, left, reset, 0}
end
if month_cap >= 0 and tonumber(redis.call('GET', KEYS[7]) or '0') + price > month_cap then
  return {5, 0, credits, limit, left, reset, 0}
end
if credits + tonumber(ARGV[10]) < price then return {0, 0, credits, limit, left, reset, 0} end
credits = redis.call('DECRBY', KEYS[3], price)
redis.call('INCRBY', KEYS[6], price)
redis.call('PEXPIRE', KEYS[6], 172800000)
redis.call('INCRBY', KEYS[7], price)
redis.call('PEXPIRE', KEYS[7], 3024000000)
redis.call('HSET', KEYS[8], rid,
  'paid|' .. price .. '|' .. KEYS[2] .. '|' .. KEYS[3] .. '|' .. KEYS[6] .. '|' .. KEYS[7])
redis.call('ZADD', KEYS[9], now, rid)
return {2, 0, credits, limit, left, reset, 0}
"""

# KEYS: holds, holdq, usage stream; ARGV: request id, then the event's field/value pairs
# -> 1 committed, 0 the hold is gone (released or swept): nothing is recorded
COMMIT = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 2))
return 1
"""

# KEYS: holds, holdq; ARGV: request id -> 1 refunded, 0 nothing held
RELEASE = _REFUND + "return refund(KEYS[1], KEYS[2], ARGV[1])"

# KEYS: holds, holdq; ARGV: holds older than this (ms since epoch), how many at most
SWEEP = _REFUND + """
local n = 0
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])) do
  n = n + refund(KEYS[1], KEYS[2], rid)
end
return n
"""

# Demo calls (demo.py): a visitor's daily quota as a hold, and per-listing slots in flight.
# KEYS: 1 the visitor's demo counter today, 2 holds, 3 holdq; ARGV: 1 daily limit, 2 request id
# -> {allowed 0/1, remaining}
DEMO_RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local limit = tonumber(ARGV[1])
if used >= limit then return {0, 0} end
local t = redis.call('TIME')
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], 172800000)
redis.call('HSET', KEYS[2], ARGV[2], 'demo|0|' .. KEYS[1] .. '|||')
redis.call('ZADD', KEYS[3], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[2])
return {1, limit - used - 1}
"""

# KEYS: 1 an address's demo upload bytes today; ARGV: 1 daily limit, 2 bytes of this upload
# -> {allowed 0/1, bytes used today}
UPLOAD_QUOTA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = tonumber(ARGV[2])
if used + n > tonumber(ARGV[1]) then return {0, used} end
used = redis.call('INCRBY', KEYS[1], n)
redis.call('PEXPIRE', KEYS[1], 172800000)
return {1, used}
"""

# KEYS: the listing's demo calls in flight; ARGV: limit, key lifetime (ms) -> 1 taken, 0 full.
# The lifetime bounds how long a slot of a worker that died stays taken.
DEMO_SLOT_ACQUIRE = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(ARGV[1]) then redis.call('DECR', KEYS[1]) return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
DEMO_SLOT_RELEASE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"""

# KEYS: 1 hydrated marker, 2 credit balance, then trial-used keys, then spend keys
# ARGV: credit balance, then one value per further key
HYDRATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
for i = 3, #KEYS do redis.call('SET', KEYS[i], ARGV[i - 1]) end
redis.call('SET', KEYS[1], '1')
return 1
"""

# KEYS: hydrated marker, credit balance; ARGV: amount -> new balance, or nil if not hydrated
ADD_CREDITS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('INCRBY', KEYS[2], ARGV[1])
"""

# Leases (lease.py): a slice of paid calls for one key and listing, decided in the process.
# KEYS: 1 hydrated marker, 2 trial-used, 3 credit, 4 key bucket, 5 key x listing bucket,
#       6 key spend today, 7 key spend this month, 8 holds, 9 holdq, 10 the account's leased
# ARGV: 1 trial limit, 2 price, 3 key rps, 4 key burst, 5 listing rps, 6 listing burst,
#       7 day cap (-1 none), 8 month cap (-1 none), 9 lease id, 10 credit line, 11 calls wanted
# -> {status, calls granted, credits after, rl_limit, rl_remaining, rl_reset_ms}
# status: -1 needs hydration, 1 a trial call is left (no lease: the call reserves it), 0 no
# call can be leased now (the call reserves, and learns why), 2 granted. The lease is a hold
# of kind paid whose price is its unspent rest: release and the sweeper refund it like any.
LEASE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0, 0, 0, 0} end
if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(ARGV[1]) then
  return {1, 0, 0, 0, 0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[11])
local price = tonumber(ARGV[2])
-- GCRA: k calls fit while tat + k * interval - tau <= now
local function fit(key, rps, burst)
  if rps <= 0 then return -1, 0, 0 end
  local interval = 1000.0 / rps
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  return math.floor((now + interval * burst - tat) / interval), tat, interval
end
local k1, tat1, iv1 = fit(KEYS[4], tonumber(ARGV[3]), tonumber(ARGV[4]))
local k2, tat2, iv2 = fit(KEYS[5], tonumber(ARGV[5]), tonumber(ARGV[6]))
if k1 >= 0 and k1 < n then n = k1 end
if k2 >= 0 and k2 < n then n = k2 end
local credits = tonumber(redis.call('GET', KEYS[3]) or '0')
local afford = math.floor((credits + tonumber(ARGV[10])) / price)
if afford > 1 then afford = math.ceil(afford / 2) end  -- leave credit for other leases
if afford < n then n = afford end
local day_cap, month_cap = tonumber(ARGV[7]), tonumber(ARGV[8])
if day_cap >= 0 then
  local room = math.floor((day_cap - tonumber(redis.call('GET', KEYS[6]) or '0')) / price)
  if room < n then n = room end
end
if month_cap >= 0 then
  local room = math.floor((month_cap - tonumber(redis.call('GET', KEYS[7]) or '0')) / price)
  if room < n then n = room end
end
if n < 1 then return {0, 0, credits, 0, 0, 0} end
local limit, left, reset = -1, -1, 0
if k1 >= 0 then
  local new = tat1 + iv1 * n
  redis.call('SET', KEYS[4], new, 'PX', math.ceil(new - now) + 1000)
  limit, left, reset = tonumber(ARGV[4]), k1 - n, math.ceil(new - now)
end
if k2 >= 0 then
  local new = tat2 + iv2 * n
  redis.call('SET', KEYS[5], new, 'PX', math.ceil(new - now) + 1000)
  if limit < 0 or k2 - n < left then
    limit, left, reset = tonumber(ARGV[6]), k2 - n, math.ceil(new - now)
  end
end
local amount = n * price
credits = redis.call('DECRBY', KEYS[3], amount)
redis.call('INCRBY', KEYS[6], amount)
redis.call('PEXPIRE', KEYS[6], 172800000)
redis.call('INCRBY', KEYS[7], amount)
redis.call('PEXPIRE', KEYS[7], 3024000000)
redis.call('INCRBY', KEYS[10], amount)
redis.call('HSET', KEYS[8], ARGV[9], 'paid|' .. amount .. '||' .. KEYS[3] .. '|' .. KEYS[6] .. '|'
  .. KEYS[7] .. '|' .. KEYS[10])
redis.call('ZADD', KEYS[9], now, ARGV[9])
return {2, n, credits, limit, left, reset}
"""

# Group commit of leased calls: per lease, its calls' usage events as one stream entry (field
# b: events one per line) and their price taken off the lease's rest, atomically; a batch runs
# once (a retry after a lost reply answers the first run's outcome).
# KEYS: holds, holdq, stream, the batch's marker; ARGV: leases L, then per lease: id, amount,
# events -> one 1 (committed) or 0 (the lease is gone: released or swept) per lease
COMMIT_LEASED = """
local done = redis.call('GET', KEYS[4])
if done then
  local out = {}
  for c in string.gmatch(done, '%d') do out[#out + 1] = tonumber(c) end
  return out
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 0, tonumber(ARGV[1]) - 1 do
  local rid, amount, blob = ARGV[2 + 3 * i], tonumber(ARGV[3 + 3 * i]), ARGV[4 + 3 * i]
  local meta = redis.call('HGET', KEYS[1], rid)
  local ok = 0
  if meta then
    local f = {}
    for part in string.gmatch(meta, '([^|]*)|?') do f[#f + 1] = part end
    local rest = tonumber(f[2]) - amount
    if rest >= 0 then
      if f[7] and f[7] ~= '' then redis.call('DECRBY', f[7], amount) end
      if rest == 0 then
        redis.call('HDEL', KEYS[1], rid)
        redis.call('ZREM', KEYS[2], rid)
      else
        redis.call('HSET', KEYS[1], rid, f[1] .. '|' .. rest .. '|' .. f[3] .. '|' .. f[4] .. '|'
          .. f[5] .. '|' .. f[6] .. '|' .. (f[7] or ''))
        redis.call('ZADD', KEYS[2], now, rid)
      end
      redis.call('XADD', KEYS[3], '*', 'b', blob)
      ok = 1
    end
  end
  out[#out + 1] = ok
end
redis.call('SET', KEYS[4], table.concat(out), 'PX', 120000)
return out
"""

# Give back part of a lease's rest (a call was refused while the process held credit in
# leases). KEYS: holds, holdq; ARGV: lease id, amount -> amount given back
SHRINK_LEASE = """
local meta = redis.call('HGET', KEYS[1], ARGV[1])
if not meta then return 0 end
local f = {}
for part in string.gmatch(meta, '([^|]*)|?') do f[#f + 1] = part end
local rest = tonumber(f[2])
local amount = math.min(tonumber(ARGV[2]), rest)
redis.call('INCRBY', f[4], amount)
if f[5] ~= '' then redis.call('DECRBY', f[5], amount) end
if f[6] ~= '' then redis.call('DECRBY', f[6], amount) end
if f[7] and f[7] ~= '' then redis.call('DECRBY', f[7], amount) end
if rest == amount then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], f[1] .. '|' .. (rest - amount) .. '|' .. f[3] .. '|'
    .. f[4] .. '|' .. f[5] .. '|' .. f[6] .. '|' .. (f[7] or ''))
end
return amount
"""
