-- A room's position and the messages after a point, read in one step (creating the room's
-- epoch if it has none, as a publish would).
-- KEYS[1] meta hash  KEYS[2] history stream
-- ARGV[1] since ('' for the position only)  ARGV[2] the epoch of since ('' for the current)
-- ARGV[3] a fresh epoch  ARGV[4] history ttl ms  ARGV[5] meta ttl s
-- Returns {epoch, top, {{seq, frame}, ...}}: the entries after since that are younger than
-- the ttl, when since belongs to the current epoch.
local meta, hist = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[3]
  redis.call('HSET', meta, 'e', epoch)
  redis.call('DEL', hist)
end
local top = tonumber(redis.call('HGET', meta, 's') or '0')
redis.call('EXPIRE', meta, ARGV[5])
local out = {}
if ARGV[1] ~= '' and (ARGV[2] == '' or ARGV[2] == epoch) and tonumber(ARGV[1]) < top then
  local now = redis.call('TIME')
  local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[4])
  local from = string.format('%d', tonumber(ARGV[1]) + 1) .. '-0'
  local entries = redis.call('XRANGE', hist, from, '+')
  for i = 1, #entries do
    local fields = entries[i][2] -- {'t', ms, 'f', frame}
    if tonumber(fields[2]) >= cutoff then
      out[#out + 1] = {tonumber(string.match(entries[i][1], '^(%d+)')), fields[4]}
    end
  end
end
return {epoch, top, out}
