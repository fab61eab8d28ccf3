-- The sessions of a lapsed incarnation (its node died or was cut off past
-- presence.timeout): queue each one's session.disconnected (reason
-- node_lost, as recorded when it opened) and forget them.
--
-- KEYS: 1 the incarnation's session hash, 2 the queue.
-- ARGV: 1 max queue. A session recorded with empty data (its node did
-- not send session.disconnected) is forgotten silently.
-- Returns {sessions swept, types dropped by the cap}.
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i + 1] ~= '' then
    queue(KEYS[2], 'session.disconnected', all[i + 1], all[i], '')
  end
end
redis.call('DEL', KEYS[1])
return {#all / 2, trim(KEYS[2], ARGV[1])}
