-- poll_failed.lua: a status read failed (network error, 5xx, 429). Count it; poll again after a
-- backoff; after too many in a row, fail the job with the last error.
-- KEYS: the prelude layout; KEYS[FIXED + 1] is the job's hash.
-- ARGV[2]: backoff base (ms); ARGV[3]: backoff cap (ms); ARGV[4]: max consecutive errors;
-- ARGV[5]: message; ARGV[6]: retry-after (ms, 0 = none); ARGV[7]: random 0..1000 for jitter.
-- Returns {'retry', delay_ms} | {'failed'} | {'skip', state}.

local job = redis.call('HGET', JOB_KEY, 'id')
if not job then return {'missing'} end
local state = redis.call('HGET', JOB_KEY, 'state')
if RANK[state] == 3 then
  redis.call('ZREM', KEYS[K_POLLS], job)
  return {'skip', state}
end
local n = redis.call('HINCRBY', JOB_KEY, 'poll_errors', 1)
if n >= tonumber(ARGV[4]) then
  local message = 'gave up after ' .. n .. ' failed status reads: ' .. ARGV[5]
  redis.call('HSET', JOB_KEY, 'state', 'failed', 'message', message, 'error_type', 'provider_unreachable',
             'updated_ms', NOW, 'finished_ms', NOW, 'ended_by', 'poll')
  redis.call('HINCRBY', JOB_KEY, 'seq', 1)
  move_state_index(job, state, 'failed')
  emit(job, 'failed', tonumber(redis.call('HGET', JOB_KEY, 'progress') or 0),
       redis.call('HGET', JOB_KEY, 'account') or '', 'poll')
  notify_app(job, true)
  unschedule(job)
  release(job)
  redis.call('EXPIRE', JOB_KEY, cfg.retention_s)
  handoff()
  return {'failed'}
end
-- Exponential backoff with up to 50% jitter, never sooner than the provider asked.
local delay = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ (n - 1))
delay = math.floor(delay * (0.5 + tonumber(ARGV[7]) / 2000))
delay = math.max(delay, tonumber(ARGV[6]))
schedule_poll(job, delay)
return {'retry', delay}
