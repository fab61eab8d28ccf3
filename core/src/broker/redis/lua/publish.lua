-- Publishes a run of events of one topic, atomically: ids, history, the
-- idempotency records and (durability = leader) the pub/sub message.
--
-- KEYS: stream, meta, then the idempotency record of each keyed event.
-- ARGV: 1 channel, 2 PUBLISH (standalone) or SPUBLISH (Redis Cluster),
-- 3 history size, 4 ttl ms, 5 epoch candidate, 6 leader or replicated,
-- 7 idempotency window ms, then per event a (prefix, suffix, key index)
-- triple: the frame is prefix .. id .. suffix; key index 0 = no key, else
-- its KEYS index.
--
-- Returns {ids, replaced epoch or '', epoch, last seq, first new seq or 0}.
-- With replicated the events are not published here: the confirm script
-- publishes them once the replicas have them (or the rollback script takes
-- them back when the replicas did not confirm them in time).
local clustered = '0'
if ARGV[2] == 'SPUBLISH' then clustered = '1' end
local epoch, last, visible, replaced = fence(KEYS[2], KEYS[1], ARGV[5], ARGV[6], ARGV[4], clustered)
local first_of_epoch = last == 0
local size = tonumber(ARGV[3])
local keep = size > 0 or ARGV[6] == 'replicated'
local n = (#ARGV - 7) / 3
local ids, parts = {}, {}
local first_new = 0
for i = 0, n - 1 do
  local k = tonumber(ARGV[10 + 3 * i])
  local prior = false
  if k > 0 then prior = redis.call('GET', KEYS[k]) end
  if prior then
    ids[i + 1] = prior
  else
    last = last + 1
    if first_new == 0 then first_new = last end
    local id = epoch .. '-' .. last
    local frame = ARGV[8 + 3 * i] .. id .. ARGV[9 + 3 * i]
    if keep then redis.call('XADD', KEYS[1], '0-' .. last, 'f', frame) end
    if k > 0 then redis.call('SET', KEYS[k], id, 'PX', ARGV[7]) end
    ids[i + 1] = id
    parts[#parts + 1] = id .. ' ' .. #frame .. '\n' .. frame
  end
end
if #parts > 0 then
  redis.call('HSET', KEYS[2], 's', last)
  if ARGV[6] == 'leader' then
    redis.call('HSET', KEYS[2], 'w', last)
    if size > 0 then redis.call('XTRIM', KEYS[1], 'MAXLEN', size) end
    -- The first message of an epoch that replaced another says so first.
    local prev = replaced
    if not prev and first_of_epoch then prev = redis.call('HGET', KEYS[2], 'p') end
    if prev then table.insert(parts, 1, '! ' .. prev .. '\n') end
    redis.call(ARGV[2], ARGV[1], table.concat(parts))
  end
end
if keep then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {ids, replaced or '', epoch, last, first_new}
