-- name: release
-- keys: lock_key
-- argv: token string
-- reply: released bool
-- readonly: false
-- error: ERR wrong number of keys: want 1 (lock key)
-- error: ERR invalid token: want a non-empty string
-- error: WRONGTYPE when the lock key holds a value that is not a string
--
-- Releases the lock KEYS[1] if the token ARGV[1] holds it: deletes the key
-- and replies 1. Otherwise (expired, already released, or held by another
-- token) changes nothing and replies 0 (compare-and-delete). The fence
-- counter is left alone.
if #KEYS ~= 1 then
  return redis.error_reply('ERR wrong number of keys: want 1 (lock key)')
end
local token = ARGV[1]
if token == nil or token == '' then
  return redis.error_reply('ERR invalid token: want a non-empty string')
end
if redis.call('GET', KEYS[1]) == token then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
