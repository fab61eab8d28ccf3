-- A node whose incarnation lapsed registers a still-open session under
-- its new one. Not yet swept: moved silently. Already swept (its
-- session.disconnected node_lost queued): recorded again with a new
-- session.connected, so connected and disconnected still alternate.
--
-- KEYS: 1 the old incarnation's session hash, 2 the new one's, 3 the queue.
-- ARGV: 1 max queue, 2 session, 3 its node_lost data, 4 connected data
-- ('' when not sent). Returns the types dropped by the cap.
local moved = redis.call('HDEL', KEYS[1], ARGV[2])
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then return {} end
if moved == 0 and ARGV[4] ~= '' then
  queue(KEYS[3], 'session.connected', ARGV[4], ARGV[2], '')
end
return trim(KEYS[3], ARGV[1])
