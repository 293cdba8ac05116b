-- mark_uncertain.lua: a submit was sent and no answer came (timeout, disconnect, a worker that
-- died mid-call): the provider may have accepted it. The job stays in 'submitting' holding its
-- lease until the capacity sync (reconcile.lua) finds it in the provider's listing (adopted) or
-- sees it absent long enough after this moment (sent again).
-- KEYS: the prelude layout; KEYS[FIXED + 1] is the job's hash. ARGV[2]: message for the record.
-- Returns {'marked', account} | {'skip', state} | {'missing'}.

local r = redis.call('HMGET', JOB_KEY, 'id', 'state', 'account')
local job = r[1]
if not job then return {'missing'} end
if r[2] ~= 'submitting' then return {'skip', r[2]} end
redis.call('HSET', JOB_KEY, 'submit_uncertain', '1', 'uncertain_ms', NOW, 'submit_open', '1',
           'message', ARGV[2], 'updated_ms', NOW)
renew(job)
emit(job, 'submit_uncertain', 0, r[3], 'submit')
return {'marked', r[3] or ''}
