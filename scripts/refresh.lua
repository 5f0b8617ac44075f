-- name: refresh
-- keys: lock_key
-- argv: token string, ttl duration_ms
-- reply: refreshed bool
-- readonly: false
-- error: ERR wrong number of keys: want 1 (lock key)
-- error: ERR invalid token: want a non-empty string
-- error: ERR invalid ttl: want an integer number of milliseconds from 1 to 31536000000
-- error: WRONGTYPE when the lock key holds a value that is not a string
--
-- Extends the lock KEYS[1] if the token ARGV[1] holds it: sets its TTL to
-- ARGV[2] milliseconds (PEXPIRE) and replies 1. Otherwise (expired, released,
-- or held by another token) changes nothing and replies 0.
if #KEYS ~= 1 then
  return redis.error_reply('ERR wrong number of keys: want 1 (lock key)')
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
if redis.call('GET', KEYS[1]) == token then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
return 0
