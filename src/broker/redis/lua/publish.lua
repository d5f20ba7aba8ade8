-- Sequences one message into a room, atomically: dedupe, epoch, seq, history, publication.
-- A script is not rolled back when it fails half-way, so nothing after HINCRBY may fail: a
-- stream left over from a lost meta hash is deleted when the epoch is created.
-- KEYS[1] meta hash (e = epoch, s = last seq)   KEYS[2] history stream (entry ID = <seq>-0)
-- KEYS[3] dedupe key (only when the message has an id)
-- ARGV[1] room channel  ARGV[2] frame up to the seq digits  ARGV[3] frame after them
-- ARGV[4] history size (0: none)  ARGV[5] history ttl ms  ARGV[6] meta ttl s
-- ARGV[7] a fresh epoch, used if the room has none  ARGV[8] dedupe ttl ms
-- Returns {seq, epoch, duplicate (0 or 1)}.
local meta, hist, dd = KEYS[1], KEYS[2], KEYS[3]
local size, ttl_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local meta_ttl, dd_ttl_ms = tonumber(ARGV[6]), tonumber(ARGV[8])
if dd then
  local prev = redis.call('GET', dd)
  if prev then
    local sep = string.find(prev, ':', 1, true)
    return {tonumber(string.sub(prev, 1, sep - 1)), string.sub(prev, sep + 1), 1}
  end
end
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[7]
  redis.call('HSET', meta, 'e', epoch)
  redis.call('DEL', hist)
end
-- Lua numbers are doubles: format seqs as integers, never with tostring.
local seq = string.format('%d', redis.call('HINCRBY', meta, 's', 1))
local frame = ARGV[2] .. seq .. ARGV[3]
if size > 0 then
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('XADD', hist, 'MAXLEN', '=', size, seq .. '-0', 't', now_ms, 'f', frame)
  -- Entries are in time order: trim old ones from the head only.
  local cutoff = now_ms - ttl_ms
  local head = redis.call('XRANGE', hist, '-', '+', 'COUNT', 1)
  while #head > 0 and tonumber(head[1][2][2]) < cutoff do
    local batch = redis.call('XRANGE', hist, '-', '+', 'COUNT', 64)
    local keep = nil
    for i = 1, #batch do
      if tonumber(batch[i][2][2]) >= cutoff then keep = batch[i][1]; break end
    end
    if keep then redis.call('XTRIM', hist, 'MINID', keep); break end
    local last = tonumber(string.match(batch[#batch][1], '^(%d+)'))
    redis.call('XTRIM', hist, 'MINID', string.format('%d', last + 1) .. '-0')
    head = redis.call('XRANGE', hist, '-', '+', 'COUNT', 1)
  end
  -- A room quiet for the whole ttl has nothing worth keeping.
  redis.call('PEXPIRE', hist, ttl_ms)
end
redis.call('EXPIRE', meta, meta_ttl)
if dd then redis.call('SET', dd, seq .. ':' .. epoch, 'PX', dd_ttl_ms) end
redis.call('PUBLISH', ARGV[1], 'm' .. seq .. ':' .. epoch .. ':' .. frame)
return {tonumber(seq), epoch, 0}
