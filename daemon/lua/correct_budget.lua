-- correct_budget.lua: make a budget window count at least as many requests as the provider says
-- it counts (its limit minus the remaining it reported): requests made elsewhere with the same key,
-- or by the same organisation, take from the budget too.
-- KEYS[1] zset  request id -> when it was taken (ms, Redis clock): the window's requests
-- ARGV[1] window (ms); ARGV[2] the requests the provider counts in its window now; ARGV[3] a
-- unique id prefix for the requests added
-- Returns how many requests were added (each dated now: they leave the window a whole window on).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local missing = math.min(tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1]), 10000)
for i = 1, missing do
  redis.call('ZADD', KEYS[1], now, ARGV[3] .. ':' .. i)
end
if missing > 0 then
  redis.call('PEXPIRE', KEYS[1], window)
  return missing
end
return 0
