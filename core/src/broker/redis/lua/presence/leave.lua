-- Removes a session from a topic's presence, whichever incarnation of its
-- node stored it.
--
-- KEYS: 1 the topic's member hash, 2 its sessions per user.
-- ARGV: 1 session, 2 the topic's channel, 3 PUBLISH or SPUBLISH.
--
-- Announces "-<member JSON>" only when the member was there, so a member
-- already removed (its node presumed dead) never leaves twice. Returns
-- the member JSON when announced, 0 otherwise.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local nl = string.find(cur, '\n', 1, true) or 0
local json = string.sub(cur, nl + 1)
local ok, member = pcall(cjson.decode, json)
if ok and type(member) == 'table' and type(member['sub']) == 'string' then
  if redis.call('HINCRBY', KEYS[2], member['sub'], -1) <= 0 then
    redis.call('HDEL', KEYS[2], member['sub'])
  end
end
redis.call(ARGV[3], ARGV[2], '-' .. json)
return json
