-- archive_expire.lua: end the archived copies past GENRELAY_ARCHIVE_RETENTION.
-- KEYS[1]: the retention zset (asset id -> delete at, ms); KEYS[2]: the usage hash; KEYS[3]: the
-- prefix of the objects' reference sets. ARGV[1]: how many at most.
-- Each due asset drops its reference to its object and reads 'expired'; an object nobody refers to
-- any more is returned for the caller to delete (reference counted: one object may serve several
-- assets with the same bytes). The archive hashes live under their provider's tag (derived from
-- the asset id); a single Redis, as genrelay requires, runs this as one script.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local provider = string.match(id, '^([a-z][a-z0-9]*)-asset-')
  if provider then
    local state_key = 'genrelay:{' .. provider .. '}:archive:' .. id
    local st = redis.call('HMGET', state_key, 'sha256', 'bytes', 'state')
    if st[1] and st[3] == 'archived' then
      local refs = KEYS[3] .. st[1]
      redis.call('SREM', refs, id)
      redis.call('HSET', state_key, 'state', 'expired', 'final', '1', 'updated_ms', now,
        'message', 'the copy was deleted after GENRELAY_ARCHIVE_RETENTION')
      redis.call('XADD', 'genrelay:{' .. provider .. '}:archive:events', 'MAXLEN', '~', 10000, '*',
        'asset', id, 'state', 'expired')
      if redis.call('SCARD', refs) == 0 then
        redis.call('HINCRBY', KEYS[2], 'objects', -1)
        redis.call('HINCRBY', KEYS[2], 'bytes', -tonumber(st[2] or '0'))
        out[#out + 1] = st[1]
      end
    end
  end
end
return out
