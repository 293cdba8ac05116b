-- requeue.lua: the provider refused a submission for a reason of the account, not of the job
-- (429 / no capacity, or auth / credits): give the slot back, cool down or disable the account,
-- and put the job back at the head of its priority band. The freed slots go to the next jobs in
-- the same script (possibly this job, on another account).
-- A concurrency 429 (ARGV[6] = '1': the provider's slots are all in use) lowers the account's
-- effective slot count by one instead of cooling it down; only an account already down to one
-- effective slot cools down then (lib.lua learn_busy).
-- KEYS: the prelude layout; KEYS[FIXED + 1] is the job's hash.
-- ARGV[2]: account; ARGV[3]: cooldown until (ms, 0 = none); ARGV[4]: disable reason ('' = none);
-- ARGV[5]: message for the event; ARGV[6]: '1' for a concurrency 429.
-- Returns {'requeued', newly} | {'failed', newly} (no enabled account is left for it) | {'skip', state};
-- ``newly`` is '1' when this call disabled an account that was enabled until now, else '0'.

local job = redis.call('HGET', JOB_KEY, 'id')
if not job then return {'missing'} end
local state = redis.call('HGET', JOB_KEY, 'state')
if state ~= 'submitting' and state ~= 'queued' then return {'skip', state} end
local account = ARGV[2]
drop_expired()
local newly = '0'
if redis.call('HEXISTS', KEYS[K_ACCOUNTS], account) == 1 then
  if ARGV[6] ~= '1' or not learn_busy(account) then cool_down(account, tonumber(ARGV[3])) end
  if ARGV[4] ~= '' and disable(account, ARGV[4]) then newly = '1' end
end
release(job)

-- Is any enabled account left for it? (room counts a disabled account 1e9 down: one range count)
local pin = redis.call('HGET', JOB_KEY, 'pinned') or ''
local usable
if pin ~= '' then
  usable = tonumber(redis.call('ZSCORE', KEYS[K_ROOM], pin) or ENABLED_FLOOR) > ENABLED_FLOOR
else
  usable = redis.call('ZCOUNT', KEYS[K_ROOM], '(' .. ENABLED_FLOOR, '+inf') > 0
end
if not usable then
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
  return {'failed', newly}
end
redis.call('HSET', JOB_KEY, 'state', 'queued', 'message', ARGV[5], 'updated_ms', NOW, 'submit_open', '0')
move_state_index(job, state, 'queued')
emit(job, 'queued', 0, account, 'requeue')
enqueue_waiting(job, tonumber(redis.call('HGET', JOB_KEY, 'priority') or 5),
                tonumber(redis.call('HGET', JOB_KEY, 'created_ms')), pin)
handoff()
return {'requeued', newly}
