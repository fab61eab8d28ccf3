-- Shared by the publish and history scripts (prepended to each).
--
-- The meta hash of a topic: e = epoch, s = last seq, f = the replication id
-- of the primary that last wrote it, w = last seq visible to readers (with
-- durability = replicated, only what the replicas confirmed), p = the epoch
-- this one replaced by fencing.
--
-- fence(meta, stream, candidate, mode, ttl, clustered) returns epoch, last
-- seq, visible seq, and the epoch replaced by fencing now (or nil).
--
-- A primary other than the one that last wrote the topic may lack writes
-- that were acknowledged. It is certainly such a successor when its
-- previous replication id (master_replid2) is the writer's: it was a
-- replica of the writer and was promoted. Outside a Redis Cluster any other
-- lineage change is treated the same way (conservative); inside one, a
-- topic whose writer is neither this node nor its former primary arrived by
-- slot migration, which moves keys whole, so its history is kept.
-- With durability = leader such a history starts a new epoch, so no id is
-- ever reused and a client recovering across the change is told
-- recovered:false. With replicated, every event readers could see was
-- confirmed by the replicas before it became visible, so a promoted replica
-- holds them: the epoch continues.
local function fence(meta, stream, candidate, mode, ttl, clustered)
  local info = redis.call('INFO', 'replication')
  local replid = string.match(info, 'master_replid:(%w+)') or ''
  local former = string.match(info, 'master_replid2:(%w+)') or ''
  local m = redis.call('HMGET', meta, 'e', 's', 'f', 'w')
  local epoch, last, writer, visible = m[1], tonumber(m[2]), m[3], tonumber(m[4])
  if not epoch then
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', candidate, 's', 0, 'f', replid, 'w', 0)
    redis.call('PEXPIRE', meta, ttl)
    return candidate, 0, 0, nil
  end
  if writer ~= replid then
    local successor = writer == former or clustered ~= '1'
    if mode == 'leader' and successor then
      redis.call('DEL', stream)
      redis.call('HSET', meta, 'e', candidate, 's', 0, 'f', replid, 'w', 0, 'p', epoch)
      redis.call('PEXPIRE', meta, ttl)
      return candidate, 0, 0, epoch
    end
    redis.call('HSET', meta, 'f', replid)
  end
  if mode == 'leader' then visible = last end
  return epoch, last, visible or 0, nil
end
