-- A page of a topic's members, and its counts, in O(limit): the members
-- hash is walked with HSCAN (O(1) per member), and a page that ends inside
-- one HSCAN batch resumes after the last session it listed, found by name
-- (if that session left meanwhile, the batch is listed again: a member may
-- be listed twice across pages, never missed if present throughout).
--
-- KEYS: 1 the topic's member hash, 2 its sessions per user.
-- ARGV: 1 HSCAN cursor ('0' from the start), 2 the last session listed from
-- that cursor's batch ('' for none), 3 limit (0: counts only).
-- Returns {sessions, users, member JSONs, next cursor ('' when done),
-- last session listed from it}.
local count = redis.call('HLEN', KEYS[1])
local users = redis.call('HLEN', KEYS[2])
local limit = tonumber(ARGV[3])
local out = {}
if limit == 0 or count == 0 then return {count, users, out, '', ''} end
local cursor, after = ARGV[1], ARGV[2]
for _ = 1, 64 do
  local r = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', limit)
  local items = r[2]
  local start = 1
  if after ~= '' then
    for i = 1, #items, 2 do
      if items[i] == after then start = i + 2 break end
    end
  end
  local last = ''
  for i = start, #items, 2 do
    if #out >= limit then return {count, users, out, cursor, last} end
    local v = items[i + 1]
    local nl = string.find(v, '\n', 1, true) or 0
    out[#out + 1] = string.sub(v, nl + 1)
    last = items[i]
  end
  cursor, after = r[1], ''
  if cursor == '0' then return {count, users, out, '', ''} end
  if #out >= limit then return {count, users, out, cursor, ''} end
end
return {count, users, out, cursor, ''}
