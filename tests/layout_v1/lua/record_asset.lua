-- record_asset.lua: record one asset found in a provider's asset listing (genrelay import-assets).
-- KEYS[1]: the provider's asset index (zset); KEYS[2]: the prefix of its asset hashes.
-- ARGV[1]: JSON of the record's fields (strings); ARGV[2]: asset retention (ms).
-- Returns {outcome, asset id}; see put_asset in asset_lib.lua.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return put_asset(KEYS[1], KEYS[2], cjson.decode(ARGV[1]), tonumber(ARGV[2]), now, 'import')
