-- transition.lua: apply one update to a job, monotonically and idempotently.
-- KEYS: the prelude layout; KEYS[18+N] is the job's hash.
-- ARGV[2]: JSON update {state, progress?, message?, artifact? (JSON text), provider_job_id?,
--          error_type?, fields? {name: text}}
-- ARGV[3]: poll again in this many ms while the job is active (0: leave the poll schedule alone)
-- ARGV[4]: what the update came from (submit, poll, webhook, sweep, cancel, ...)
--
-- States only move forward (queued < submitting < active < terminal); within 'active' only the
-- progress moves forward; a terminal job is never rewritten. A 'completed' without an artifact is
-- refused: the provider's status and artifact can be out of sync. An update that changes nothing
-- still counts as a sign of life (the lease is renewed, the poll rescheduled).
-- The terminal transition releases the slot (exactly once: the lease member is the job id) and
-- hands it to the next waiting job in this same script.
-- Returns {outcome, state[, account]}: outcome is applied | duplicate | stale | terminal | no_artifact | missing.

local job = redis.call('HGET', JOB_KEY, 'id')
if not job then return {'missing', ''} end
local cur = redis.call('HGET', JOB_KEY, 'state')
local u = cjson.decode(ARGV[2])
local new = u.state
local poll_ms = tonumber(ARGV[3])
local source = ARGV[4]
if RANK[new] == nil then return redis.error_reply('unknown state ' .. tostring(new)) end
if RANK[cur] == 3 then return {'terminal', cur} end

local function sign_of_life()
  if cur == 'active' then
    renew(job)
    if poll_ms > 0 then schedule_poll(job, poll_ms) end
  end
end

if new == 'completed' and (u.artifact == nil or u.artifact == '') then
  sign_of_life()
  return {'no_artifact', cur}
end
if RANK[new] < RANK[cur] then
  sign_of_life()
  return {'stale', cur}
end
local cur_progress = tonumber(redis.call('HGET', JOB_KEY, 'progress') or 0)
local progress = cur_progress
if u.progress ~= nil then progress = math.max(0, math.min(100, math.floor(tonumber(u.progress)))) end
if new == cur and (new ~= 'active' or progress <= cur_progress) then
  sign_of_life()
  return {'duplicate', cur}
end
if progress < cur_progress then progress = cur_progress end
if new == 'completed' then progress = 100 end

local fields = {'state', new, 'progress', progress, 'updated_ms', NOW}
local function put(name, value)
  if value ~= nil and value ~= cjson.null then fields[#fields + 1] = name; fields[#fields + 1] = value end
end
put('message', u.message)
put('artifact', u.artifact)
put('provider_job_id', u.provider_job_id)
put('error_type', u.error_type)
if type(u.fields) == 'table' then for k, v in pairs(u.fields) do put(k, v) end end
if new == 'active' and cur ~= 'active' then put('started_ms', NOW) end
local account = redis.call('HGET', JOB_KEY, 'account') or ''
if RANK[new] == 3 then
  put('finished_ms', NOW)
  put('ended_by', source)
end
redis.call('HSET', JOB_KEY, unpack(fields))
redis.call('HINCRBY', JOB_KEY, 'seq', 1)
move_state_index(job, cur, new)
emit(job, new, progress, account, source)

notify_app(job, RANK[new] == 3)
if RANK[new] == 3 then
  unschedule(job)
  release(job)
  redis.call('EXPIRE', JOB_KEY, cfg.retention_s)
  handoff()
else
  if new == 'active' then
    renew(job)
    if poll_ms > 0 then schedule_poll(job, poll_ms) end
  end
end
return {'applied', new, account}
