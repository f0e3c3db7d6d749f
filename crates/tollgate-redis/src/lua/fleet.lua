-- tollgate: a store says it is alive, and counts the stores that are.
-- KEYS[1]: the fleet's sorted set (member: a store; score: its last word,
--   in milliseconds of Redis' clock).
-- ARGV: the store's name, how long a word counts (milliseconds).
-- Replies the number of stores that spoke within that time.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
