-- reschedule_polls.lua: polls that found no change: renew each job's lease (the provider says it
-- is alive), clear its poll-error count and schedule its next poll, in one call for a whole batch.
-- KEYS: the prelude layout; KEYS[18+N+k] is the hash of the k-th job.
-- ARGV[2]: delay until the next poll (ms); ARGV[3..]: job ids, in the order of their hashes.
-- Only jobs this worker still holds a claim on are rescheduled (a terminal job is left alone).

local delay = tonumber(ARGV[2])
local done = 0
for k = 3, #ARGV do
  local job = ARGV[k]
  if redis.call('ZREM', KEYS[K_POLLING], job) == 1 then
    redis.call('ZADD', KEYS[K_POLLS], NOW + delay, job)
    renew(job)
    redis.call('HDEL', KEYS[FIXED + N + k - 2], 'poll_errors')
    done = done + 1
  end
end
return done
