-- Durability = replicated: takes back the events of a publish whose
-- replicas did not confirm them in time, so a publish answered 503 never
-- surfaces later, nor holds memory (contract §10.8).
--
-- KEYS: 1 stream, 2 meta, 3 refused hash (<epoch>-<seq> -> the event's
-- idempotency record, or ''). ARGV: 1 epoch, 2 the call's first new seq
-- (0: it added none, every event repeated a key seen before), 3 its last
-- seq (with no new event: the highest seq its repeats answered), 4 ttl ms,
-- then per new event its idempotency record's key, or ''.
--
-- The call's events are marked refused; then the refused events at the
-- top of the stream are taken back (entry deleted, its idempotency record
-- too, so a retry with the same key publishes anew, and the topic's last
-- seq lowered): their ids were never visible to anyone, so using them again
-- gives no id to two events. A refused event below one still in flight
-- stays until that one is refused too, or is confirmed: a confirmation
-- covers every event below it (replication is one ordered stream), which
-- is the only way a refused event is ever delivered.
--
-- Returns 1 when the call's events are visible after all (a confirmation
-- covered them: the publish succeeded), 0 when they are refused.
local m = redis.call('HMGET', KEYS[2], 'e', 'w', 's')
if m[1] ~= ARGV[1] then return 0 end
local w, s = tonumber(m[2]) or 0, tonumber(m[3]) or 0
local first, last = tonumber(ARGV[2]), tonumber(ARGV[3])
if last <= w then return 1 end
if first == 0 then return 0 end
for seq = first, last do
  redis.call('HSET', KEYS[3], ARGV[1] .. '-' .. seq, ARGV[4 + seq - first + 1] or '')
end
local top = s
while s > w do
  local f = ARGV[1] .. '-' .. s
  local key = redis.call('HGET', KEYS[3], f)
  if not key then break end
  redis.call('XDEL', KEYS[1], '0-' .. s)
  if key ~= '' and redis.call('GET', key) == f then redis.call('DEL', key) end
  redis.call('HDEL', KEYS[3], f)
  s = s - 1
end
if s ~= top then
  redis.call('HSET', KEYS[2], 's', s)
  -- The stream remembers its highest id even once deleted: lower it, so
  -- the next event can take the freed seq.
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('XSETID', KEYS[1], '0-' .. s) end
end
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return 0
