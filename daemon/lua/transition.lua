-- transition.lua: apply one update to a job, monotonically and idempotently.
-- KEYS: the prelude layout; KEYS[FIXED+1] is the job's hash; after it (addressed relative to it)
--       KEYS[FIXED+2] the provider's asset index and KEYS[FIXED+3] its asset hash prefix.
-- ARGV[2]: JSON update {state, progress?, message?, artifact? (JSON text), provider_job_id?,
--          error_type?, fields? {name: text}, confirm? (true: a callback, only a hint)}
-- ARGV[3]: poll again in this many ms while the job is active (0: leave the poll schedule alone);
--          a job with its own 'poll_ms' (callback jobs: the slow safety poll) uses that instead
-- ARGV[4]: what the update came from (submit, poll, callback, sweep, cancel, ...); a terminal
--          job records it as 'ended_by' (a callback job's poll: 'callback' or 'safety_poll')
--
-- States only move forward (queued < submitting < active < terminal); within 'active' only the
-- progress moves forward; a terminal job is never rewritten. A 'completed' without an artifact is
-- refused: the provider's status and artifact can be out of sync. An update that changes nothing
-- still counts as a sign of life (the lease is renewed when due, the poll rescheduled).
-- A terminal update marked 'confirm' (a callback) does not end the job: it records what it can
-- (the job is active, its provider id) and makes the job's next poll due now, so the provider's
-- own answer decides; many copies of it at once still cause one status read.
-- The terminal transition releases the slot (exactly once: the lease member is the job id) and
-- hands it to the next waiting job in this same script.
-- Returns {outcome, state[, account]}: outcome is applied | duplicate | stale | terminal |
-- no_artifact | confirming | missing | conflict | not_submitted.
-- Job identity is set once: 'provider_job_id' is written by the submit (or the capacity sync's
-- adoption, reconcile.lua), never by a callback and never rewritten. A callback naming another
-- provider job ('conflict') or reaching a job that was never submitted ('not_submitted') changes
-- nothing at all.
--
-- Assets: ARGV[5] is the JSON of the asset fields read from the artifact (type, url, mime,
-- expires_ms, ...) when the update carries one, ARGV[6] the asset retention (ms). The 'completed'
-- transition records the job's asset in this same script (asset_lib.lua): a completed job always
-- has it, and no retry records it twice.

-- One read of everything the decision needs (this script runs on every poll result and callback).
local rec = redis.call('HMGET', JOB_KEY, 'id', 'state', 'poll_ms', 'progress', 'account', 'provider_job_id',
                      'seq', 'reply_url', 'notify_progress', 'hinted', 'provider', 'operation',
                      'lease_until')
local job = rec[1]
if not job then return {'missing', ''} end
local cur = rec[2]
local account = rec[5] or ''
local u = cjson.decode(ARGV[2])
local new = u.state
local poll_ms = tonumber(ARGV[3])
local source = ARGV[4]
if RANK[new] == nil then return redis.error_reply('unknown state ' .. tostring(new)) end
if RANK[cur] == 3 then return {'terminal', cur} end
-- Identity checks (see the header): before anything is written.
local has_pid = u.provider_job_id ~= nil and u.provider_job_id ~= cjson.null and u.provider_job_id ~= ''
if source == 'callback' then
  if cur == 'queued' then return {'not_submitted', cur} end
  if has_pid and rec[6] and rec[6] ~= '' and rec[6] ~= u.provider_job_id then return {'conflict', cur} end
end
if source == 'callback' or (rec[6] and rec[6] ~= '') then
  u.provider_job_id = nil
  has_pid = false
end
local job_poll_ms = tonumber(rec[3] or '')
if job_poll_ms and poll_ms > 0 then poll_ms = job_poll_ms end
local confirming = false
-- Fields an update writes besides its transition, put in the same HSET as the rest.
local extra = {}
if u.confirm and RANK[new] == 3 then
  confirming = true
  new = 'active'
  u.state, u.artifact, u.error_type = 'active', nil, nil
  if u.progress == nil or u.progress == cjson.null then u.progress = 0 end
  u.message = nil
  -- Remembered so the status read this hint triggers counts as the webhook's doing (ended_by).
  if rec[10] ~= '1' then extra[#extra + 1] = 'hinted'; extra[#extra + 1] = '1' end
end

-- How the job ended, for the record: a status read of a job that has callbacks (its own
-- 'poll_ms': the slow safety poll) was either asked for by a callback's hint (the webhook ended
-- it) or is the safety poll itself (the callback was lost).
local function ended_by(from, own_poll_ms, hinted)
  if from ~= 'poll' or not own_poll_ms then return from end
  return hinted and 'callback' or 'safety_poll'
end

-- An active job lives on: renew its lease and set its next poll (now, when a callback's hint
-- needs the provider's word).
-- The lease's new expiry when this update renewed it (renew_due), recorded with the update.
local renewed = nil
local function renew_lease()
  if renewed == nil then renewed = renew_due(job, rec[13]) or false end
end
-- For an update that writes no transition: the renewal's record and the extra fields, in one HSET.
local function record_renewal()
  if renewed then extra[#extra + 1] = 'lease_until'; extra[#extra + 1] = renewed end
  if #extra > 0 then redis.call('HSET', JOB_KEY, unpack(extra)) end
end
local function keep_polling()
  renew_lease()
  if confirming then
    schedule_poll(job, 0)
  elseif poll_ms > 0 then
    schedule_poll(job, poll_ms)
  end
end

local function sign_of_life()
  if cur == 'active' then keep_polling() end
end

if new == 'completed' and (u.artifact == nil or u.artifact == '') then
  -- Poll again soon (ARGV's interval, not a slow safety poll): the artifact usually follows.
  if cur == 'active' then
    renew_lease()
    record_renewal()
    schedule_poll(job, tonumber(ARGV[3]) > 0 and tonumber(ARGV[3]) or 1000)
  end
  return {'no_artifact', cur}
end
if RANK[new] < RANK[cur] then
  sign_of_life()
  record_renewal()
  return {'stale', cur}
end
local cur_progress = tonumber(rec[4] or 0)
local progress = cur_progress
if u.progress ~= nil then progress = math.max(0, math.min(100, math.floor(tonumber(u.progress)))) end
if new == cur and (new ~= 'active' or progress <= cur_progress) then
  -- Nothing moves, but bookkeeping fields (e.g. the submit's poll schedule when a callback got
  -- there first) and a provider job id not known yet are still recorded.
  if type(u.fields) == 'table' then
    for k, v in pairs(u.fields) do extra[#extra + 1] = k; extra[#extra + 1] = v end
  end
  if has_pid then
    extra[#extra + 1] = 'provider_job_id'; extra[#extra + 1] = u.provider_job_id
  end
  sign_of_life()
  record_renewal()
  return {confirming and 'confirming' or 'duplicate', cur}
end
if progress < cur_progress then progress = cur_progress end
if new == 'completed' then progress = 100 end

local fields = {'state', new, 'progress', progress, 'updated_ms', NOW, unpack(extra)}
local function put(name, value)
  if value ~= nil and value ~= cjson.null then fields[#fields + 1] = name; fields[#fields + 1] = value end
end
put('message', u.message)
put('artifact', u.artifact)
put('provider_job_id', u.provider_job_id)
put('error_type', u.error_type)
if type(u.fields) == 'table' then for k, v in pairs(u.fields) do put(k, v) end end
if new == 'active' and cur ~= 'active' then put('started_ms', NOW) end
if RANK[new] == 3 then
  put('finished_ms', NOW)
  put('ended_by', ended_by(source, job_poll_ms, rec[10] == '1'))
end
local seq = (tonumber(rec[7]) or 0) + 1
put('seq', seq)
if new == 'active' then
  renew_lease()
  if renewed then put('lease_until', renewed) end
end
redis.call('HSET', JOB_KEY, unpack(fields))
-- The state index orders jobs by when they entered their state: progress alone does not move it.
if new ~= cur then move_state_index(job, cur, new) end
emit(job, new, progress, account, source)

notify_app(job, RANK[new] == 3, {rec[8], rec[9], seq})
if RANK[new] == 3 then
  unschedule(job, cur)
  release(job)
  redis.call('EXPIRE', JOB_KEY, cfg.retention_s)
  if new == 'completed' and (ARGV[5] or '') ~= '' then
    local a = cjson.decode(ARGV[5])
    a.provider, a.workflow, a.account, a.job_id = rec[11], rec[12], account, job
    a.provider_job_id = has_pid and u.provider_job_id or rec[6]
    a.created_ms, a.source = tostring(NOW), 'job'
    local asset_keys = FIXED + 1
    put_asset(KEYS[asset_keys + 1], KEYS[asset_keys + 2], a, tonumber(ARGV[6]), NOW, 'job')
  end
  handoff()
elseif new == 'active' then
  keep_polling()
end
return {confirming and 'confirming' or 'applied', new, account}
