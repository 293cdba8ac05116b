-- reconcile.lua: make one account's slots agree with what the provider says runs on it.
-- KEYS: the prelude layout; KEYS[FIXED + 1] is the provider's capacity record hash (account -> JSON of
-- the last sync); KEYS[FIXED + 2..] are the hashes of the jobs named in ARGV[2].jobs, in that order.
-- ARGV[2]: JSON {account, listed_at_ms (Redis time just before the listing was requested),
--   grace_ms, poll_ms, lists_refs (the provider echoes our ref), max_tries, provider_max (or null),
--   entries [{pid, job ('' = no candidate), by ('ref' | 'pid')}], jobs [job ids]}.
--   ``jobs`` holds every job the caller found that may be concerned: the listed candidates, the
--   account's leases and the provider's jobs in 'submitting' on this account. A job that got its
--   lease after that read is not named; it was granted a moment ago and is left alone.
--
-- For each listed entry:
--   * one of our jobs with no provider id yet (queued, or submitting: in flight, interrupted or
--     uncertain) is adopted: provider id recorded, 'active', a lease on this account (kept or
--     recreated), polled. It is never submitted again.
--   * one of our active jobs keeps (or gets back, when the lease keys were lost) its lease.
--   * anything else (another client's job, or one of ours that holds no lease any more) is
--     foreign: its slot is busy, so free slots subtract it.
-- Then for our jobs the provider does not list:
--   * a submit marked uncertain (sent, no answer) whose listing was read at least grace_ms after
--     the attempt ended: with a provider that echoes refs it was never accepted, so it is sent
--     again (one more counted try); otherwise it is returned for the caller to fail as
--     interrupted (a second submit could pay twice).
--   * an active job submitted more than grace_ms before the listing: its next status read is due
--     now (a 404 there ends it as lost and frees the slot); it is not ended blindly.
-- The listing replaces what concurrency 429s taught (lib.lua learn_busy): the jobs that are not ours
-- are counted as foreign now, so the learned slots come back at once.
-- Freed slots go to the waiting jobs in the same script.
-- Returns JSON {foreign, adopted[], rebuilt[], resubmitted[], interrupted[], checked[]}.

local p = cjson.decode(ARGV[2])
if redis.call('HEXISTS', KEYS[K_ACCOUNTS], p.account) == 0 then return cjson.encode({error = 'unknown account'}) end
local account = p.account
local CAPACITY = KEYS[FIXED + 1]
local hashes = {}
for k, job in ipairs(p.jobs) do hashes[job] = KEYS[FIXED + 1 + k] end
local grace = tonumber(p.grace_ms)
local listed_at = tonumber(p.listed_at_ms)

drop_expired()

local out = {adopted = {}, rebuilt = {}, resubmitted = {}, interrupted = {}, checked = {}}
local function note(list, job) out[list][#out[list] + 1] = job end

-- The job runs on this account at the provider: hold its lease here (moved, renewed or recreated),
-- even past maxJobs (the provider's word wins; free slots then stay at 0 until it ends).
local function hold_lease(job)
  local held = lease_of(job)
  if held and held ~= account then drop_lease(job, held) end
  if held == account then renew(job) else add_lease(job, account) end
  -- A lease that expired meanwhile put the job on the sweep's list; the provider says it lives.
  redis.call('LREM', KEYS[K_EXPIRED], 0, job)
  return held == account
end

local function adopt(job, key, state, pid)
  leave_queue(job)
  hold_lease(job)
  local f = redis.call('HMGET', key, 'reply_url', 'notify_progress')
  local seq = redis.call('HINCRBY', key, 'seq', 1)
  redis.call('HSET', key, 'state', 'active', 'provider_job_id', pid, 'account', account,
             'submit_open', '0', 'message', 'adopted: the provider lists it as running (the submit answer was lost)',
             'updated_ms', NOW, 'started_ms', NOW)
  redis.call('HDEL', key, 'submit_uncertain', 'uncertain_ms')
  move_state_index(job, state, 'active')
  emit(job, 'active', 0, account, 'reconcile')
  notify_app(job, false, {f[1], f[2], seq})
  schedule_poll(job, tonumber(p.poll_ms))
  note('adopted', job)
end

local listed = {}
local foreign = 0
for _, e in ipairs(p.entries) do
  local ours = false
  local key = e.job ~= '' and hashes[e.job] or nil
  if key then
    local r = redis.call('HMGET', key, 'id', 'state', 'provider_job_id')
    local known_pid = r[3] or ''
    if r[1] == e.job and (e.by == 'ref' or known_pid == e.pid) then
      if (r[2] == 'queued' or r[2] == 'submitting') and (known_pid == '' or known_pid == e.pid) then
        adopt(e.job, key, r[2], e.pid)
        ours = true
      elseif r[2] == 'active' and (known_pid == '' or known_pid == e.pid) then
        if known_pid == '' then redis.call('HSET', key, 'provider_job_id', e.pid) end
        if not hold_lease(e.job) then
          emit(e.job, 'lease_rebuilt', 0, account, 'reconcile')
          note('rebuilt', e.job)
        end
        ours = true
      end
      -- Anything else (terminal, or a second provider job carrying this ref) is busy but not ours.
    end
  end
  if ours then listed[e.job] = true else foreign = foreign + 1 end
end

for _, job in ipairs(p.jobs) do
  if not listed[job] then
    local key = hashes[job]
    local r = redis.call('HMGET', key, 'id', 'state', 'account', 'submit_uncertain', 'uncertain_ms',
                         'provider_job_id', 'submitted_ms', 'started_ms', 'submit_tries')
    if r[1] == job and r[2] == 'submitting' and r[4] == '1' and r[3] == account
       and tonumber(r[5] or NOW) + grace <= listed_at then
      if not p.lists_refs or tonumber(r[9] or 0) >= tonumber(p.max_tries) then
        note('interrupted', job)
      else
        -- Never accepted: the listing, read well after the attempt, does not show it.
        redis.call('HDEL', key, 'submit_uncertain', 'uncertain_ms')
        redis.call('HSET', key, 'submit_open', '0', 'updated_ms', NOW,
                   'message', 'not accepted by the provider (absent from its listing): submitting again')
        if lease_of(job) then
          renew(job)
          enqueue_submit(job)
          emit(job, 'submitting', 0, account, 'reconcile')
        else
          redis.call('HSET', key, 'state', 'queued')
          move_state_index(job, 'submitting', 'queued')
          enqueue_waiting(job, tonumber(redis.call('HGET', key, 'priority') or 5),
                          tonumber(redis.call('HGET', key, 'created_ms') or NOW),
                          redis.call('HGET', key, 'pinned') or '')
          emit(job, 'queued', 0, account, 'reconcile')
        end
        note('resubmitted', job)
      end
    elseif r[1] == job and r[2] == 'active' and (r[6] or '') ~= '' and lease_of(job) == account then
      local since = tonumber(r[8] or r[7] or NOW)
      if since + grace <= listed_at then
        schedule_poll(job, 0)
        note('checked', job)
      end
    end
  end
end

if foreign > 0 then
  redis.call('HSET', KEYS[K_FOREIGN], account, foreign)
else
  redis.call('HDEL', KEYS[K_FOREIGN], account)
end
forget_learned(account)
-- The account's room from what is held now: the foreign count changed, and lease keys lost to an
-- older snapshot heal here too (O(log n)).
rebuild_room(account, tonumber(redis.call('HGET', KEYS[K_ACCOUNTS], account)))
redis.call('HSET', CAPACITY, account, cjson.encode({
  synced_ms = NOW, listed = #p.entries, foreign = foreign, provider_max = p.provider_max}))
handoff()
out.foreign = foreign
return cjson.encode(out)
