"""Lua scripts run atomically inside Redis: the hot path's one round trip per decision."""

# KEYS: hydrated marker, trial-used counter, credit balance
# ARGV: trial limit, price (micro-units)
# -> {status, trial_remaining, credits}; status -1 needs hydration, 0 insufficient credit,
#    1 reserved a trial call, 2 reserved a paid call.
RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0} end
local limit = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local credits = tonumber(redis.call('GET', KEYS[3]) or '0')
if used < limit then
  redis.call('INCR', KEYS[2])
  return {1, limit - used - 1, credits}
end
local price = tonumber(ARGV[2])
if credits < price then return {0, 0, credits} end
return {2, 0, redis.call('DECRBY', KEYS[3], price)}
"""

# KEYS: hydrated marker, credit balance, then one trial-used key per listing
# ARGV: credit balance, then one trial-used count per listing key
# Sets the account's counters from the ledger unless another caller already did.
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
