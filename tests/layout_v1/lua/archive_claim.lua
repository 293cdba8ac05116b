-- archive_claim.lua: claim due artifacts to copy into the archive (one provider).
-- KEYS[1]: the provider's archive queue (zset asset id -> due ms); KEYS[2]: the asset hash prefix;
-- KEYS[3]: the prefix of the archive's hashes (one per asset).
-- ARGV[1]: how many at most; ARGV[2]: the claim's lifetime (ms): a claim its worker stopped
-- renewing (it died) is due again then. Assets gone (past their retention) or already settled
-- (archived, expired, failed for good) leave the queue.
-- Returns a flat list: id, url, mime, expires_ms, created_ms, tries (this one included) per claim.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(due) do
  local asset = redis.call('HMGET', KEYS[2] .. id, 'url', 'mime', 'expires_ms', 'created_ms')
  local state_key = KEYS[3] .. id
  local st = redis.call('HMGET', state_key, 'state', 'final')
  if not asset[4] or not asset[1] or st[1] == 'archived' or st[2] == '1' then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    local tries = redis.call('HINCRBY', state_key, 'tries', 1)
    if not st[1] then redis.call('HSET', state_key, 'state', 'pending') end
    local ttl = redis.call('PTTL', KEYS[2] .. id)
    if ttl > 0 then redis.call('PEXPIRE', state_key, ttl) end
    out[#out + 1] = id
    out[#out + 1] = asset[1]
    out[#out + 1] = asset[2] or ''
    out[#out + 1] = asset[3] or ''
    out[#out + 1] = asset[4]
    out[#out + 1] = tostring(tries)
  end
end
return out
