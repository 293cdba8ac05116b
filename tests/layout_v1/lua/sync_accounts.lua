-- sync_accounts.lua: load the accounts file into Redis (at start and whenever it changes), then
-- hand any slot a raised maxJobs opened to the waiting jobs.
-- KEYS: the prelude layout (no job hash). ARGV[2..]: maxJobs of each account, in cfg.accounts order.
-- Accounts no longer in the file are removed (their leases run out on their own).

local wanted = {}
for i = 1, N do
  wanted[cfg.accounts[i]] = true
  redis.call('HSET', KEYS[K_ACCOUNTS], cfg.accounts[i], ARGV[i + 1])
end
for _, name in ipairs(redis.call('HKEYS', KEYS[K_ACCOUNTS])) do
  if not wanted[name] then redis.call('HDEL', KEYS[K_ACCOUNTS], name) end
end
handoff()
return N
