-- take_request.lua: take one request from an account's request budget (a sliding window shared by
-- every process), or say how long until one is free.
-- KEYS[1] zset  request id -> when it was taken (ms, Redis clock): the account's current window
-- KEYS[2] string  the limit per window the provider last reported for the account (may be absent)
-- ARGV[1] window (ms); ARGV[2] how many requests of a window this caller may use (its share of the
-- account's limit, >= 1); ARGV[3] a unique id for this request; ARGV[4] the caller's share (0-1)
-- of a limit reported in KEYS[2], which then replaces ARGV[2]; '' when the limit is fixed.
-- Returns 0 when the request was taken, else the ms until the window has room for this caller.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local allowed = tonumber(ARGV[2])
if ARGV[4] ~= '' then
  local reported = tonumber(redis.call('GET', KEYS[2]) or '')
  if reported and reported >= 1 then
    -- As RequestLimit.allowed: one request of headroom, then the caller's share, at least one.
    local usable = reported
    if reported > 2 then usable = reported - 1 end
    allowed = math.max(1, math.floor(usable * tonumber(ARGV[4])))
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
if used < allowed then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
-- Room for this caller once all but (allowed - 1) of the requests in the window have left it.
local blocking = redis.call('ZRANGE', KEYS[1], used - allowed, used - allowed, 'WITHSCORES')
return math.max(1, tonumber(blocking[2]) + window - now + 1)
