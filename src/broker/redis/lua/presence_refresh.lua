-- Refreshes sessions in a room (after sweeping expired ones), never adding one: a session
-- released while the refresh was on its way stays released.
-- ARGV[1] ttl ms  ARGV[2] room channel  ARGV[3..] members
-- Returns the members that were not present (the node adds again those it still holds).
local ttl, channel = tonumber(ARGV[1]), ARGV[2]
sweep(channel)
local missing = {}
for i = 3, #ARGV do
  if redis.call('ZADD', pz, 'XX', 'CH', now + ttl, ARGV[i]) == 0
      and not redis.call('ZSCORE', pz, ARGV[i]) then
    missing[#missing + 1] = ARGV[i]
  end
end
extend(pz, 2 * ttl)
extend(pm, 2 * ttl)
extend(pu, 2 * ttl)
return missing
