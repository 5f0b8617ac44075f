-- name: acquire
-- keys: lock_key, fence_key
-- argv: token string, ttl duration_ms
-- reply: acquired bool, fence uint64, ttl duration_ms
-- readonly: false
-- error: ERR wrong number of keys: want 2 (lock key, fence key)
-- error: ERR invalid token: want a non-empty string
-- error: ERR invalid ttl: want an integer number of milliseconds from 1 to 31536000000
-- error: WRONGTYPE when either key holds a value that is not a string
--
-- Takes the lock KEYS[1] for the token ARGV[1] for ARGV[2] milliseconds and
-- replies {acquired, fence, ttl}:
--   - KEYS[1] absent: SET KEYS[1] to the token with NX PX ttl, INCR the fence
--     counter KEYS[2]; reply {1, new fence, ttl}. Two commands on this, the
--     common, path.
--   - KEYS[1] holds this token (a retried acquire): reset its TTL to ttl;
--     reply {1, current fence, ttl}. The fence is 0 only if someone deleted
--     the fence counter behind the scripts' back.
--   - KEYS[1] holds another token: change nothing; reply {0, 0, the holder's
--     remaining PTTL} (-1 if the holder's key has no expiry).
-- The fence counter has no TTL, so fences for a key only grow, also across
-- releases and expiries. Both keys must share a hash slot: for user key k use
-- "klauthed:{k}" and "klauthed:{k}:fence". Bad arguments write nothing; a key
-- of the wrong type fails the script before anything is written.
if #KEYS ~= 2 then
  return redis.error_reply('ERR wrong number of keys: want 2 (lock key, fence key)')
end
local token, ttl = ARGV[1], ARGV[2]
if token == nil or token == '' then
  return redis.error_reply('ERR invalid token: want a non-empty string')
end
-- tonumber+tostring round trip: cheaper than a pattern match, and rejects
-- "05", " 5", "1.5", "5.0", "1e3" and "0x5" as the pattern ^[1-9][0-9]*$ would.
local ms = tonumber(ttl)
if ms == nil or ms < 1 or ms > 31536000000 or ms % 1 ~= 0 or tostring(ms) ~= ttl then
  return redis.error_reply('ERR invalid ttl: want an integer number of milliseconds from 1 to 31536000000')
end
-- Fast path first: one SET NX PX decides whether the key was free.
if redis.call('SET', KEYS[1], token, 'NX', 'PX', ttl) then
  local fence = redis.pcall('INCR', KEYS[2])
  if type(fence) == 'table' then
    -- The fence key holds the wrong type or a non-integer: undo the SET, so
    -- nothing is left half-written (a script is not rolled back on error).
    redis.call('DEL', KEYS[1])
    return fence
  end
  return {1, fence, ms}
end
local holder = redis.call('GET', KEYS[1])
if holder == token then
  -- Read the fence before PEXPIRE, so a bad fence key changes nothing.
  local fence = redis.call('GET', KEYS[2])
  if fence then
    fence = tonumber(fence)
    if not fence then
      return redis.error_reply('ERR fence key holds a value that is not an integer')
    end
  else
    fence = 0
  end
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, fence, ms}
end
return {0, 0, redis.call('PTTL', KEYS[1])}
