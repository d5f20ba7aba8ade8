-- Publishes on a user's channel (a direct message or a kick for the nodes that hold its
-- sessions) and counts the user's sessions registered on other nodes.
-- KEYS[1] the user's sessions (sorted set member -> expiry ms)
-- ARGV[1] the user's channel  ARGV[2] this node's member prefix  ARGV[3] payload
local key, prefix = KEYS[1], ARGV[2]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local elsewhere = 0
local members = redis.call('ZRANGE', key, 0, -1)
for i = 1, #members do
  if string.sub(members[i], 1, #prefix) ~= prefix then elsewhere = elsewhere + 1 end
end
if elsewhere > 0 then redis.call('PUBLISH', ARGV[1], ARGV[3]) end
return elsewhere
