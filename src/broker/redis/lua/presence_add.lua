-- Adds or refreshes sessions in a room (after sweeping expired ones).
-- ARGV[1] ttl ms  ARGV[2] room channel  ARGV[3..] member, user, member, user, ...
-- The keys live twice the ttl, so that a sweep finds expired members before the keys vanish.
local ttl, channel = tonumber(ARGV[1]), ARGV[2]
sweep(channel)
for i = 3, #ARGV, 2 do
  local member, user = ARGV[i], ARGV[i + 1]
  if redis.call('ZADD', pz, now + ttl, member) == 1 then
    redis.call('HSET', pm, member, user)
    if redis.call('HINCRBY', pu, user, 1) == 1 then
      redis.call('PUBLISH', channel, 'j' .. user)
    end
  end
end
extend(pz, 2 * ttl)
extend(pm, 2 * ttl)
extend(pu, 2 * ttl)
return 0
