-- upgrade_layout.lua: bring one provider's slot keys to layout 3 (lib.lua), in one atomic step,
-- with jobs in flight: every lease keeps its job and expiry, every waiting job keeps its place,
-- every claimed poll its claim; nothing is dispatched, submitted or polled here.
-- Layout 1 kept one lease zset per account and pinned jobs in the one waiting queue (pins: job ->
-- account). Layout 2 keeps one lease index, per-account pinned queues and the room index.
-- Layout 3 keeps a claimed poll in the poll schedule itself (its claim's expiry + 0.5) instead of
-- a zset of claims ('polling').
-- KEYS: the prelude layout; KEYS[FIXED + 1] the layout version key; KEYS[FIXED + 2..] the layout-1 lease zsets.
-- ARGV[2]: JSON [account of each layout-1 lease zset, in KEYS order].
-- Returns 0 when the keys were in layout 3 already, else the number of leases moved (layout 1)
-- plus the claims moved (layout 2 and before).

local LAYOUT = KEYS[FIXED + 1]
local version = redis.call('GET', LAYOUT)
if version == '3' then return 0 end
local moved = 0

local function from_layout_1()
  local names = cjson.decode(ARGV[2])
  for k, account in ipairs(names) do
    local key = KEYS[FIXED + 1 + k]
    local rows = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    for r = 1, #rows, 2 do
      local job = rows[r]
      local previous = lease_of(job)
      if previous then redis.call('ZREM', KEYS[K_HELD_BY], previous .. '\n' .. job) end
      redis.call('ZADD', KEYS[K_LEASES], rows[r + 1], job)
      redis.call('HSET', KEYS[K_LEASE_ACCOUNT], job, account)
      redis.call('ZADD', KEYS[K_HELD_BY], 0, account .. '\n' .. job)
      moved = moved + 1
    end
    redis.call('DEL', key)
  end
  -- Pinned waiting jobs move to their account's queue with the same score.
  local pins = redis.call('HGETALL', KEYS[K_PINS])
  for r = 1, #pins, 2 do
    local job, account = pins[r], pins[r + 1]
    if not string.find(account, '\n', 1, true) then
      local score = redis.call('ZSCORE', KEYS[K_WAITING], job)
      redis.call('HDEL', KEYS[K_PINS], job)
      if score then
        redis.call('ZREM', KEYS[K_WAITING], job)
        local member = account .. '\n' .. string.format('%016.0f', tonumber(score)) .. '\n' .. job
        redis.call('ZADD', KEYS[K_PINNED], 0, member)
        redis.call('HSET', KEYS[K_PINS], job, member)
      end
    end
  end
  -- Layout 1 kept cooldowns that were over; layout 2 keeps only those that run.
  redis.call('ZREMRANGEBYSCORE', KEYS[K_COOLDOWN], '-inf', NOW)
  local accounts = redis.call('HGETALL', KEYS[K_ACCOUNTS])
  for r = 1, #accounts, 2 do rebuild_room(accounts[r], tonumber(accounts[r + 1])) end
end

if version ~= '2' then from_layout_1() end
-- Layout 3: each claim in 'polling' goes back into the schedule as a claim (a poll that a callback
-- made due meanwhile stays due).
local claims = redis.call('ZRANGE', KEYS[K_POLLING], 0, -1, 'WITHSCORES')
for r = 1, #claims, 2 do
  if not redis.call('ZSCORE', KEYS[K_POLLS], claims[r]) then
    redis.call('ZADD', KEYS[K_POLLS], math.floor(tonumber(claims[r + 1])) + 0.5, claims[r])
  end
  moved = moved + 1
end
redis.call('DEL', KEYS[K_POLLING])
redis.call('SET', LAYOUT, '3')
return moved
