-- lib.lua: shared prelude of every slot-aware script; prepended to the script text at load time.
--
-- KEYS (all hash-tagged {provider} except the arq queue):
--   1  accounts   hash    account -> maxJobs
--   2  disabled   hash    account -> reason (present = disabled)
--   3  cooldown   zset    account -> cooling down until (ms)
--   4  waiting    zset    job -> (9 - priority) * 1e13 + arrival ms  (lowest first)
--   5  pins       hash    job -> account a waiting job is pinned to
--   6  events     stream  one entry per transition: job, state, progress, account, source
--   7  polls      zset    job -> next poll due (ms)
--   8  polling    zset    job -> claim expiry (ms) while a worker polls it
--   9  expired    list    jobs whose lease expired (the sweep fails them)
--   10 index      zset    job -> created (ms)
--   11..16 state zsets    queued, submitting, active, completed, failed, canceled: job -> updated (ms)
--   17 arq queue  zset    arq job id -> run at (ms)
--   18 foreign    hash    account -> slots taken at the provider by jobs that hold no lease of ours
--                         (written only by reconcile.lua, from the provider's own listing)
--   19..18+N  leases      zset per account (same order as cfg.accounts): job -> lease expiry (ms)
--   19+N      job hash    the job the script is about, when it has one
-- ARGV[1]: JSON config {accounts=[names], lease_ms, arq_prefix, arq_expiry_ms, events_maxlen,
--          retention_s, now_ms (tests only; production uses the Redis server clock), rand}

local K_ACCOUNTS, K_DISABLED, K_COOLDOWN, K_WAITING, K_PINS = 1, 2, 3, 4, 5
local K_EVENTS, K_POLLS, K_POLLING, K_EXPIRED, K_INDEX = 6, 7, 8, 9, 10
local K_STATE = {queued = 11, submitting = 12, active = 13, completed = 14, failed = 15, canceled = 16}
local K_ARQ, K_FOREIGN = 17, 18
local FIXED = 18
local RANK = {queued = 0, submitting = 1, active = 2, completed = 3, failed = 3, canceled = 3}
local BAND = 1e13

local cfg = cjson.decode(ARGV[1])
local N = #cfg.accounts
local JOB_KEY = KEYS[FIXED + N + 1]

local function now_ms()
  if cfg.now_ms then return tonumber(cfg.now_ms) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local NOW = now_ms()

local function lease_key(i) return KEYS[FIXED + i] end

local function emit(job, state, progress, account, source, extra)
  local entry = {'job', job, 'state', state, 'progress', tostring(progress or 0),
                 'account', account or '', 'source', source or '', 'ts', tostring(NOW)}
  if extra then for _, v in ipairs(extra) do entry[#entry + 1] = v end end
  redis.call('XADD', KEYS[K_EVENTS], 'MAXLEN', '~', cfg.events_maxlen, '*', unpack(entry))
end

-- Leases past their expiry free their slot now; the job is left for the sweep to fail.
local function drop_expired()
  for i = 1, N do
    local gone = redis.call('ZRANGEBYSCORE', lease_key(i), '-inf', NOW)
    if #gone > 0 then
      redis.call('ZREMRANGEBYSCORE', lease_key(i), '-inf', NOW)
      for _, job in ipairs(gone) do
        redis.call('RPUSH', KEYS[K_EXPIRED], job)
        emit(job, 'lease_expired', 0, cfg.accounts[i], 'lease')
      end
    end
  end
end

local function lease_of(job)
  for i = 1, N do
    if redis.call('ZSCORE', lease_key(i), job) then return i end
  end
  return nil
end

local function free_slots(i)
  local name = cfg.accounts[i]
  local max = tonumber(redis.call('HGET', KEYS[K_ACCOUNTS], name) or 0)
  if max <= 0 or redis.call('HEXISTS', KEYS[K_DISABLED], name) == 1 then return 0 end
  local until_ms = tonumber(redis.call('ZSCORE', KEYS[K_COOLDOWN], name) or 0)
  if until_ms > NOW then return 0 end
  local foreign = tonumber(redis.call('HGET', KEYS[K_FOREIGN], name) or 0)
  return max - foreign - redis.call('ZCARD', lease_key(i))
end

-- The eligible account with the most free slots; ties go to a random one so load spreads.
-- ``free`` (optional): free slots by account index, already read (hand-off keeps a running count).
local function choose_account(pinned, free)
  local best_free, best = 0, {}
  for i = 1, N do
    if pinned == nil or pinned == false or pinned == '' or pinned == cfg.accounts[i] then
      local room = free and free[i] or free_slots(i)
      if room > best_free then
        best_free, best = room, {i}
      elseif room == best_free and room > 0 then
        best[#best + 1] = i
      end
    end
  end
  if #best == 0 then return nil end
  return best[(cfg.rand % #best) + 1]
end

local function enqueue_submit(job)
  local arq_id = 'submit:' .. job .. ':' .. NOW
  local payload = '{"t":null,"f":"' .. TASK_SUBMIT .. '","a":[' .. cjson.encode(job) .. '],"k":{},"et":' .. NOW .. '}'
  redis.call('SET', cfg.arq_prefix .. arq_id, payload, 'PX', cfg.arq_expiry_ms)
  redis.call('ZADD', KEYS[K_ARQ], NOW, arq_id)
end

-- Tell the app: when it gave its own replyUrl, a terminal transition (and, if it asked, progress)
-- enqueues one delivery task. The arq id names the record's sequence number, so a delivery is
-- enqueued once per transition however often the script is retried.
local function notify_app(job, terminal, known)
  -- ``known``: {reply_url, notify_progress, seq} when the caller has read them already.
  local f = known or redis.call('HMGET', JOB_KEY, 'reply_url', 'notify_progress', 'seq')
  if (f[1] or '') == '' then return end
  if not terminal and f[2] ~= '1' then return end
  local seq = tostring(f[3] or '0')
  local arq_id = 'deliver:' .. job .. ':' .. seq
  local payload = '{"t":null,"f":"' .. TASK_DELIVER .. '","a":[' .. cjson.encode(job) .. ',' .. seq .. '],"k":{},"et":' .. NOW .. '}'
  redis.call('SET', cfg.arq_prefix .. arq_id, payload, 'PX', cfg.arq_expiry_ms)
  redis.call('ZADD', KEYS[K_ARQ], NOW, arq_id)
end

local function grant(i, job)
  redis.call('ZADD', lease_key(i), NOW + cfg.lease_ms, job)
  enqueue_submit(job)
  emit(job, 'dispatched', 0, cfg.accounts[i], 'slots')
end

local function waiting_score(priority, arrival_ms)
  return (9 - priority) * BAND + arrival_ms
end

-- Hand every free slot to the waiting jobs, head of the queue first. Runs in the same script as
-- whatever freed the slot, so dispatch follows the event instead of a loop polling the queue.
local function handoff()
  drop_expired()
  -- Free slots are read once and counted down as they are granted: nothing else changes them
  -- inside this script, and a backlog then costs one ZRANGE per 50 waiting jobs, not a read of
  -- every account per job.
  local free, total = {}, 0
  for i = 1, N do
    free[i] = math.max(0, free_slots(i))
    total = total + free[i]
  end
  local scanned, offset = 0, 0
  while scanned < 500 and total > 0 do
    local batch = redis.call('ZRANGE', KEYS[K_WAITING], offset, offset + 49)
    if #batch == 0 then return end
    for _, job in ipairs(batch) do
      if total <= 0 then return end
      scanned = scanned + 1
      local i = choose_account(redis.call('HGET', KEYS[K_PINS], job), free)
      if i then
        redis.call('ZREM', KEYS[K_WAITING], job)
        redis.call('HDEL', KEYS[K_PINS], job)
        grant(i, job)
        free[i] = free[i] - 1
        total = total - 1
      else
        offset = offset + 1
      end
    end
  end
end

-- Extend the job's lease; ``account`` (the job's record says which) saves looking in every
-- account's lease set. ZADD XX never creates a lease that is not there.
local function renew(job, account)
  if account and account ~= '' then
    for i = 1, N do
      if cfg.accounts[i] == account then
        redis.call('ZADD', lease_key(i), 'XX', NOW + cfg.lease_ms, job)
        return i
      end
    end
  end
  local i = lease_of(job)
  if i then redis.call('ZADD', lease_key(i), 'XX', NOW + cfg.lease_ms, job) end
  return i
end

local function release(job)
  local i = lease_of(job)
  if i then
    redis.call('ZREM', lease_key(i), job)
    return cfg.accounts[i]
  end
  return nil
end

local function move_state_index(job, old, new)
  if old and old ~= new and K_STATE[old] then redis.call('ZREM', KEYS[K_STATE[old]], job) end
  redis.call('ZADD', KEYS[K_STATE[new]], NOW, job)
end

local function schedule_poll(job, delay_ms)
  redis.call('ZREM', KEYS[K_POLLING], job)
  redis.call('ZADD', KEYS[K_POLLS], NOW + delay_ms, job)
end

local function unschedule(job)
  redis.call('ZREM', KEYS[K_POLLS], job)
  redis.call('ZREM', KEYS[K_POLLING], job)
  redis.call('ZREM', KEYS[K_WAITING], job)
  redis.call('HDEL', KEYS[K_PINS], job)
end

-- Put a job back in line (head of its priority band: it keeps its original arrival time).
local function enqueue_waiting(job, priority, created_ms, pinned)
  redis.call('ZADD', KEYS[K_WAITING], waiting_score(priority, created_ms), job)
  if pinned and pinned ~= '' then redis.call('HSET', KEYS[K_PINS], job, pinned) end
end
