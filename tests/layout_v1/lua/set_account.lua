-- set_account.lua: an operator enables or disables an account. Enabling also clears its cooldown
-- and hands its slots to the waiting jobs at once.
-- KEYS: the prelude layout (no job hash). ARGV[2]: account; ARGV[3]: '' to enable, else the reason.
-- Returns 1 when the account exists, 0 otherwise.

local name = ARGV[2]
if redis.call('HEXISTS', KEYS[K_ACCOUNTS], name) == 0 then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[K_DISABLED], name)
  redis.call('ZREM', KEYS[K_COOLDOWN], name)
  handoff()
else
  redis.call('HSET', KEYS[K_DISABLED], name, ARGV[3])
end
return 1
