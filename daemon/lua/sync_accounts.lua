-- sync_accounts.lua: load the accounts file into Redis (at start and whenever it changes), rebuild
-- each account's room from what Redis holds, then hand any slot a raised maxJobs opened to the
-- waiting jobs.
-- KEYS: the prelude layout; KEYS[FIXED+1] the digest of the list loaded last (a string).
-- ARGV[2]: JSON [[account, maxJobs], ...]; ARGV[3]: its digest (the sweep skips a list already loaded).
-- Accounts no longer in the file are removed (their leases run out on their own).

local accounts = cjson.decode(ARGV[2])
drop_expired()
local wanted = {}
for _, entry in ipairs(accounts) do
  local name, max_jobs = entry[1], tonumber(entry[2])
  wanted[name] = true
  redis.call('HSET', KEYS[K_ACCOUNTS], name, max_jobs)
  rebuild_room(name, max_jobs)
end
for _, name in ipairs(redis.call('HKEYS', KEYS[K_ACCOUNTS])) do
  if not wanted[name] then
    redis.call('HDEL', KEYS[K_ACCOUNTS], name)
    redis.call('ZREM', KEYS[K_ROOM], name)
    redis.call('ZREM', KEYS[K_PINNED_READY], name)
    forget_learned(name)
  end
end
redis.call('SET', KEYS[FIXED + 1], ARGV[3])
handoff()
return #accounts
