-- Removes a session from a topic's presence, whichever incarnation of its
-- node stored it.
--
-- KEYS: the topic's member hash. ARGV: 1 session, 2 the topic's channel,
-- 3 PUBLISH or SPUBLISH.
--
-- Announces "-<member JSON>" only when the member was there, so a member
-- already removed (its node presumed dead) never leaves twice. Returns 1
-- when announced.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local nl = string.find(cur, '\n', 1, true) or 0
redis.call(ARGV[3], ARGV[2], '-' .. string.sub(cur, nl + 1))
return 1
