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
-- the line has a live head that can hear it, the key goes to that head:
-- the lock is set to the head's token with the head's ttl, the fence counter
-- KEYS[2] grows, and "fence ttl token" is published on the head's channel
-- unless that is ARGV[2] (the caller's own). A head whose strict channel
-- (ending in "!") has no subscriber here is skipped and keeps its place.
-- Replies {released, next token or nil, next fence, next ttl}: released is
-- 1 when this token held the lock.
if #KEYS ~= 5 then
  return redis.error_reply('ERR wrong number of keys: want 5 (lock, fence, line, line deadlines, line args)')
end
local token, channel = ARGV[1], ARGV[2] or ''
if token == nil or token == '' then
  return redis.error_reply('ERR invalid token: want a non-empty string')
end
local L, LD, LA = KEYS[3], KEYS[4], KEYS[5]

local holder = redis.call('GET', KEYS[1])
-- Fast path first: the holder releases and nobody waits. (EXISTS costs the
-- script less than the ZRANGE that reads the head: a hand-off reads the
-- line twice so that a release with nobody waiting reads it cheaply.)
if holder == token and redis.call('EXISTS', L) == 0 then
  redis.call('DEL', KEYS[1])
  return {1, false, 0, 0}
end
local released = 0
if holder == token then released = 1 end

local function leave(t)
  redis.call('ZREM', L, t)
  redis.call('ZREM', LD, t)
  redis.call('HDEL', LA, t)
end

-- hears reports whether a waiter with channel ch can learn of a hand-off:
-- it polls (no channel), it is the caller's (the reply tells it), its
-- channel is not strict (does not end in "!"), or the strict channel has a
-- subscriber on this server. A caller whose ACL refuses PUBSUB NUMSUB
-- counts every waiter as hearing.
local function hears(ch)
  if ch == '' or ch == channel or string.sub(ch, -1) ~= '!' then return true end
  local n = redis.pcall('PUBSUB', 'NUMSUB', ch)
  return n.err ~= nil or n[2] ~= 0
end

-- head finds the line's first live entry whose waiter hears (see hears),
-- skipping entries whose deadline passed (to be dropped) and live ones that
-- would not hear (they keep their place), at most 65 in all; it replies its
-- token, ttl and channel (from its args "ttl channel"), or nil, and the
-- lapsed tokens it skipped. It writes nothing.
local function head()
  local lapsed, now = {}, nil
  for i = 0, 64 do
    local h = redis.call('ZRANGE', L, i, i)[1]
    if not h then break end
    if not now then
      local tm = redis.call('TIME')
      now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
    end
    local d = tonumber(redis.call('ZSCORE', LD, h))
    local a = redis.call('HGET', LA, h)
    if not (d and d > now and a and a ~= 'gone') then
      lapsed[#lapsed + 1] = h
    else
      local sp = string.find(a, ' ', 1, true)
      local httl, hch = string.sub(a, 1, sp - 1), string.sub(a, sp + 1)
      if hears(hch) then return h, httl, hch, lapsed end
    end
  end
  return nil, nil, nil, lapsed
end

-- hand sets the free (or released) lock to the head h's token with its ttl
-- httl, allocates its fence and publishes "fence ttl token" on its channel
-- hch unless that is the caller's. The fence INCR is its first write.
local function hand(h, httl, hch, lapsed)
  local fence = redis.pcall('INCR', KEYS[2])
  if type(fence) == 'table' then
    if string.find(fence.err or '', 'WRONGTYPE', 1, true) then return fence end
    return redis.error_reply('ERR fence key holds a value that is not an integer')
  end
  redis.call('SET', KEYS[1], h, 'PX', httl)
  leave(h)
  for i = 1, #lapsed do leave(lapsed[i]) end
  if hch ~= '' and hch ~= channel then
    redis.call('PUBLISH', hch, string.format('%d', fence) .. ' ' .. httl .. ' ' .. h)
  end
  return {released, h, fence, tonumber(httl)}
end

-- handToHead hands the key to the line's live head and replies hand's
-- reply, or, when no entry is live, drops the lapsed ones and replies nil.
local function handToHead()
  local h, httl, hch, lapsed = head()
  if h then return hand(h, httl, hch, lapsed) end
  for i = 1, #lapsed do leave(lapsed[i]) end
  return nil
end

-- The holder's release: hand the key to the line's live head, or delete
-- it. A holder is never in its key's line.
if released == 1 then
  local handed = handToHead()
  if handed then return handed end
  redis.call('DEL', KEYS[1])
  return {1, false, 0, 0}
end

-- Not the holder: a waiter that gives up, or a late or repeated release.
-- Read every key this call may write before writing any, so that a key of
-- the wrong type fails the call with nothing written (scripts are not
-- rolled back).
local queued = redis.call('ZSCORE', L, token)
local deadline = redis.call('ZSCORE', LD, token)
queued = redis.call('HGET', LA, token) or deadline or queued
if not queued and (holder or redis.call('EXISTS', L) == 0) then
  return {0, false, 0, 0}
end
-- giveUp takes the waiting token out of the line and marks it "gone" until
-- its place would have lapsed, so that an acquire with it that arrives
-- late (sent before the release, delayed on another connection) does not
-- bring it back.
local function giveUp()
  redis.call('ZREM', L, token)
  if deadline then
    redis.call('HSET', LA, token, 'gone')
  else
    leave(token)
  end
end
if holder then
  giveUp()
  return {0, false, 0, 0}
end
-- The lock is free: does anyone else wait?
local f = redis.call('GET', KEYS[2])
if f and f ~= '0' and not string.match(f, '^%-?[1-9]%d*$') then
  return redis.error_reply('ERR fence key holds a value that is not an integer')
end
if queued then giveUp() end
return handToHead() or {0, false, 0, 0}
