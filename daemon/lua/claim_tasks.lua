-- claim_tasks.lua: a worker takes the tasks it read as due, so no two workers run one task, a
-- running task drops out of every worker's next look at the queue, and the worker gets what it
-- needs to run them (payload, attempt) in the same call.
-- KEYS[1] the task queue  zset task id -> run at (ms)
-- KEYS[2] reruns          hash task id -> runs so far beyond the first (only tasks run again)
-- ARGV[1] the payload key prefix (arq's 'arq:job:'); ARGV[2] how long a taken task is held (ms,
--         longer than the task may run); ARGV[3] now (ms, the worker's clock, the one its read
--         used); ARGV[4..] the task ids the worker read as due
-- A task is taken when it is still on the queue and due: its score moves to now + ARGV[2] + 0.5,
-- so it leaves every read while it runs and, when its worker died, is due again once the hold
-- is over. The half millisecond marks a task that was taken before (or put back by its worker
-- to run again): taking it again counts a rerun, so the first run of a task costs no write
-- beyond its new score.
-- The tasks the slot scripts schedule carry their arguments in their id and have no payload
-- (daemon/tasks.py): submit:<job>:<ms>, deliver:<job>:<seq>[:archived] are not looked up.
-- Returns {id1, payload1 or false, attempt1, id2, ...} for the tasks taken (attempt 1 = first run).

local prefix, hold_ms, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV do
  local task = ARGV[i]
  local score = tonumber(redis.call('ZSCORE', KEYS[1], task) or '')
  if score and score <= now then
    redis.call('ZADD', KEYS[1], 'XX', now + hold_ms + 0.5, task)
    local attempt = 1
    if score % 1 ~= 0 then attempt = 1 + redis.call('HINCRBY', KEYS[2], task, 1) end
    out[#out + 1] = task
    if string.find(task, '^submit:[^:]+:%d+$') or string.find(task, '^deliver:[^:]+:%d+$')
        or string.find(task, '^deliver:[^:]+:%d+:archived$') then
      out[#out + 1] = false
    else
      out[#out + 1] = redis.call('GET', prefix .. task)
    end
    out[#out + 1] = attempt
  end
end
return out
