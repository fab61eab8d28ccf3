-- A node's first local subscriber of a topic came: count the node as
-- holding it. The first holder in the cluster queues topic.occupied,
-- unless the topic's topic.vacated was still pending (then it is
-- cancelled and neither is sent), so occupied and vacated alternate.
--
-- KEYS: 1 the incarnation's held topics, 2 holders per topic, 3 pending
-- vacates (topic -> due, ms), 4 the queue.
-- ARGV: 1 max queue, 2 topic, 3 its event data, 4 '1' to queue
-- topic.occupied. A topic already held by the incarnation changes
-- nothing. Returns the types dropped by the cap.
if redis.call('SADD', KEYS[1], ARGV[2]) == 0 then return {} end
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
  if redis.call('ZREM', KEYS[3], ARGV[2]) == 0 and ARGV[4] == '1' then
    queue(KEYS[4], 'topic.occupied', ARGV[3], '', ARGV[2])
  end
end
return trim(KEYS[4], ARGV[1])
