-- Prepended to every webhook script: queue one event on the stream, and
-- trim the stream to its cap (webhooks.max_queue), oldest first.
--
-- An entry's fields: type, ts (Unix ms by the Redis clock), data (the
-- body's JSON object), session and topic (its ordering keys, '' for
-- none). The entry id is the event's id.
local function queue(q, kind, data, session, topic)
  local t = redis.call('TIME')
  local ts = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
  redis.call('XADD', q, '*', 'type', kind, 'ts', ts, 'data', data,
    'session', session, 'topic', topic)
end

-- Returns the types of the entries dropped to keep q within max.
local function trim(q, max)
  local dropped = {}
  local over = redis.call('XLEN', q) - tonumber(max)
  if over > 0 then
    for _, e in ipairs(redis.call('XRANGE', q, '-', '+', 'COUNT', over)) do
      redis.call('XDEL', q, e[1])
      dropped[#dropped + 1] = e[2][2]
    end
  end
  return dropped
end
