-- Claims lapsed incarnations for sweeping.
--
-- KEYS: 1 the sorted set of live incarnations, 2 the sorted set of claimed
-- ones (score = end of the claim, ms). ARGV: 1 claim length (ms), 2 most
-- incarnations to claim.
--
-- An expired incarnation moves from live to claimed; a claim that ran out
-- (its sweeper died) is renewed for the caller. Each is returned to one
-- caller at a time; the sweeper removes it from the claimed set when done.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local out = {}
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, ARGV[2])
for _, inc in ipairs(lapsed) do
  redis.call('ZREM', KEYS[1], inc)
  redis.call('ZADD', KEYS[2], until_ms, inc)
  out[#out + 1] = inc
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. now, 'LIMIT', 0, ARGV[2])
for _, inc in ipairs(stale) do
  redis.call('ZADD', KEYS[2], until_ms, inc)
  out[#out + 1] = inc
end
return out
