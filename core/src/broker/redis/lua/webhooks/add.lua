-- Queues presence events recorded by a node after the change they report.
--
-- KEYS: 1 the queue. ARGV: 1 max queue, then per event: type, data,
-- session, topic. Returns the types dropped by the cap.
for i = 2, #ARGV, 4 do
  queue(KEYS[1], ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
end
return trim(KEYS[1], ARGV[1])
