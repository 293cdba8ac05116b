-- claim_alerts.lua: take the operator alerts that are due, for one sender (daemon/alerts.py).
-- Each one taken is moved to the claim's expiry (a claim a dead worker left comes back then) and
-- its attempts are counted here, so tries are bounded across every worker and restart.
-- KEYS[1]: alerts zset (id -> due ms); KEYS[2]: bodies hash (id -> JSON); KEYS[3]: tries hash.
-- ARGV[1]: now (ms); ARGV[2]: claim (ms); ARGV[3]: most to take.
-- Returns {id, body, tries, id, body, tries, ...}; an id without a body is dropped.

local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(due) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    local tries = redis.call('HINCRBY', KEYS[3], id, 1)
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = tostring(tries)
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return out
