-- Reads a topic's history after a position, with the fence check of the
-- publish script (a reader may be the first to meet a new primary).
--
-- KEYS: stream, meta. ARGV: 1 since epoch ('' = from the oldest kept),
-- 2 since seq, 3 limit, 4 leader or replicated, 5 epoch candidate, 6 ttl ms,
-- 7 '1' under Redis Cluster, 8 '1' to read a position: a topic with no
-- epoch starts one (its position is <epoch>-0), and the meta hash is kept
-- at least ttl from now (a subscribed topic keeps its epoch).
-- Returns {recovered 0/1, epoch or '', flat seq/frame list, last visible
-- seq, epoch this one replaced or '', 1 when this read started the epoch}.
local positioning = ARGV[8] == '1'
if not positioning and redis.call('EXISTS', KEYS[2]) == 0 then return {0, '', {}, 0, '', 0} end
local epoch, last, visible, replaced = fence(KEYS[2], KEYS[1], ARGV[5], ARGV[4], ARGV[6], ARGV[7])
if positioning and redis.call('PTTL', KEYS[2]) < tonumber(ARGV[6]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
local first = visible + 1
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #head > 0 then first = tonumber(string.match(head[1][1], '-(%d+)$')) end
local recovered = 1
local from = '-'
if ARGV[1] ~= '' then
  local s = tonumber(ARGV[2])
  if ARGV[1] == epoch and s <= visible and s + 1 >= first then
    from = '0-' .. (s + 1)
  else
    recovered = 0
  end
end
local out = {}
if tonumber(ARGV[3]) > 0 and visible > 0 then
  local entries = redis.call('XRANGE', KEYS[1], from, '0-' .. visible, 'COUNT', ARGV[3])
  for _, e in ipairs(entries) do
    out[#out + 1] = string.match(e[1], '-(%d+)$')
    out[#out + 1] = e[2][2]
  end
end
local p = redis.call('HGET', KEYS[2], 'p') or ''
local fenced = 0
if replaced then fenced = 1 end
return {recovered, epoch, out, visible, p, fenced}
