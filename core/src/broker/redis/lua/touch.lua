-- Keeps the epochs of topics a node subscribes alive, so the positions its
-- sessions were given stay valid (contract §10.3): each meta hash that
-- exists is kept at least ttl from now. Events still expire with their
-- stream, history.ttl after the last publish.
--
-- KEYS: meta hashes (one slot). ARGV: 1 ttl ms. Returns how many it kept.
local ttl = tonumber(ARGV[1])
local n = 0
for _, meta in ipairs(KEYS) do
  local left = redis.call('PTTL', meta)
  if left >= 0 and left < ttl then
    redis.call('PEXPIRE', meta, ttl)
    n = n + 1
  end
end
return n
