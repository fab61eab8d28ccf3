-- A session opened: record it under its node's incarnation (with the
-- session.disconnected data to send should the node die) and queue its
-- session.connected.
--
-- KEYS: 1 the incarnation's session hash, 2 the queue.
-- ARGV: 1 max queue, 2 session, 3 its node_lost data, 4 connected data
-- ('' when not sent).
--
-- A session already recorded (a retried call that had run) queues
-- nothing. Returns the types dropped by the cap.
if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) == 0 then return {} end
if ARGV[4] ~= '' then queue(KEYS[2], 'session.connected', ARGV[4], ARGV[2], '') end
return trim(KEYS[2], ARGV[1])
