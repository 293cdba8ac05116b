-- claim_submit.lua: a worker is about to call the provider for this job (write-ahead record).
-- KEYS: the prelude layout; KEYS[19+N] is the job's hash.
-- Only a job that holds a live lease moves to 'submitting'; a holder that lost its lease must not
-- submit (the job goes back in line instead).
-- 'submit_open' is 1 from here until the worker records how the provider call ended; finding it
-- still 1 means a worker died mid-call (or the call ended without an answer), and nobody knows
-- whether the provider started the job; that holds even when the lease is gone.
-- ARGV[2]: this attempt's token. The same attempt asking again (its first reply was lost on the
-- way back, and the client resent the call) gets 'go' again: it has not called the provider yet.
-- Returns {'go', account, tries, previous_state} | {'interrupted', account, tries} | {'skip', state}
--       | {'requeued'} | {'missing'}.

local job = redis.call('HGET', JOB_KEY, 'id')
if not job then return {'missing'} end
local state = redis.call('HGET', JOB_KEY, 'state')
if state ~= 'queued' and state ~= 'submitting' then return {'skip', state} end
local i = lease_of(job)
if i and tonumber(redis.call('ZSCORE', lease_key(i), job)) <= NOW then i = nil end
if not i then
  if state == 'submitting' and redis.call('HGET', JOB_KEY, 'submit_open') == '1' then
    -- The lease is gone but the provider may have accepted the interrupted call: requeuing would
    -- submit it again. The caller looks it up first (or fails it where it cannot).
    return {'interrupted', redis.call('HGET', JOB_KEY, 'account') or '',
            tonumber(redis.call('HGET', JOB_KEY, 'submit_tries') or 0)}
  end
  if state == 'submitting' then
    redis.call('HSET', JOB_KEY, 'state', 'queued', 'updated_ms', NOW)
    move_state_index(job, state, 'queued')
  end
  if not redis.call('ZSCORE', KEYS[K_WAITING], job) then
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
renew(job)
local attempt = ARGV[2] or ''
if state == 'submitting' and redis.call('HGET', JOB_KEY, 'submit_open') == '1' then
  if attempt ~= '' and redis.call('HGET', JOB_KEY, 'submit_attempt') == attempt then
    return {'go', cfg.accounts[i], tonumber(redis.call('HGET', JOB_KEY, 'submit_tries') or 0), state}
  end
  return {'interrupted', cfg.accounts[i], tonumber(redis.call('HGET', JOB_KEY, 'submit_tries') or 0)}
end
local tries = redis.call('HINCRBY', JOB_KEY, 'submit_tries', 1)
redis.call('HSET', JOB_KEY, 'state', 'submitting', 'account', cfg.accounts[i], 'updated_ms', NOW,
           'submitted_ms', NOW, 'submit_open', '1', 'submit_attempt', attempt)
if state ~= 'submitting' then
  move_state_index(job, state, 'submitting')
  emit(job, 'submitting', 0, cfg.accounts[i], 'worker')
end
return {'go', cfg.accounts[i], tries, state}
