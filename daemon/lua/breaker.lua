-- breaker.lua: record one submit outcome of an account and open its breaker when most recent ones
-- failed with a 5xx or no answer. The breaker is a cooldown (lib.lua cool_down): the account takes
-- no new job until it ends, and the jobs that wait go to the other accounts.
-- KEYS: the prelude layout; KEYS[25]: the account's outcome list (newest first, "<ms>:<1|0>");
-- KEYS[26]: the provider's account events stream.
-- ARGV[2]: account; ARGV[3]: '1' failed (5xx, no answer), '0' ok; ARGV[4]: failures that open it;
-- ARGV[5]: outcomes kept; ARGV[6]: window (ms) the failures must fall in; ARGV[7]: cooldown (ms).
-- Returns {'open', until_ms} (opened now) | {'cooling', until_ms} (the account cools down already)
-- | {'closed'} | {'unknown'} (not configured).
-- O(ARGV[5]) whatever the number of accounts: one short list per account.

local account = ARGV[2]
if redis.call('HEXISTS', KEYS[K_ACCOUNTS], account) == 0 then return {'unknown'} end
local list = KEYS[FIXED + 1]
local keep, window = tonumber(ARGV[5]), tonumber(ARGV[6])
if ARGV[3] == '0' then
  -- A success matters only while failures are remembered; otherwise nothing is written.
  if redis.call('EXISTS', list) == 1 then
    redis.call('LPUSH', list, NOW .. ':0')
    redis.call('LTRIM', list, 0, keep - 1)
    redis.call('PEXPIRE', list, window)
  end
  return {'closed'}
end
redis.call('LPUSH', list, NOW .. ':1')
redis.call('LTRIM', list, 0, keep - 1)
redis.call('PEXPIRE', list, window)
local failed = 0
for _, entry in ipairs(redis.call('LRANGE', list, 0, keep - 1)) do
  local at, bad = string.match(entry, '^(%d+):(%d)$')
  if bad == '1' and tonumber(at) >= NOW - window then failed = failed + 1 end
end
local current = tonumber(redis.call('ZSCORE', KEYS[K_COOLDOWN], account) or 0)
if failed >= tonumber(ARGV[4]) then
  local until_ms = NOW + tonumber(ARGV[7])
  redis.call('DEL', list)
  cool_down(account, until_ms)
  redis.call('XADD', KEYS[FIXED + 2], 'MAXLEN', '~', 10000, '*', 'account', account,
             'event', 'breaker_open', 'reason', failed .. ' of the last ' .. keep .. ' submits failed',
             'ts', tostring(NOW))
  return {'open', tostring(math.max(until_ms, current))}
end
if current > NOW then return {'cooling', tostring(current)} end
return {'closed'}
