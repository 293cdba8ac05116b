-- claim_submit.lua: a worker is about to call the provider for this job (write-ahead record).
-- KEYS: the prelude layout; KEYS[FIXED + 1] is the job's hash.
-- Only a job that holds a live lease moves to 'submitting'; a holder that lost its lease must not
-- submit (the job goes back in line instead).
-- 'submit_open' is 1 from here until the worker records how the provider call ended; finding it
-- still 1 means a worker died mid-call (or the call ended without an answer), and nobody knows
-- whether the provider started the job; that holds even when the lease is gone.
-- ARGV[2]: this attempt's token. The same attempt asking again (its first reply was lost on the
-- way back, and the client resent the call) gets 'go' again: it has not called the provider yet.
-- Returns {'go', account, tries, previous_state} | {'interrupted', account, tries} | {'skip', state}
--       | {'requeued'} | {'missing'}.

local rec = redis.call('HMGET', JOB_KEY, 'id', 'state', 'submit_open', 'submit_attempt', 'submit_tries', 'account')
local job = rec[1]
if not job then return {'missing'} end
local state = rec[2]
local submit_open = state == 'submitting' and rec[3] == '1'
local tries_so_far = tonumber(rec[5] or 0)
if state ~= 'queued' and state ~= 'submitting' then return {'skip', state} end
local account = lease_of(job)
local lease_until = account and tonumber(redis.call('ZSCORE', KEYS[K_LEASES], job) or 0) or 0
if lease_until <= NOW then account = nil end
if not account then
  if submit_open then
    -- The lease is gone but the provider may have accepted the interrupted call: requeuing would
    -- submit it again. The caller looks it up first (or fails it where it cannot).
    return {'interrupted', rec[6] or '', tries_so_far}
  end
  if state == 'submitting' then
    redis.call('HSET', JOB_KEY, 'state', 'queued', 'updated_ms', NOW)
    move_state_index(job, state, 'queued')
  end
  if not is_waiting(job) then
    local pin = redis.call('HGET', JOB_KEY, 'pinned') or ''
    enqueue_waiting(job, tonumber(redis.call('HGET', JOB_KEY, 'priority') or 5),
                    tonumber(redis.call('HGET', JOB_KEY, 'created_ms')), pin)
  end
  emit(job, 'queued', 0, '', 'lease_lost')
  handoff()
  -- The expiry (noted now or earlier by drop_expired) is superseded: the job is back in line or
  -- holds a fresh lease, and the sweep must not fail it as timed out later.
  redis.call('LREM', KEYS[K_EXPIRED], 0, job)
  return {'requeued'}
end
lease_until = renew_due(job, lease_until) or lease_until
local attempt = ARGV[2] or ''
if submit_open then
  if attempt ~= '' and rec[4] == attempt then
    return {'go', account, tries_so_far, state}
  end
  return {'interrupted', account, tries_so_far}
end
local tries = tries_so_far + 1
redis.call('HSET', JOB_KEY, 'state', 'submitting', 'account', account, 'updated_ms', NOW,
           'submitted_ms', NOW, 'submit_open', '1', 'submit_attempt', attempt, 'submit_tries', tries,
           'lease_until', lease_until)
if state ~= 'submitting' then
  move_state_index(job, state, 'submitting')
  emit(job, 'submitting', 0, account, 'worker')
end
return {'go', account, tries, state}
