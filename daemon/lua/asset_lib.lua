-- asset_lib.lua: record one finished artifact (an asset) and its index entries, atomically.
-- Prepended to transition.lua (a job's completion records its artifact in the same script) and
-- to record_asset.lua (an import from a provider's asset listing), so both follow one rule.
--
-- Identity: one asset per provider job (one main artifact per job) when the provider's job id is
-- known, else per provider asset id; the id is derived from it (``<provider>-asset-<32 hex>``),
-- so an artifact is listed once whichever way it arrived, and a second arrival finds the first.
-- Keys (all under the provider's hash tag): the hash <prefix><id>; the zsets (score = created ms)
-- <index>, <index>:type:<type>, <index>:workflow:<workflow>, <index>:type:<type>:workflow:<workflow>.
-- Retention: the hash expires ``retention_ms`` after its creation time, and index entries older
-- than that are trimmed from the indexes a write touches, at one write in 16 (readers ignore them
-- meanwhile).

local function asset_id(provider, provider_job_id, provider_asset_id, job_id)
  local identity
  if provider_job_id and provider_job_id ~= '' then
    identity = 'job:' .. provider_job_id
  elseif provider_asset_id and provider_asset_id ~= '' then
    identity = 'asset:' .. provider_asset_id
  else
    identity = 'ours:' .. (job_id or '')
  end
  return provider .. '-asset-' .. string.sub(redis.sha1hex(provider .. '\n' .. identity), 1, 32)
end

local function asset_indexes(index, asset_type, workflow)
  local list = {index, index .. ':type:' .. asset_type}
  if workflow and workflow ~= '' then
    list[#list + 1] = index .. ':workflow:' .. workflow
    list[#list + 1] = index .. ':type:' .. asset_type .. ':workflow:' .. workflow
  end
  return list
end

local function write_asset(key, index, a, retention_ms, now)
  local created = tonumber(a.created_ms)
  local fields = {}
  for k, v in pairs(a) do
    if v ~= nil and v ~= cjson.null and v ~= '' then fields[#fields + 1] = k; fields[#fields + 1] = tostring(v) end
  end
  redis.call('HSET', key, unpack(fields))
  redis.call('PEXPIREAT', key, created + retention_ms)
  -- One write in 16 (by the id's last hex digit, so it is the same for every retry) trims the
  -- indexes it touches: O(expired) each time, about one command in four per write on average.
  local trim = string.sub(a.id, -1) == '0'
  for _, k in ipairs(asset_indexes(index, a.type, a.workflow)) do
    if trim then redis.call('ZREMRANGEBYSCORE', k, '-inf', now - retention_ms) end
    redis.call('ZADD', k, created, a.id)
  end
  -- Due at once for the archive's copy (archive_claim.lua; the archive keeps its state apart).
  redis.call('ZADD', index .. ':archive:queue', 'NX', created, a.id)
end

-- ``a``: the record's fields (provider, type, url, created_ms, ... as strings); ``mode``: 'job' (a
-- job's completion: it replaces an imported record of the same artifact) or 'import' (adds what
-- is new; of a known artifact it only takes a URL that expires later, and our job when the
-- record had none). Returns {outcome, id}: new | replaced | known | refreshed | too_old.
local function put_asset(index, prefix, a, retention_ms, now, mode)
  a.id = asset_id(a.provider, a.provider_job_id, a.provider_asset_id, a.job_id)
  local key = prefix .. a.id
  local old = redis.call('HMGET', key, 'type', 'workflow', 'created_ms', 'expires_ms', 'job_id')
  if old[3] then
    local ours = a.job_id and a.job_id ~= '' and (old[5] or '') == ''
    if mode == 'import' and not ours then
      local new_expiry, old_expiry = tonumber(a.expires_ms or ''), tonumber(old[4] or '')
      if new_expiry and old_expiry and new_expiry > old_expiry and a.url then
        redis.call('HSET', key, 'url', a.url, 'expires_ms', a.expires_ms, 'thumbnails', a.thumbnails or '{}')
        return {'refreshed', a.id}
      end
      return {'known', a.id}
    end
    for _, k in ipairs(asset_indexes(index, old[1], old[2])) do redis.call('ZREM', k, a.id) end
    redis.call('DEL', key)
  end
  if tonumber(a.created_ms) + retention_ms <= now then return {'too_old', a.id} end
  write_asset(key, index, a, retention_ms, now)
  return {old[3] and 'replaced' or 'new', a.id}
end
