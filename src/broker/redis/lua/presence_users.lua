-- The users present in a room, after sweeping expired sessions. ARGV[1] room channel.
sweep(ARGV[1])
return redis.call('HKEYS', pu)
