-- The right to send the queue: one holder at a time.
--
-- KEYS: 1 the lease. ARGV: 1 holder, 2 time to live (ms).
-- Takes the lease when free, renews it when the caller holds it.
-- Returns 1 when the caller holds it.
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
