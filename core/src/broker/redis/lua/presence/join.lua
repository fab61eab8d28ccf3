-- Makes a session a member of a topic's presence.
--
-- KEYS: 1 the topic's member hash (session -> "<incarnation>\n<member
-- JSON>"), 2 its sessions per user (sub -> count).
-- ARGV: 1 session, 2 the joining node's incarnation, 3 member JSON,
-- 4 the topic's channel, 5 PUBLISH or SPUBLISH, 6 the member's sub.
--
-- A session already present keeps its entry (and its join time) and is
-- moved to the caller's incarnation, without an announcement: its node
-- registers it again after its earlier incarnation lapsed. Otherwise the
-- member is stored and "+<member JSON>" announced on the topic's channel.
-- Returns 1 when announced.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local nl = string.find(cur, '\n', 1, true)
  if nl and string.sub(cur, 1, nl - 1) ~= ARGV[2] then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '\n' .. string.sub(cur, nl + 1))
  end
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '\n' .. ARGV[3])
redis.call('HINCRBY', KEYS[2], ARGV[6], 1)
redis.call(ARGV[5], ARGV[4], '+' .. ARGV[3])
return 1
