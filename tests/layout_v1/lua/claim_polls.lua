-- claim_polls.lua: take the polls that are due, so no two workers poll the same job at once.
-- KEYS[1] polls    zset job -> due (ms)
-- KEYS[2] polling  zset job -> claim expiry (ms): a claim a dead worker left comes back when it expires
-- ARGV[1] batch size; ARGV[2] claim duration (ms); ARGV[3] now (ms, tests only; '' = Redis clock)
-- Returns {now, next_due or '', job1, due1, job2, due2, ...}

local now
if ARGV[3] ~= '' then now = tonumber(ARGV[3]) else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local abandoned = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, job in ipairs(abandoned) do
  redis.call('ZADD', KEYS[1], now, job)
end
if #abandoned > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local out = {tostring(now), ''}
local claim_until = now + tonumber(ARGV[2])
for k = 1, #due, 2 do
  redis.call('ZREM', KEYS[1], due[k])
  redis.call('ZADD', KEYS[2], claim_until, due[k])
  out[#out + 1] = due[k]
  out[#out + 1] = due[k + 1]
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt > 0 then out[2] = nxt[2] end
return out
