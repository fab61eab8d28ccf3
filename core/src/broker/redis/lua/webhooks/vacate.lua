-- Queues topic.vacated for the topics whose delay ran out with no holder.
--
-- KEYS: 1 pending vacates, 2 the queue. ARGV: 1 max queue, 2 '1' to
-- queue topic.vacated. Returns the types dropped by the cap.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 256)
for _, topic in ipairs(due) do
  redis.call('ZREM', KEYS[1], topic)
  if ARGV[2] == '1' then
    queue(KEYS[2], 'topic.vacated', '{"topic":' .. cjson.encode(topic) .. '}', '', topic)
  end
end
return trim(KEYS[2], ARGV[1])
