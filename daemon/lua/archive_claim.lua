-- archive_claim.lua: claim due artifacts to copy into the archive (one provider).
-- KEYS[1]: the provider's archive queue (zset asset id -> due ms); KEYS[2]: the asset hash prefix;
-- KEYS[3]: the prefix of the archive's hashes (one per asset).
-- ARGV[1]: how many at most; ARGV[2]: the claim's lifetime (ms): a claim its worker stopped
-- renewing (it died) is due again then; ARGV[3]: now (ms); ARGV[4]: the asset retention (ms): an
-- archive hash expires with its asset (created + retention). Assets gone (past their retention)
-- or already settled (archived, expired, failed for good) leave the queue.
-- Returns a flat list: id, url, mime, expires_ms, created_ms, tries (this one included) per claim.
-- A queue score with a half (daemon/archive_state.py, TRIED) is an asset an attempt has claimed
-- before; a whole one has no archive hash yet, which is then not read.
local now = tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for d = 1, #due, 2 do
  local id = due[d]
  local asset = redis.call('HMGET', KEYS[2] .. id, 'url', 'mime', 'expires_ms', 'created_ms')
  local state_key = KEYS[3] .. id
  local st = {false, false, false}
  if tonumber(due[d + 1]) % 1 ~= 0 then st = redis.call('HMGET', state_key, 'state', 'final', 'tries') end
  if not asset[4] or not asset[1] or st[1] == 'archived' or st[2] == '1' then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]) + 0.5, id)
    local tries = (tonumber(st[3]) or 0) + 1
    if st[1] then
      redis.call('HSET', state_key, 'tries', tries)
    else
      redis.call('HSET', state_key, 'state', 'pending', 'tries', tries)
      redis.call('PEXPIREAT', state_key, tonumber(asset[4]) + tonumber(ARGV[4]))
    end
    out[#out + 1] = id
    out[#out + 1] = asset[1]
    out[#out + 1] = asset[2] or ''
    out[#out + 1] = asset[3] or ''
    out[#out + 1] = asset[4]
    out[#out + 1] = tostring(tries)
  end
end
return out
