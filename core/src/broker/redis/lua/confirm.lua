-- Durability = replicated: makes a topic's events up to seq ARGV[4] of
-- epoch ARGV[3] visible, once WAIT confirmed the replicas hold them, and
-- publishes them in order as one message (events of other publishers below
-- ARGV[4] included: replication is one ordered stream, so they are
-- replicated too).
--
-- KEYS: stream, meta, refused hash (see rollback.lua). ARGV: 1 channel,
-- 2 PUBLISH or SPUBLISH, 3 epoch, 4 seq, 5 history size. Returns how many
-- events it published.
--
-- The stream keeps the last history-size visible events and every event
-- not yet visible (those are bounded: in flight, or refused and taken back
-- by rollback.lua once nothing above them is in flight).
local m = redis.call('HMGET', KEYS[2], 'e', 'w')
if m[1] ~= ARGV[3] then return 0 end
local visible = tonumber(m[2]) or 0
local upto = tonumber(ARGV[4])
if upto <= visible then return 0 end
local entries = redis.call('XRANGE', KEYS[1], '0-' .. (visible + 1), '0-' .. upto)
local parts = {}
for _, e in ipairs(entries) do
  local frame = e[2][2]
  parts[#parts + 1] = m[1] .. '-' .. string.match(e[1], '-(%d+)$') .. ' ' .. #frame .. '\n' .. frame
end
redis.call('HSET', KEYS[2], 'w', upto)
for seq = visible + 1, upto do
  redis.call('HDEL', KEYS[3], m[1] .. '-' .. seq)
end
local keep_from = upto - tonumber(ARGV[5]) + 1
if keep_from > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '0-' .. keep_from)
end
if #parts > 0 then redis.call(ARGV[2], ARGV[1], table.concat(parts)) end
return #parts
