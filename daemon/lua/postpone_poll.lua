-- postpone_poll.lua: a claimed poll that was not made (no request budget left) is due again later.
-- KEYS[1] polls    zset job -> due (ms); a claimed poll: its claim's expiry + 0.5
-- ARGV[1] job id; ARGV[2] delay (ms)
-- Only while the poll is still claimed (a job that ended, or that a callback made due meanwhile,
-- is left alone). The lease is not renewed: nothing was heard from the provider.

local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '')
if not score or score % 1 == 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
