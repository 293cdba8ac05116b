-- sweep.lua: repair what a crash left behind. Drops expired leases, hands free slots to waiting
-- jobs, re-queues 'queued' jobs that hold no lease and wait nowhere, and returns up to ARGV[2]
-- jobs whose lease expired so the caller fails them as timed out.
-- KEYS: the prelude layout (no job hash). ARGV[2]: max jobs to return.
-- Returns {expired job ids...}

handoff()
local queued = redis.call('ZRANGE', KEYS[K_STATE.queued], 0, 999)
for _, job in ipairs(queued) do
  if not redis.call('ZSCORE', KEYS[K_WAITING], job) and not lease_of(job) then
    redis.call('ZADD', KEYS[K_WAITING], waiting_score(5, NOW), job)
  end
end
handoff()
local out = {}
for _ = 1, tonumber(ARGV[2]) do
  local job = redis.call('LPOP', KEYS[K_EXPIRED])
  if not job then break end
  out[#out + 1] = job
end
return out
