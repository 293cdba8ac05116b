-- reject_job.lua: record a job that arrived through Redis and could not be accepted, as a failed job,
-- so the app waiting on it learns why. Only when the id names no job yet: a malformed (or forged)
-- enqueue must never overwrite a job that exists.
-- KEYS[1]: the job's hash; KEYS[2]: the provider's events stream.
-- ARGV[1]: JSON {field: text} of the failed record; ARGV[2]: retention (s); ARGV[3]: events maxlen.
-- Returns 'rejected', or 'exists' (nothing written).
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
local t = redis.call('TIME')
local now = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local fields = cjson.decode(ARGV[1])
local flat = {'created_ms', now, 'updated_ms', now, 'finished_ms', now}
for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'job', fields.id, 'state', 'failed',
           'progress', '0', 'account', '', 'source', 'api', 'ts', now)
return 'rejected'
