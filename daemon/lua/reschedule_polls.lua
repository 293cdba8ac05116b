-- reschedule_polls.lua: polls that found no change: renew each job's lease (the provider says it
-- is alive; when due, see renew_due), clear its poll-error count and schedule its next poll, in
-- one call for a whole batch.
-- KEYS: the prelude layout; KEYS[24+k] is the hash of the k-th job.
-- ARGV[2]: delay until the next poll (ms); ARGV[3..]: job ids, in the order of their hashes.
-- Only jobs still claimed are rescheduled (a terminal job, or one a callback made due meanwhile,
-- is left alone).
-- A job with its own 'poll_ms' (the safety poll of a job that gets callbacks) uses it, and when
-- 'poll_backoff' is set it doubles each quiet poll, up to 16 times the first interval.

local delay = tonumber(ARGV[2])
local done = 0
for k = 3, #ARGV do
  local job = ARGV[k]
  if poll_claimed(job) then
    local hash = KEYS[FIXED + k - 2]
    local f = redis.call('HMGET', hash, 'poll_ms', 'poll_backoff', 'poll_errors', 'lease_until')
    local own = tonumber(f[1] or '')
    local wait = own or delay
    local writes = {}
    if own and f[2] then
      writes[#writes + 1] = 'poll_ms'; writes[#writes + 1] = math.min(own * 2, tonumber(f[2]) * 16)
    end
    redis.call('ZADD', KEYS[K_POLLS], NOW + wait, job)
    local renewed = renew_due(job, f[4])
    if renewed then writes[#writes + 1] = 'lease_until'; writes[#writes + 1] = renewed end
    if #writes > 0 then redis.call('HSET', hash, unpack(writes)) end
    if f[3] then redis.call('HDEL', hash, 'poll_errors') end
    done = done + 1
  end
end
return done
