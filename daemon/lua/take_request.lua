-- take_request.lua: take one request from every window of a request budget (sliding windows
-- shared by every process), or say how long until each has room.
-- KEYS[1] hash  window name -> the limit the provider last reported for it (may be absent)
-- KEYS[1 + i] zset  request id -> when it was taken (ms, Redis clock): window i's requests
-- ARGV[1] a unique id for this request; ARGV[2] the caller's share (0-1) of a limit reported in
-- KEYS[1], which then replaces the window's own; '' when the limits are fixed
-- ARGV[3i], ARGV[3i + 1], ARGV[3i + 2] window i: its name, its length (ms), how many of its
-- requests this caller may use (its share of the limit, >= 1; 0: no limit known)
-- Returns 0 when the request was taken (in every window), else the ms until every window has room
-- for this caller.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local share = ARGV[2]
local count = #KEYS - 1
local reported = {}
if share ~= '' then
  local names = {}
  for i = 1, count do names[i] = ARGV[3 * i] end
  reported = redis.call('HMGET', KEYS[1], unpack(names))
end
local wait = 0
local counted = {}
for i = 1, count do
  local window = tonumber(ARGV[3 * i + 1])
  local allowed = tonumber(ARGV[3 * i + 2])
  local limit = tonumber(reported[i] or '')
  if limit and limit >= 1 then
    -- As RequestLimit.allowed: one request of headroom, then the caller's share, at least one.
    local usable = limit
    if limit > 2 then usable = limit - 1 end
    allowed = math.max(1, math.floor(usable * tonumber(share)))
  end
  if allowed > 0 then
    local key = KEYS[i + 1]
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local used = redis.call('ZCARD', key)
    if used >= allowed then
      -- Room for this caller once all but (allowed - 1) of the requests have left the window.
      local blocking = redis.call('ZRANGE', key, used - allowed, used - allowed, 'WITHSCORES')
      wait = math.max(wait, tonumber(blocking[2]) + window - now + 1)
    end
    counted[#counted + 1] = i
  end
end
if wait > 0 then
  return math.max(1, wait)
end
for _, i in ipairs(counted) do
  redis.call('ZADD', KEYS[i + 1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[i + 1], tonumber(ARGV[3 * i + 1]))
end
return 0
