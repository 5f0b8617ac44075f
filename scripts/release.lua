-- name: release
-- keys: lock_key, fence_key, line_key, line_deadlines_key, line_args_key
-- argv: token string, channel string
-- reply: released bool, next string|nil (handed), fence uint64, ttl duration_ms
-- readonly: false
-- error: ERR wrong number of keys: want 5 (lock, fence, line, line deadlines, line args)
-- error: ERR invalid token: want a non-empty string
-- error: WRONGTYPE when a key holds a value of another type than the protocol's
--
-- Protocol 2 (scripts/README.md, "The line"). Releases the lock KEYS[1] if
-- the token ARGV[1] holds it (compare-and-delete), else takes the token out of
-- the key's line (a waiter that gave up; its token is marked "gone" until
-- its place would have lapsed). Whenever the lock is then free and
-- the line has a live head, the key goes to the head: the lock is set to the
-- head's token with the head's ttl, the fence counter KEYS[2] grows, and
-- "fence ttl token" is published on the head's channel unless that is ARGV[2]
-- (the caller's own). Replies {released, next token or nil, next fence, next
-- ttl}: released is 1 when this token held the lock.
if #KEYS ~= 5 then
  return redis.error_reply('ERR wrong number of keys: want 5 (lock, fence, line, line deadlines, line args)')
end
local token, channel = ARGV[1], ARGV[2] or ''
if token == nil or token == '' then
  return redis.error_reply('ERR invalid token: want a non-empty string')
end
local L, LD, LA = KEYS[3], KEYS[4], KEYS[5]

local holder = redis.call('GET', KEYS[1])
local released = 0
if holder == token then released = 1 end
-- Fast path: nobody waits (the line args hash holds every place in line, and
-- every token that gave its place up, until it lapses).
if redis.call('EXISTS', LA) == 0 then
  if released == 1 then
    redis.call('DEL', KEYS[1])
  end
  return {released, false, 0, 0}
end

local function leave(t)
  redis.call('ZREM', L, t)
  redis.call('ZREM', LD, t)
  redis.call('HDEL', LA, t)
end

-- giveUp takes a waiting token out of the line and marks it "gone" until
-- its place would have lapsed, so that an acquire with it that arrives
-- late (sent before the release, delayed on another connection) does not
-- bring it back.
local function giveUp(t, deadline)
  redis.call('ZREM', L, t)
  if deadline then
    redis.call('HSET', LA, t, 'gone')
  else
    leave(t)
  end
end
-- Read every key this call may write before writing any, so that a key of
-- the wrong type fails the call with nothing written (scripts are not
-- rolled back).
local queued = redis.call('ZSCORE', L, token)
local deadline = redis.call('ZSCORE', LD, token)
queued = redis.call('HGET', LA, token) or deadline or queued
if holder and released == 0 then
  if queued then giveUp(token, deadline) end
  return {0, false, 0, 0}
end
local f = redis.call('GET', KEYS[2])
if f and f ~= '0' and not string.match(f, '^%-?[1-9]%d*$') then
  return redis.error_reply('ERR fence key holds a value that is not an integer')
end
if queued then
  if released == 1 then leave(token) else giveUp(token, deadline) end
end
-- The lock is free, or ours to give: does anyone wait?
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', LD, '-inf', now, 'LIMIT', 0, 64)
for i = 1, #dead do leave(dead[i]) end
for _ = 1, 64 do
  local h = redis.call('ZRANGE', L, 0, 0)[1]
  if not h then break end
  local d = tonumber(redis.call('ZSCORE', LD, h))
  local a = redis.call('HGET', LA, h)
  if d and d > now and a then
    local sp = string.find(a, ' ', 1, true)
    local httl, hch = string.sub(a, 1, sp - 1), string.sub(a, sp + 1)
    local fence = redis.call('INCR', KEYS[2])
    redis.call('SET', KEYS[1], h, 'PX', httl)
    leave(h)
    if hch ~= '' and hch ~= channel then
      redis.call('PUBLISH', hch, string.format('%d', fence) .. ' ' .. httl .. ' ' .. h)
    end
    return {released, h, fence, tonumber(httl)}
  end
  leave(h)
end
if released == 1 then
  redis.call('DEL', KEYS[1])
end
return {released, false, 0, 0}
