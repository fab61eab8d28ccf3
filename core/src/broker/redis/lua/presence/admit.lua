-- Admits one more session of a user if the whole cluster holds fewer than
-- the limit (limits.max_connections_per_user).
--
-- KEYS: 1 the user's count hash (node incarnation -> sessions), 2 the
-- sorted set of live incarnations. ARGV: 1 the admitting node's
-- incarnation, 2 the limit.
--
-- Counts of incarnations that expired (dead or cut-off nodes) are dropped
-- and not counted. Returns 1 when admitted (and counted), 0 when not.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #all, 2 do
  local inc = all[i]
  local alive = inc == ARGV[1]
  if not alive then
    local s = redis.call('ZSCORE', KEYS[2], inc)
    alive = s and tonumber(s) >= now
  end
  if alive then
    total = total + tonumber(all[i + 1])
  else
    redis.call('HDEL', KEYS[1], inc)
  end
end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
