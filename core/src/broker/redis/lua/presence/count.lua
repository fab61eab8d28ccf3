-- Adds a (possibly negative) number of sessions to a user's count on one
-- node incarnation: -1 when a session ends, the node's whole count when it
-- registers again under a new incarnation.
--
-- KEYS: the user's count hash. ARGV: 1 incarnation, 2 delta.
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
