-- Shared by the presence scripts (prepended to each). A room's presence is three keys:
-- KEYS[1] sorted set member -> expiry (ms)  KEYS[2] hash member -> user
-- KEYS[3] hash user -> how many of its sessions are present, cluster-wide
-- A member is one session (`<node>-<n>`); a user joins with its first and leaves with its last,
-- and `j<user>` / `l<user>` is published on the room's channel exactly then.
local pz, pm, pu = KEYS[1], KEYS[2], KEYS[3]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function drop(member, channel)
  local user = redis.call('HGET', pm, member)
  redis.call('ZREM', pz, member)
  redis.call('HDEL', pm, member)
  if user and redis.call('HINCRBY', pu, user, -1) <= 0 then
    redis.call('HDEL', pu, user)
    redis.call('PUBLISH', channel, 'l' .. user)
  end
end

-- Members whose node stopped refreshing them (it died) leave.
local function sweep(channel)
  local expired = redis.call('ZRANGEBYSCORE', pz, '-inf', now)
  for i = 1, #expired do drop(expired[i], channel) end
end

-- Never shortens a key's life: every node refreshes with the same ttl.
local function extend(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
