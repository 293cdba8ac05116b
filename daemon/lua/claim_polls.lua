-- claim_polls.lua: take the polls that are due, so no two workers poll the same job at once.
-- KEYS[1] polls    zset job -> due (ms, whole); a claimed poll: its claim's expiry + 0.5
-- KEYS[2] polling  zset job -> claim expiry (ms): claims a process of slot layout 2 made
-- ARGV[1] batch size; ARGV[2] claim duration (ms); ARGV[3] now (ms, the caller's clock);
-- ARGV[4] '1': also give back the expired claims in KEYS[2] (callers do it every few seconds)
-- Returns {now, next_due or '', job1, due1, job2, due2, ...}
-- One read of the head of the schedule (batch + 1 entries) finds both the due polls and the next
-- one not due yet. A claim moves the poll's score to the claim's expiry, with the half that marks
-- it: it leaves every read while it is made, and when its worker died it is due again then.

local now = tonumber(ARGV[3])
if ARGV[4] ~= '0' then
  local abandoned = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, job in ipairs(abandoned) do
    redis.call('ZADD', KEYS[1], now, job)
  end
  if #abandoned > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) end
end

local batch = tonumber(ARGV[1])
local head = redis.call('ZRANGE', KEYS[1], 0, batch, 'WITHSCORES')
local out = {tostring(now), ''}
local held = now + tonumber(ARGV[2]) + 0.5
for k = 1, #head, 2 do
  if tonumber(head[k + 1]) > now or (k + 1) / 2 > batch then
    out[2] = tostring(math.floor(tonumber(head[k + 1])))
    break
  end
  redis.call('ZADD', KEYS[1], held, head[k])
  out[#out + 1] = head[k]
  out[#out + 1] = tostring(math.floor(tonumber(head[k + 1])))
end
return out
