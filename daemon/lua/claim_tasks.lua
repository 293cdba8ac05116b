-- claim_tasks.lua: a worker takes arq tasks it read as due, so no two workers run one task and a
-- running task drops out of every worker's next look at the queue.
-- KEYS[1] the arq queue   zset task id -> run at (ms)
-- ARGV[1] arq's in-progress key prefix; ARGV[2] how long a taken task is held (ms, arq's
--         in-progress timeout); ARGV[3] now (ms, the worker's clock, the one its read used);
--         ARGV[4..] the task ids the worker read as due
-- A task is taken when it is still on the queue, due, and held by no worker: its in-progress key
-- is set for ARGV[2] ms and its queue score moved to now + ARGV[2], the moment that key expires,
-- so a task whose worker died is due again exactly when arq would run it again. The task's own
-- end (arq's finish: removed from the queue, or a retry's ZINCRBY) works from that score.
-- Returns {id1, score1, id2, score2, ...} for the tasks taken.

local prefix, hold_ms, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV do
  local task = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], task)
  if score and tonumber(score) <= now and redis.call('EXISTS', prefix .. task) == 0 then
    redis.call('SET', prefix .. task, '1', 'PX', hold_ms)
    redis.call('ZADD', KEYS[1], 'XX', now + hold_ms, task)
    out[#out + 1] = task
    out[#out + 1] = tostring(now + hold_ms)
  end
end
return out
