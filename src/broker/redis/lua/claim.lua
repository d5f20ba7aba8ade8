-- Registers (or refreshes) sessions of a user, within a limit.
-- KEYS[1] sorted set member -> expiry (ms): the user's sessions on every node
-- ARGV[1] ttl ms  ARGV[2] max sessions (0: no limit)  ARGV[3..] members
-- Returns 1, or 0 when a new session would pass the limit (nothing is registered then).
local key, ttl, max = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if max > 0 and #ARGV == 3 and not redis.call('ZSCORE', key, ARGV[3])
    and redis.call('ZCARD', key) >= max then
  return 0
end
for i = 3, #ARGV do redis.call('ZADD', key, now + ttl, ARGV[i]) end
if redis.call('PTTL', key) < 2 * ttl then redis.call('PEXPIRE', key, 2 * ttl) end
return 1
