-- name: acquire
-- keys: lock_key, fence_key, line_key, line_deadlines_key, line_args_key
-- argv: token string, ttl duration_ms, line_ttl duration_ms, channel string
-- reply: acquired bool, fence uint64, ttl duration_ms, position int64
-- readonly: false
-- error: ERR wrong number of keys: want 5 (lock, fence, line, line deadlines, line args)
-- error: ERR invalid token: want a non-empty string
-- error: ERR invalid ttl: want an integer number of milliseconds from 1 to 31536000000
-- error: ERR invalid line ttl: want an integer number of milliseconds from 0 to 31536000000
-- error: WRONGTYPE when a key holds a value of another type than the protocol's
--
-- Protocol 2 (scripts/README.md, "The line"). Takes the lock KEYS[1] for the
-- token ARGV[1] for ARGV[2] ms, or, when it is held and ARGV[3] (line ttl) is
-- not 0, keeps the token's place in the key's FIFO line, so the release that
-- frees the key hands it to the line's head. Replies {acquired, fence, ttl,
-- position}:
--   - lock free, line empty or headed by this token: SET NX PX, INCR the
--     fence counter KEYS[2], leave the line; reply {1, new fence, ttl, 0}.
--   - lock holds this token (a retried acquire, or a waiter granted the key
--     by a release): reset its TTL to ttl; reply {1, current fence, ttl, 0}.
--   - this token gave its place up (a release with it) and that place has
--     not lapsed yet: change nothing; reply {0, 0, holder's PTTL, 0}.
--   - otherwise: if the lock is free, hand it to the line's head first (as
--     release does: a head whose strict channel, ending in "!", has no
--     subscriber here is skipped and keeps its place; if only such heads
--     are ahead of this token, it takes the key as above). With line ttl 0
--     change nothing else and reply {0, 0, holder's PTTL, 0}; else join the
--     line at its tail, or keep this token's place, its entry alive for
--     line ttl ms, and reply {0, 0, holder's PTTL, place in line from 1}.
-- Line entries that were not kept alive are dropped. The fence counter has no
-- TTL; the line's keys vanish when it is empty. All keys share a hash slot.
if #KEYS ~= 5 then
  return redis.error_reply('ERR wrong number of keys: want 5 (lock, fence, line, line deadlines, line args)')
end
local token, ttl, linettl, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4] or ''
if token == nil or token == '' then
  return redis.error_reply('ERR invalid token: want a non-empty string')
end
-- tonumber+tostring round trip: rejects "05", " 5", "1.5", "1e3" and "0x5".
local ms = tonumber(ttl)
if ms == nil or ms < 1 or ms > 31536000000 or ms % 1 ~= 0 or tostring(ms) ~= ttl then
  return redis.error_reply('ERR invalid ttl: want an integer number of milliseconds from 1 to 31536000000')
end
local lms = tonumber(linettl)
if lms == nil or lms < 0 or lms > 31536000000 or lms % 1 ~= 0 or tostring(lms) ~= linettl then
  return redis.error_reply('ERR invalid line ttl: want an integer number of milliseconds from 0 to 31536000000')
end
local L, LD, LA = KEYS[3], KEYS[4], KEYS[5]

-- Fast path first: nobody waits and the key is free. One SET NX decides; an
-- INCR that fails (a fence key of the wrong type) undoes it.
if redis.call('EXISTS', LA) == 0 and redis.call('SET', KEYS[1], token, 'NX', 'PX', ttl) then
  local fence = redis.pcall('INCR', KEYS[2])
  if type(fence) == 'table' then
    redis.call('DEL', KEYS[1])
    return fence
  end
  return {1, fence, ms, 0}
end

local function leave(t)
  redis.call('ZREM', L, t)
  redis.call('ZREM', LD, t)
  redis.call('HDEL', LA, t)
end

-- lineRead reads each line key once, so that a key of the wrong type fails
-- the call before it writes anything (scripts are not rolled back); it
-- replies this token's deadline in the line (or nil), its args ("gone"
-- once a release with it gave its place up) and whether it is in line.
local function lineRead()
  local inline = redis.call('ZSCORE', L, token)
  local a = redis.call('HGET', LA, token)
  return tonumber(redis.call('ZSCORE', LD, token)), a, inline
end

-- fenceRead checks, before anything is written, that INCR of the fence
-- counter will succeed: the fence key is absent or holds an integer.
local function fenceRead()
  local f = redis.call('GET', KEYS[2])
  if f and f ~= '0' and not string.match(f, '^%-?[1-9]%d*$') then
    return redis.error_reply('ERR fence key holds a value that is not an integer')
  end
  return f
end

-- now in ms on the server's clock (scripts replicate by effects).
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- hears reports whether a waiter with channel ch can learn of a hand-off:
-- it polls (no channel), its channel is not strict (does not end in "!"),
-- or the strict channel has a subscriber on this server. A caller whose ACL
-- refuses PUBSUB NUMSUB counts every waiter as hearing.
local function hears(ch)
  if ch == '' or string.sub(ch, -1) ~= '!' then return true end
  local n = redis.pcall('PUBSUB', 'NUMSUB', ch)
  return n.err ~= nil or n[2] ~= 0
end

-- head drops line entries whose deadline passed (at most 64 a call) and
-- replies the first live entry that is this call's token or hears a
-- hand-off, with its ttl and channel, or nil. Live entries that would not
-- hear are skipped and keep their place.
local function head(t)
  local dead = redis.call('ZRANGEBYSCORE', LD, '-inf', t, 'LIMIT', 0, 64)
  for i = 1, #dead do leave(dead[i]) end
  local i = 0
  for _ = 1, 64 do
    local h = redis.call('ZRANGE', L, i, i)[1]
    if not h then return nil end
    local d = tonumber(redis.call('ZSCORE', LD, h))
    local a = redis.call('HGET', LA, h)
    if not (d and d > t and a and a ~= 'gone') then
      leave(h)
    else
      local sp = string.find(a, ' ', 1, true)
      local httl, hch = string.sub(a, 1, sp - 1), string.sub(a, sp + 1)
      if h == token or hears(hch) then return h, httl, hch end
      i = i + 1
    end
  end
  return nil
end

-- grant sets the free lock to the line head's token, allocates its fence
-- and tells its waiter on its channel: "fence ttl token".
local function grant(h, httl, hch)
  local fence = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], h, 'PX', httl)
  leave(h)
  if hch ~= '' then
    redis.call('PUBLISH', hch, string.format('%d', fence) .. ' ' .. httl .. ' ' .. h)
  end
end

local holder = redis.call('GET', KEYS[1])
if holder == token then
  -- Read the fence and the line before PEXPIRE, so a bad key changes nothing.
  local fence = redis.call('GET', KEYS[2])
  if fence then
    fence = tonumber(fence)
    if not fence then
      return redis.error_reply('ERR fence key holds a value that is not an integer')
    end
  else
    fence = 0
  end
  local queued = redis.call('EXISTS', LA) == 1 and lineRead()
  redis.call('PEXPIRE', KEYS[1], ttl)
  if queued then leave(token) end
  return {1, fence, ms, 0}
end
if not holder and redis.call('EXISTS', LA) == 0 then
  -- Free with nobody waiting after all (expired since the SET NX above).
  local fence = redis.pcall('INCR', KEYS[2])
  if type(fence) == 'table' then return fence end
  redis.call('SET', KEYS[1], token, 'PX', ttl)
  return {1, fence, ms, 0}
end
-- A TryAcquire of a held key (line ttl 0) writes nothing and reads no line.
local deadline, args, inline = nil, nil, nil
if not holder or lms ~= 0 then deadline, args, inline = lineRead() end
local t = nil
if args == 'gone' then
  t = now()
  if deadline and deadline > t then
    -- This token gave its place up (a release with it): an attempt that
    -- arrives late neither joins the line again nor takes the key.
    return {0, 0, redis.call('PTTL', KEYS[1]), 0}
  end
end
if not holder then
  local bad = fenceRead()
  if type(bad) == 'table' then return bad end
  t = t or now()
  local h, httl, hch = head(t)
  if not h or h == token then
    local fence = redis.call('INCR', KEYS[2])
    redis.call('SET', KEYS[1], token, 'PX', ttl)
    leave(token)
    return {1, fence, ms, 0}
  end
  -- The key is free but others were here first: it is the head's.
  grant(h, httl, hch)
  inline = redis.call('ZSCORE', L, token)
  args = redis.call('HGET', LA, token)
end
local pttl = redis.call('PTTL', KEYS[1])
if lms == 0 then
  return {0, 0, pttl, 0}
end
if not t then
  t = now()
  -- Drop lapsed entries, so the line shows who is still waiting.
  local dead = redis.call('ZRANGEBYSCORE', LD, '-inf', t, 'LIMIT', 0, 64)
  for i = 1, #dead do leave(dead[i]) end
end
-- An entry not kept alive lost its place, even if no call dropped it yet.
if deadline and deadline <= t then
  leave(token)
  inline, args = nil, nil
end
if not inline then
  local last = redis.call('ZRANGE', L, -1, -1, 'WITHSCORES')
  local seq = 1
  if last[2] then seq = tonumber(last[2]) + 1 end
  redis.call('ZADD', L, seq, token)
end
redis.call('ZADD', LD, t + lms, token)
local want = ttl .. ' ' .. channel
if args ~= want then
  redis.call('HSET', LA, token, want)
end
-- The line's keys live as long as its longest-lived entry.
local maxd = tonumber(redis.call('ZRANGE', LD, -1, -1, 'WITHSCORES')[2])
local keep = math.max(maxd - t, 1)
redis.call('PEXPIRE', L, keep)
redis.call('PEXPIRE', LD, keep)
redis.call('PEXPIRE', LA, keep)
return {0, 0, pttl, redis.call('ZRANK', L, token) + 1}
