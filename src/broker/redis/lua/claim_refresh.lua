-- Refreshes sessions of a user, never adding one: a session released while the refresh was
-- on its way stays released.
-- KEYS[1] sorted set member -> expiry (ms): the user's sessions on every node
-- ARGV[1] ttl ms  ARGV[2..] members
-- Returns the members that were not registered (the node claims again those it still holds).
local key, ttl = KEYS[1], tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local missing = {}
for i = 2, #ARGV do
  if redis.call('ZADD', key, 'XX', 'CH', now + ttl, ARGV[i]) == 0
      and not redis.call('ZSCORE', key, ARGV[i]) then
    missing[#missing + 1] = ARGV[i]
  end
end
if redis.call('PTTL', key) < 2 * ttl then redis.call('PEXPIRE', key, 2 * ttl) end
return missing
