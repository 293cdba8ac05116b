-- create_job.lua: store a new job and try to give it a slot, in one step.
-- KEYS: the prelude layout (lib.lua); KEYS[FIXED + 1] is the new job's hash.
-- ARGV[2]: JSON object of the job's fields (strings); ARGV[3]: pinned account or '';
-- ARGV[4]: priority 0..9 (higher goes first).
-- Returns {'exists'} when the id is taken (idempotent enqueue), {'dispatched', account} when a slot
-- was free (its submission is enqueued), or {'waiting'} when it joined the provider's queue.

if redis.call('EXISTS', JOB_KEY) == 1 then return {'exists'} end
local job = cjson.decode(ARGV[2])
local id = job.id
local pinned = ARGV[3]
local priority = tonumber(ARGV[4])
local flat = {}
for k, v in pairs(job) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', JOB_KEY, 'state', 'queued', 'progress', '0', 'seq', '1',
           'created_ms', NOW, 'updated_ms', NOW, unpack(flat))
redis.call('ZADD', KEYS[K_INDEX], NOW, id)
move_state_index(id, nil, 'queued')
emit(id, 'queued', 0, pinned, 'api')

-- Jobs already waiting go first: a newcomer only takes a slot when nobody eligible is ahead of it
-- (a pinned job whose account has room is always in pinned_ready).
local ahead = redis.call('ZCARD', KEYS[K_WAITING]) > 0
                or (any_pinned() and redis.call('ZCARD', KEYS[K_PINNED_READY]) > 0)
if ahead then
  enqueue_waiting(id, priority, NOW, pinned)
  -- Others wait: the new job takes its turn behind them, and when no account has a free slot
  -- (the usual case with a backlog) there is nothing to hand out. Expired leases are left to the
  -- next hand-off (every terminal transition, the sweep): they would go to the jobs ahead anyway.
  if not best_account() then return {'waiting'} end
  handoff()
  if is_waiting(id) then return {'waiting'} end
  return {'dispatched', lease_of(id) or ''}
end
drop_expired()
local account = choose_account(pinned)
if account then
  grant(account, id)
  return {'dispatched', account}
end
enqueue_waiting(id, priority, NOW, pinned)
return {'waiting'}
