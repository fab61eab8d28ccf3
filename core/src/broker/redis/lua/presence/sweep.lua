-- Removes from a topic's presence every member stored by a lapsed
-- incarnation of a node, announcing a leave for each.
--
-- KEYS: 1 the topic's member hash, 2 its sessions per user. ARGV: 1 the
-- lapsed incarnation, 2 the topic's channel, 3 PUBLISH or SPUBLISH.
--
-- Members its node registered again since (under a new incarnation) stay.
-- Returns the member JSON of each one that left.
local all = redis.call('HGETALL', KEYS[1])
local prefix = ARGV[1] .. '\n'
local left = {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  if string.sub(v, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], all[i])
    local json = string.sub(v, #prefix + 1)
    local ok, member = pcall(cjson.decode, json)
    if ok and type(member) == 'table' and type(member['sub']) == 'string' then
      if redis.call('HINCRBY', KEYS[2], member['sub'], -1) <= 0 then
        redis.call('HDEL', KEYS[2], member['sub'])
      end
    end
    redis.call(ARGV[3], ARGV[2], '-' .. json)
    left[#left + 1] = json
  end
end
return left
