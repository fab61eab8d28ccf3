-- What a lapsed incarnation held (its node died or was cut off past
-- presence.timeout): each session's session.disconnected (reason
-- node_lost, as recorded when it opened) is queued and the session
-- forgotten; each topic it held is released (see release.lua).
--
-- KEYS: 1 the incarnation's session hash, 2 the queue, 3 its held topics,
-- 4 holders per topic, 5 pending vacates.
-- ARGV: 1 max queue, 2 webhooks.vacated_delay (ms). A session recorded
-- with empty data (its node did not send session.disconnected) is
-- forgotten silently.
-- Returns {sessions swept, types dropped by the cap}.
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i + 1] ~= '' then
    queue(KEYS[2], 'session.disconnected', all[i + 1], all[i], '')
  end
end
redis.call('DEL', KEYS[1])
for _, topic in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  release(KEYS[3], KEYS[4], KEYS[5], topic, ARGV[2])
end
redis.call('DEL', KEYS[3])
return {#all / 2, trim(KEYS[2], ARGV[1])}
