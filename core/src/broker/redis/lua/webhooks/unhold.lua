-- A node's last local subscriber of a topic left (see release.lua).
--
-- KEYS: 1 the incarnation's held topics, 2 holders per topic, 3 pending
-- vacates. ARGV: 1 topic, 2 webhooks.vacated_delay (ms).
release(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
return {}
