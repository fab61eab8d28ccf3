-- A node's sessions of one user (limits.max_connections_per_user), written
-- as an absolute count: running it twice with the same arguments leaves
-- the same state, so a call retried after a timeout (which may have run)
-- never counts a session twice.
--
-- KEYS: 1 the user's count hash (node incarnation -> sessions), 2 the
-- sorted set of live incarnations. ARGV: 1 the node's incarnation, 2 the
-- limit (0: no check), 3 the node's count before this call, 4 sessions of
-- the user that ended since, 5 sessions asking to be admitted now.
--
-- Counts of incarnations that expired (dead or cut-off nodes) are dropped
-- and not counted. Admits as many of the asking sessions as the cluster
-- has room for, in order, and returns how many.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local own = tonumber(ARGV[3]) - tonumber(ARGV[4])
if own < 0 then own = 0 end
local asking = tonumber(ARGV[5])
local admitted = asking
local limit = tonumber(ARGV[2])
if asking > 0 and limit > 0 then
  local all = redis.call('HGETALL', KEYS[1])
  local others = 0
  for i = 1, #all, 2 do
    local inc = all[i]
    if inc ~= ARGV[1] then
      local s = redis.call('ZSCORE', KEYS[2], inc)
      if s and tonumber(s) >= now then
        others = others + tonumber(all[i + 1])
      else
        redis.call('HDEL', KEYS[1], inc)
      end
    end
  end
  admitted = limit - others - own
  if admitted > asking then admitted = asking end
  if admitted < 0 then admitted = 0 end
end
own = own + admitted
if own > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], own)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return admitted
