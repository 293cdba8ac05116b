-- archive_finish.lua: record how one attempt at archiving an asset went.
-- KEYS[1]: the provider's archive queue; KEYS[2]: the asset's archive hash; KEYS[3]: the asset's
-- hash; KEYS[4]: the provider's archive events stream; KEYS[5]: the retention zset (asset id ->
-- delete at, ms); KEYS[6]: the object's references (set of asset ids); KEYS[7]: the usage hash;
-- KEYS[8]: the deliveries waiting for this copy (set of "<job>:<seq>", daemon/archive_notify.py);
-- KEYS[9]: the task queue.
-- ARGV[1]: asset id; ARGV[2]: JSON of the fields to set (state, sha256, bytes, mime, message,
-- final); ARGV[3]: when to try again (ms; 0: settled, the asset leaves the queue); ARGV[4]: when
-- an archived copy is deleted (ms); ARGV[5]: now (ms). The retention keys are shared by every
-- provider (objects are content-addressed): a single Redis, as genrelay requires, runs this
-- script as one.
-- An archived copy is never overwritten by a late attempt that failed. Settled outcomes are
-- added to the events stream (what waits on them reads it), and the deliveries parked on the copy
-- are queued again in the same step, as deliver:<job>:<seq>:archived (an id that says what to
-- run, daemon/tasks.py). The archive hash keeps the expiry its claim gave it (archive_claim.lua);
-- one that expired meanwhile takes its asset's again.
-- Returns the state now recorded.
local f = cjson.decode(ARGV[2])
local had = redis.call('HMGET', KEYS[2], 'state', 'message', 'retry_ms')
local cur = had[1]
if cur == 'archived' and f.state ~= 'archived' then return cur end
local now = ARGV[5]
local fields = {'updated_ms', now}
for k, v in pairs(f) do fields[#fields + 1] = k; fields[#fields + 1] = tostring(v) end
local gone = {}
if f.state == 'archived' then
  if had[2] then gone[#gone + 1] = 'message' end
  if cur ~= 'archived' then
    redis.call('ZADD', KEYS[5], tonumber(ARGV[4]), ARGV[1])
    if redis.call('SADD', KEYS[6], ARGV[1]) == 1 and redis.call('SCARD', KEYS[6]) == 1 then
      redis.call('HINCRBY', KEYS[7], 'objects', 1)
      redis.call('HINCRBY', KEYS[7], 'bytes', tonumber(f.bytes))
    end
  end
  fields[#fields + 1] = 'archived_ms'; fields[#fields + 1] = now
end
local retry = tonumber(ARGV[3])
if retry > 0 then
  fields[#fields + 1] = 'retry_ms'; fields[#fields + 1] = retry
  redis.call('ZADD', KEYS[1], 'XX', retry + 0.5, ARGV[1])  -- the half: claimed before (archive_claim)
else
  if had[3] then gone[#gone + 1] = 'retry_ms' end
  redis.call('ZREM', KEYS[1], ARGV[1])
end
if #gone > 0 then redis.call('HDEL', KEYS[2], unpack(gone)) end
redis.call('HSET', KEYS[2], unpack(fields))
if not cur then
  local ttl = redis.call('PTTL', KEYS[3])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
if retry == 0 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10000, '*', 'asset', ARGV[1], 'state', f.state)
  local parked = redis.call('SMEMBERS', KEYS[8])
  if #parked > 0 then
    for _, member in ipairs(parked) do
      redis.call('ZADD', KEYS[9], 'NX', now, 'deliver:' .. member .. ':archived')
    end
    redis.call('DEL', KEYS[8])
  end
end
return f.state
