-- Removes sessions from a room. ARGV[1] room channel  ARGV[2..] members. Returns how many were present.
local removed = 0
for i = 2, #ARGV do
  if redis.call('ZSCORE', pz, ARGV[i]) then
    drop(ARGV[i], ARGV[1])
    removed = removed + 1
  end
end
return removed
