-- lib.lua: shared prelude of every slot-aware script; prepended to the script text at load time.
-- Slot layout 3 (docs/slots.md): every index is per provider and every helper does O(log n) work,
-- whatever the number of accounts or the length of the queue.
--
-- KEYS (all hash-tagged {provider} except the arq queue):
--   1  accounts        hash    account -> maxJobs
--   2  disabled        hash    account -> reason (present = disabled)
--   3  cooldown        zset    account -> cooling down until (ms); present only while cooling down
--   4  waiting         zset    unpinned waiting job -> (9 - priority) * 1e13 + arrival ms (lowest first)
--   5  pins            hash    pinned waiting job -> its member in waiting_pinned
--   6  events          stream  one entry per transition: job, state, progress, account, source
--   7  polls           zset    job -> next poll due (ms, whole); while a worker polls it, its claim's
--                              expiry + 0.5 (the half marks a claim; one a dead worker left is due
--                              again when it expires)
--   8  polling         zset    layout 2 only (claims were kept apart); emptied by the upgrade
--   9  expired         list    jobs whose lease expired (the sweep fails them)
--   10 index           zset    job -> created (ms)
--   11..16 state zsets         queued, submitting, active, completed, failed, canceled: job -> updated (ms)
--   17 arq queue       zset    arq job id -> run at (ms)
--   18 foreign         hash    account -> slots taken at the provider by jobs that hold no lease of ours
--                              (written only by reconcile.lua, from the provider's own listing)
--   19 leases          zset    job -> lease expiry (ms): one index for every account of the provider
--   20 lease_account   hash    job -> account its lease is on
--   21 held_by         zset    score 0, "<account>\n<job>": the leases of one account by lex range
--   22 room            zset    account -> maxJobs - foreign - learned - leases - 1e9 if disabled - 1e6 if
--                              cooling down: free slots where positive; one member per account
--   23 waiting_pinned  zset    score 0, "<account>\n<16-digit waiting score>\n<job>": per-account queues
--   24 pinned_ready    zset    account -> score of its pinned queue's head, for exactly the accounts
--                              with room > 0 and a pinned job waiting
--   25 learned         hash    account -> slots the provider refused with a concurrency 429 beyond
--                              our count (someone else runs jobs on the key): the effective slot
--                              count is maxJobs - learned, never below 1; absent = none
--   26 learned_due     zset    account -> when one learned slot comes back (ms), for exactly the
--                              accounts with learned slots
--   27..               the script's own keys (the job hash, when it is about one job)
-- ARGV[1]: JSON config {lease_ms, events_maxlen, retention_s, recovery_ms (the quiet period after
--          which one learned slot comes back), now_ms (tests only; production uses the Redis
--          server clock)}

local K_ACCOUNTS, K_DISABLED, K_COOLDOWN, K_WAITING, K_PINS = 1, 2, 3, 4, 5
local K_EVENTS, K_POLLS, K_POLLING, K_EXPIRED, K_INDEX = 6, 7, 8, 9, 10
local K_STATE = {queued = 11, submitting = 12, active = 13, completed = 14, failed = 15, canceled = 16}
local K_ARQ, K_FOREIGN = 17, 18
local K_LEASES, K_LEASE_ACCOUNT, K_HELD_BY, K_ROOM, K_PINNED, K_PINNED_READY = 19, 20, 21, 22, 23, 24
local K_LEARNED, K_LEARNED_DUE = 25, 26
local FIXED = 26
local RANK = {queued = 0, submitting = 1, active = 2, completed = 3, failed = 3, canceled = 3}
local BAND = 1e13
local DISABLED_OFFSET, COOLING_OFFSET = 1e9, 1e6
-- Accounts whose room is above this are enabled (cooling down or not).
local ENABLED_FLOOR = -DISABLED_OFFSET / 2
-- Expired leases freed per script call; the rest go at the next call.
local SETTLE_BATCH = 1000
local HANDOFF_BATCH = 500

local cfg = cjson.decode(ARGV[1])
local JOB_KEY = KEYS[FIXED + 1]

local function now_ms()
  if cfg.now_ms then return tonumber(cfg.now_ms) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local NOW = now_ms()

local function emit(job, state, progress, account, source, extra)
  local entry = {'job', job, 'state', state, 'progress', tostring(progress or 0),
                 'account', account or '', 'source', source or '', 'ts', tostring(NOW)}
  if extra then for _, v in ipairs(extra) do entry[#entry + 1] = v end end
  redis.call('XADD', KEYS[K_EVENTS], 'MAXLEN', '~', cfg.events_maxlen, '*', unpack(entry))
end

-- The lex range of the members of one account in held_by / waiting_pinned ("<account>\n...").
local function lex_range(account)
  return '[' .. account .. '\n', '(' .. account .. '\11'
end

local function pinned_head(account)
  local low, high = lex_range(account)
  return redis.call('ZRANGEBYLEX', KEYS[K_PINNED], low, high, 'LIMIT', 0, 1)[1]
end

-- Whether any pinned job waits, read once per script (HLEN) and set when a job is pinned: with
-- none, pinned_ready is empty and its upkeep is skipped.
local pins_waiting = nil
local function any_pinned()
  if pins_waiting == nil then pins_waiting = redis.call('HLEN', KEYS[K_PINS]) > 0 end
  return pins_waiting
end

-- Keep pinned_ready true for one account; ``room`` when the caller knows it.
local function refresh_pinned_ready(account, room)
  if not any_pinned() then return end
  if room == nil then room = tonumber(redis.call('ZSCORE', KEYS[K_ROOM], account) or 0) end
  local head = room > 0 and pinned_head(account) or nil
  if head then
    redis.call('ZADD', KEYS[K_PINNED_READY], tonumber(string.match(head, '\n(%d+)\n')), account)
  else
    redis.call('ZREM', KEYS[K_PINNED_READY], account)
  end
end

-- Every change of an account's slots goes through here: one ZADD XX INCR (an account no longer
-- configured has no member and is left out), and pinned_ready only when free slots appear or vanish.
local function adjust_room(account, delta)
  local after = redis.call('ZADD', KEYS[K_ROOM], 'XX', 'INCR', delta, account)
  if not after then return nil end
  after = tonumber(after)
  if (after - delta > 0) ~= (after > 0) then refresh_pinned_ready(account, after) end
  return after
end

local function lease_of(job)
  return redis.call('HGET', KEYS[K_LEASE_ACCOUNT], job) or nil
end

local function drop_lease(job, account)
  redis.call('ZREM', KEYS[K_LEASES], job)
  redis.call('HDEL', KEYS[K_LEASE_ACCOUNT], job)
  redis.call('ZREM', KEYS[K_HELD_BY], account .. '\n' .. job)
  adjust_room(account, 1)
end

local function add_lease(job, account)
  redis.call('ZADD', KEYS[K_LEASES], NOW + cfg.lease_ms, job)
  redis.call('HSET', KEYS[K_LEASE_ACCOUNT], job, account)
  redis.call('ZADD', KEYS[K_HELD_BY], 0, account .. '\n' .. job)
  return adjust_room(account, -1)
end

-- Learned slots (a concurrency 429 lowered the account's effective count) come back one per quiet
-- period: the k-th comes back k periods after the last such 429, whenever a script settles it, so
-- what the web shows (daemon/slots.py learned_now) and what the scripts apply always agree.
local function learned_of(account)
  return tonumber(redis.call('HGET', KEYS[K_LEARNED], account) or 0)
end

local function forget_learned(account)
  redis.call('HDEL', KEYS[K_LEARNED], account)
  redis.call('ZREM', KEYS[K_LEARNED_DUE], account)
end

local function settle_learned()
  local due = redis.call('ZRANGEBYSCORE', KEYS[K_LEARNED_DUE], '-inf', NOW, 'WITHSCORES')
  local period = math.max(1, tonumber(cfg.recovery_ms or 120000))
  for i = 1, #due, 2 do
    local account, at = due[i], tonumber(due[i + 1])
    local learned = learned_of(account)
    local back = math.min(learned, 1 + math.floor((NOW - at) / period))
    if back >= learned then
      forget_learned(account)
    else
      redis.call('HSET', KEYS[K_LEARNED], account, learned - back)
      redis.call('ZADD', KEYS[K_LEARNED_DUE], at + back * period, account)
    end
    if back > 0 then adjust_room(account, back) end
  end
end

-- The provider refused a submit with a concurrency 429 (its slots are all in use: someone else
-- runs jobs on the key): the account's effective count drops by one, never below one, and the
-- quiet period starts again. Returns true when the count dropped.
local function learn_busy(account)
  local max_jobs = tonumber(redis.call('HGET', KEYS[K_ACCOUNTS], account) or 0)
  local learned = learned_of(account)
  local lowered = learned < max_jobs - 1
  if lowered then
    learned = learned + 1
    redis.call('HSET', KEYS[K_LEARNED], account, learned)
    adjust_room(account, -1)
  end
  if learned > 0 then
    redis.call('ZADD', KEYS[K_LEARNED_DUE], NOW + math.max(1, tonumber(cfg.recovery_ms or 120000)), account)
  end
  return lowered
end

-- Leases past their expiry free their slot now (the job is left for the sweep to fail), and
-- cooldowns that are over give their account back. One range read each, whatever the pool.
local settled = false
local function drop_expired()
  if settled then return end
  settled = true
  local gone = redis.call('ZRANGEBYSCORE', KEYS[K_LEASES], '-inf', NOW, 'LIMIT', 0, SETTLE_BATCH)
  for _, job in ipairs(gone) do
    local account = lease_of(job)
    if account then drop_lease(job, account) else redis.call('ZREM', KEYS[K_LEASES], job) end
    redis.call('RPUSH', KEYS[K_EXPIRED], job)
    emit(job, 'lease_expired', 0, account, 'lease')
  end
  local cooled = redis.call('ZRANGEBYSCORE', KEYS[K_COOLDOWN], '-inf', NOW)
  for _, account in ipairs(cooled) do
    redis.call('ZREM', KEYS[K_COOLDOWN], account)
    adjust_room(account, COOLING_OFFSET)
  end
  settle_learned()
end

local function cool_down(account, until_ms)
  if until_ms <= NOW then return end
  local current = redis.call('ZSCORE', KEYS[K_COOLDOWN], account)
  if not current then
    redis.call('ZADD', KEYS[K_COOLDOWN], until_ms, account)
    adjust_room(account, -COOLING_OFFSET)
  elseif until_ms > tonumber(current) then
    redis.call('ZADD', KEYS[K_COOLDOWN], until_ms, account)
  end
end

local function end_cooldown(account)
  if redis.call('ZREM', KEYS[K_COOLDOWN], account) == 1 then adjust_room(account, COOLING_OFFSET) end
end

-- True when the account was enabled until now.
local function disable(account, reason)
  if redis.call('HSET', KEYS[K_DISABLED], account, reason) == 1 then
    adjust_room(account, -DISABLED_OFFSET)
    return true
  end
  return false
end

local function enable(account)
  if redis.call('HDEL', KEYS[K_DISABLED], account) == 1 then adjust_room(account, DISABLED_OFFSET) end
end

-- The account's room from scratch (the accounts file changed, or an upgrade): O(log n). A lowered
-- maxJobs lowers the learned slots with it (the effective count stays at least one).
local function rebuild_room(account, max_jobs)
  local low, high = lex_range(account)
  local learned = learned_of(account)
  if learned > 0 and learned > max_jobs - 1 then
    learned = math.max(0, max_jobs - 1)
    if learned == 0 then forget_learned(account) else redis.call('HSET', KEYS[K_LEARNED], account, learned) end
  end
  local room = max_jobs - tonumber(redis.call('HGET', KEYS[K_FOREIGN], account) or 0) - learned
               - redis.call('ZLEXCOUNT', KEYS[K_HELD_BY], low, high)
  if redis.call('HEXISTS', KEYS[K_DISABLED], account) == 1 then room = room - DISABLED_OFFSET end
  if redis.call('ZSCORE', KEYS[K_COOLDOWN], account) then room = room - COOLING_OFFSET end
  redis.call('ZADD', KEYS[K_ROOM], room, account)
  refresh_pinned_ready(account, room)
end

-- The eligible account with the most free slots (ties: the last by name, so grants in a row spread).
local function best_account()
  local top = redis.call('ZREVRANGE', KEYS[K_ROOM], 0, 0, 'WITHSCORES')
  if top[1] and tonumber(top[2]) > 0 then return top[1] end
  return nil
end

local function choose_account(pinned)
  if pinned and pinned ~= '' then
    if tonumber(redis.call('ZSCORE', KEYS[K_ROOM], pinned) or 0) > 0 then return pinned end
    return nil
  end
  return best_account()
end

-- The tasks scheduled here carry their arguments in their id and have no payload key
-- (daemon/tasks.py, task_from_id): submit:<job>:<ms> runs TASK_SUBMIT(job), deliver:<job>:<seq>
-- runs TASK_DELIVER(job, seq). NX: a task already on the queue (taken, running) keeps its score.
local function enqueue_submit(job)
  redis.call('ZADD', KEYS[K_ARQ], 'NX', NOW, 'submit:' .. job .. ':' .. NOW)
end

-- Tell the app: when it gave its own replyUrl, a terminal transition (and, if it asked, progress)
-- enqueues one delivery task. The arq id names the record's sequence number, so a delivery is
-- enqueued once per transition however often the script is retried.
local function notify_app(job, terminal, known)
  -- ``known``: {reply_url, notify_progress, seq} when the caller has read them already.
  local f = known or redis.call('HMGET', JOB_KEY, 'reply_url', 'notify_progress', 'seq')
  if (f[1] or '') == '' then return end
  if not terminal and f[2] ~= '1' then return end
  redis.call('ZADD', KEYS[K_ARQ], 'NX', NOW, 'deliver:' .. job .. ':' .. tostring(f[3] or '0'))
end

-- Returns the account's room after the grant.
local function grant(account, job)
  local room = add_lease(job, account)
  enqueue_submit(job)
  emit(job, 'dispatched', 0, account, 'slots')
  return room
end

local function waiting_score(priority, arrival_ms)
  return (9 - priority) * BAND + arrival_ms
end

local function is_waiting(job)
  return redis.call('ZSCORE', KEYS[K_WAITING], job) or redis.call('HEXISTS', KEYS[K_PINS], job) == 1
end

-- Take a job out of whichever queue holds it; true when it was waiting.
local function leave_queue(job)
  if redis.call('ZREM', KEYS[K_WAITING], job) == 1 then return true end
  local member = redis.call('HGET', KEYS[K_PINS], job)
  if not member then return false end
  pins_waiting = true  -- for the upkeep just below: the account's queue had this job
  redis.call('HDEL', KEYS[K_PINS], job)
  redis.call('ZREM', KEYS[K_PINNED], member)
  local account = string.match(member, '^(.-)\n')
  if redis.call('ZSCORE', KEYS[K_PINNED_READY], account) then refresh_pinned_ready(account) end
  pins_waiting = nil  -- it may have been the last pinned job: counted again when asked
  return true
end

-- Hand every free slot to the waiting jobs, best first: the head of the unpinned queue (to the
-- account with the most room) or, when better, the head of an account's pinned queue that has room.
-- Runs in the same script as whatever freed the slot, so dispatch follows the event instead of a
-- loop polling the queue. Each grant costs a few O(log n) reads; jobs pinned to full accounts are
-- never looked at, and it stops once no account has room left. When no job waits it stops after
-- one read of the queue's head and one count of the pins: expired leases and ended cooldowns are
-- then settled by the next script that picks an account, or by the sweep.
local function handoff()
  local pinned = any_pinned()
  -- The head of the unpinned queue, read once here for the first turn (settling expired leases
  -- does not change the queue).
  local head = redis.call('ZRANGE', KEYS[K_WAITING], 0, 0, 'WITHSCORES')
  if not settled and not pinned and not head[1] then return end
  drop_expired()
  for turn = 1, HANDOFF_BATCH do
    if turn > 1 then head = redis.call('ZRANGE', KEYS[K_WAITING], 0, 0, 'WITHSCORES') end
    local ready = pinned and redis.call('ZRANGE', KEYS[K_PINNED_READY], 0, 0, 'WITHSCORES') or {}
    if ready[1] and (not head[1] or tonumber(ready[2]) < tonumber(head[2])) then
      local account = ready[1]
      local member = pinned_head(account)
      local job = string.match(member, '\n%d+\n(.*)$')
      redis.call('ZREM', KEYS[K_PINNED], member)
      redis.call('HDEL', KEYS[K_PINS], job)
      refresh_pinned_ready(account, grant(account, job))
    elseif head[1] then
      -- The two accounts with the most room: the first takes the job; when it had one slot and the
      -- runner-up none, no account has room left and the hand-off is over.
      local top = redis.call('ZREVRANGE', KEYS[K_ROOM], 0, 1, 'WITHSCORES')
      if not top[1] or tonumber(top[2]) <= 0 then return end
      redis.call('ZREM', KEYS[K_WAITING], head[1])
      grant(top[1], head[1])
      if tonumber(top[2]) <= 1 and (not top[3] or tonumber(top[4]) <= 0) then return end
    else
      return
    end
  end
end

-- Extend the job's lease; ZADD XX never creates a lease that is not there.
local function renew(job)
  redis.call('ZADD', KEYS[K_LEASES], 'XX', NOW + cfg.lease_ms, job)
end

-- Renew only once an eighth of the lease has passed, not at every sign of life. ``lease_until`` is
-- the expiry the job's record keeps ('lease_until', written with each renewal it makes; never later
-- than the lease itself, so a stale value only renews early). Returns the new expiry, or nil.
local function renew_due(job, lease_until)
  local left = (tonumber(lease_until or '') or 0) - NOW
  if left > cfg.lease_ms * 7 / 8 and left <= cfg.lease_ms then return nil end
  renew(job)
  return NOW + cfg.lease_ms
end

local function release(job)
  local account = lease_of(job)
  if account then drop_lease(job, account) end
  return account
end

local function move_state_index(job, old, new)
  if old and old ~= new and K_STATE[old] then redis.call('ZREM', KEYS[K_STATE[old]], job) end
  redis.call('ZADD', KEYS[K_STATE[new]], NOW, job)
end

-- The job's next poll, replacing a poller's claim on it (a poll still in flight at that moment
-- only reads the status once more, which is harmless).
local function schedule_poll(job, delay_ms)
  redis.call('ZADD', KEYS[K_POLLS], NOW + delay_ms, job)
end

-- Whether a poller holds a claim on the job (its poll's score carries the claim's half).
local function poll_claimed(job)
  local score = tonumber(redis.call('ZSCORE', KEYS[K_POLLS], job) or '')
  return score ~= nil and score % 1 ~= 0
end

-- ``state``: the job's state when the caller knows it; only a queued job can be in line.
local function unschedule(job, state)
  redis.call('ZREM', KEYS[K_POLLS], job)
  if state == nil or state == 'queued' then leave_queue(job) end
end

-- Put a job in line (a job back in line keeps its original arrival time: head of its band).
local function enqueue_waiting(job, priority, created_ms, pinned)
  local score = waiting_score(priority, created_ms)
  if pinned and pinned ~= '' then
    leave_queue(job)
    local member = pinned .. '\n' .. string.format('%016.0f', score) .. '\n' .. job
    pins_waiting = true
    redis.call('ZADD', KEYS[K_PINNED], 0, member)
    redis.call('HSET', KEYS[K_PINS], job, member)
    refresh_pinned_ready(pinned)
  else
    redis.call('ZADD', KEYS[K_WAITING], score, job)
  end
end
