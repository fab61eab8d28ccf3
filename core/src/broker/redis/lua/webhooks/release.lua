-- Shared by the scripts that stop a node holding a topic: the last holder
-- in the cluster makes its topic.vacated due after the delay.
local function release(held, holders, vacating, topic, delay)
  if redis.call('SREM', held, topic) == 0 then return end
  if redis.call('HINCRBY', holders, topic, -1) <= 0 then
    redis.call('HDEL', holders, topic)
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('ZADD', vacating, now + tonumber(delay), topic)
  end
end
