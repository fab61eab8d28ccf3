-- Keeps a node's presence incarnation alive.
--
-- KEYS: the sorted set of live incarnations (score = expiry, ms, by the
-- Redis clock). ARGV: 1 incarnation, 2 how long it stays alive (ms),
-- 3 '1' to register a new incarnation.
--
-- An incarnation that expired (or was claimed for sweeping) is never
-- renewed: its members are being removed, and its node must register a
-- new one and join its sessions again. Returns 1 when alive, 0 when lapsed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] ~= '1' then
  local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not s or tonumber(s) < now then return 0 end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
