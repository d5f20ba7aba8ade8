-- Restarts a room's stream that went back: a node fanned out seq ARGV[2] in epoch ARGV[1], but
-- the store holds less (it was restored from an older snapshot, or lost its last writes).
-- Deleting the position and the history makes the next read or publish start a new epoch.
-- KEYS[1] meta hash  KEYS[2] history stream. Returns 1 when it restarted the stream.
local meta, hist = KEYS[1], KEYS[2]
if redis.call('HGET', meta, 'e') == ARGV[1]
    and tonumber(redis.call('HGET', meta, 's') or '0') < tonumber(ARGV[2]) then
  redis.call('DEL', meta, hist)
  return 1
end
return 0
