-- sweep.lua: repair what a crash left behind. Drops expired leases, hands free slots to waiting
-- jobs, re-queues 'queued' jobs that hold no lease and wait nowhere, and returns up to ARGV[2]
-- jobs whose lease expired so the caller fails them as timed out.
-- KEYS: the prelude layout; KEYS[FIXED + 1] a counter: where in the 'queued' index the last sweep stopped.
-- ARGV[2]: max jobs to return. ARGV[3]: 'queued' jobs looked at per sweep (the next sweep goes on
-- from there, so each call costs the same however long the queue is).
-- Returns {expired job ids...}

local CURSOR = KEYS[FIXED + 1]
drop_expired()
handoff()
local batch = tonumber(ARGV[3] or 200)
local from = tonumber(redis.call('GET', CURSOR) or 0)
local queued = redis.call('ZRANGE', KEYS[K_STATE.queued], from, from + batch - 1)
if #queued < batch then redis.call('SET', CURSOR, 0) else redis.call('SET', CURSOR, from + batch) end
local orphans = 0
for _, job in ipairs(queued) do
  if not is_waiting(job) and not lease_of(job) then
    redis.call('ZADD', KEYS[K_WAITING], waiting_score(5, NOW), job)
    orphans = orphans + 1
  end
end
if orphans > 0 then handoff() end
local out = {}
for _ = 1, tonumber(ARGV[2]) do
  local job = redis.call('LPOP', KEYS[K_EXPIRED])
  if not job then break end
  out[#out + 1] = job
end
return out
