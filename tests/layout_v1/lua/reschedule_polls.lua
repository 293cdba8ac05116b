-- reschedule_polls.lua: polls that found no change: renew each job's lease (the provider says it
-- is alive), clear its poll-error count and schedule its next poll, in one call for a whole batch.
-- KEYS: the prelude layout; KEYS[19+N+k] is the hash of the k-th job.
-- ARGV[2]: delay until the next poll (ms); ARGV[3..]: job ids, in the order of their hashes.
-- Only jobs this worker still holds a claim on are rescheduled (a terminal job is left alone).
-- A job with its own 'poll_ms' (the safety poll of a job that gets callbacks) uses it, and when
-- 'poll_backoff' is set it doubles each quiet poll, up to 16 times the first interval.

local delay = tonumber(ARGV[2])
local done = 0
for k = 3, #ARGV do
  local job = ARGV[k]
  if redis.call('ZREM', KEYS[K_POLLING], job) == 1 then
    local hash = KEYS[FIXED + N + k - 2]
    local own = tonumber(redis.call('HGET', hash, 'poll_ms') or '')
    local wait = own or delay
    if own and redis.call('HGET', hash, 'poll_backoff') then
      local first = tonumber(redis.call('HGET', hash, 'poll_backoff'))
      redis.call('HSET', hash, 'poll_ms', math.min(own * 2, first * 16))
    end
    redis.call('ZADD', KEYS[K_POLLS], NOW + wait, job)
    renew(job)
    redis.call('HDEL', hash, 'poll_errors')
    done = done + 1
  end
end
return done
