-- requeue.lua: the provider refused a submission for a reason of the account, not of the job
-- (429 / no capacity, or auth / credits): give the slot back, cool down or disable the account,
-- and put the job back at the head of its priority band. The freed slots go to the next jobs in
-- the same script (possibly this job, on another account).
-- KEYS: the prelude layout; KEYS[19+N] is the job's hash.
-- ARGV[2]: account; ARGV[3]: cooldown until (ms, 0 = none); ARGV[4]: disable reason ('' = none);
-- ARGV[5]: message for the event.
-- Returns {'requeued'} | {'failed'} (no enabled account is left for it) | {'skip', state}.

local job = redis.call('HGET', JOB_KEY, 'id')
if not job then return {'missing'} end
local state = redis.call('HGET', JOB_KEY, 'state')
if state ~= 'submitting' and state ~= 'queued' then return {'skip', state} end
local account = ARGV[2]
local until_ms = tonumber(ARGV[3])
if until_ms > 0 then
  local current = tonumber(redis.call('ZSCORE', KEYS[K_COOLDOWN], account) or 0)
  if until_ms > current then redis.call('ZADD', KEYS[K_COOLDOWN], until_ms, account) end
end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[K_DISABLED], account, ARGV[4]) end
release(job)

local pin = redis.call('HGET', JOB_KEY, 'pinned') or ''
local usable = 0
for i = 1, N do
  local name = cfg.accounts[i]
  if (pin == '' or pin == name) and redis.call('HEXISTS', KEYS[K_DISABLED], name) == 0
     and tonumber(redis.call('HGET', KEYS[K_ACCOUNTS], name) or 0) > 0 then
    usable = usable + 1
  end
end
if usable == 0 then
  local message = 'no enabled account left for this job: ' .. ARGV[5]
  redis.call('HSET', JOB_KEY, 'state', 'failed', 'message', message, 'error_type', 'no_account',
             'updated_ms', NOW, 'finished_ms', NOW, 'ended_by', 'slots')
  redis.call('HINCRBY', JOB_KEY, 'seq', 1)
  move_state_index(job, state, 'failed')
  emit(job, 'failed', 0, account, 'slots')
  notify_app(job, true)
  unschedule(job)
  redis.call('EXPIRE', JOB_KEY, cfg.retention_s)
  handoff()
  return {'failed'}
end
redis.call('HSET', JOB_KEY, 'state', 'queued', 'message', ARGV[5], 'updated_ms', NOW, 'submit_open', '0')
move_state_index(job, state, 'queued')
emit(job, 'queued', 0, account, 'requeue')
enqueue_waiting(job, tonumber(redis.call('HGET', JOB_KEY, 'priority') or 5),
                tonumber(redis.call('HGET', JOB_KEY, 'created_ms')), pin)
handoff()
return {'requeued'}
