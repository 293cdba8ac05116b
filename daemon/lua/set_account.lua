-- set_account.lua: an operator enables or disables an account, or the account probe enables one
-- whose key works again. Enabling also clears its cooldown and hands its slots to the waiting jobs
-- at once.
-- KEYS: the prelude layout (no job hash); KEYS[25], when given: the provider's account events
-- stream (an entry for an account the probe enabled).
-- ARGV[2]: account; ARGV[3]: '' to enable, else the reason; ARGV[4] (optional, enable only): enable
-- only while the account is still disabled for exactly this reason (the probe's: an account an
-- operator disabled meanwhile stays disabled).
-- Returns 1 when the account exists (and, with ARGV[4], was enabled), 0 when it does not exist,
-- 2 when ARGV[4] no longer matches (nothing changed).

local name = ARGV[2]
if redis.call('HEXISTS', KEYS[K_ACCOUNTS], name) == 0 then return 0 end
local expected = ARGV[4] or ''
if ARGV[3] == '' then
  if expected ~= '' then
    if redis.call('HGET', KEYS[K_DISABLED], name) ~= expected then return 2 end
    if KEYS[FIXED + 1] then
      redis.call('XADD', KEYS[FIXED + 1], 'MAXLEN', '~', 10000, '*', 'account', name,
                 'event', 'account_enabled', 'reason', expected, 'ts', tostring(NOW))
    end
  end
  enable(name)
  end_cooldown(name)
  handoff()
else
  disable(name, ARGV[3])
end
return 1
