-- A session closed: forget it and queue its session.disconnected, only if
-- it was still recorded (not already reported node_lost by a sweep, not a
-- retried call that had run), so each session closes exactly once.
--
-- KEYS: 1 the incarnation's session hash, 2 the queue.
-- ARGV: 1 max queue, 2 session, 3 disconnected data ('' when not sent).
-- Returns the types dropped by the cap.
if redis.call('HDEL', KEYS[1], ARGV[2]) == 0 then return {} end
if ARGV[3] ~= '' then queue(KEYS[2], 'session.disconnected', ARGV[3], ARGV[2], '') end
return trim(KEYS[2], ARGV[1])
