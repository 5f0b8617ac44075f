-- name: inspect
-- keys: lock_key
-- argv:
-- reply: token string|nil (held), ttl duration_ms
-- readonly: true
-- error: ERR wrong number of keys: want 1 (lock key)
-- error: WRONGTYPE when the lock key holds a value that is not a string
--
-- Reads the lock KEYS[1] without writing (usable with EVAL_RO/EVALSHA_RO and
-- so with client-side caching) and replies {token, pttl}: the holder's token
-- and its remaining PTTL in milliseconds (-1 if the key has no expiry), or
-- {nil, 0} when nobody holds it (nil: a RESP2 nil, a RESP3 null).
if #KEYS ~= 1 then
  return redis.error_reply('ERR wrong number of keys: want 1 (lock key)')
end
local holder = redis.call('GET', KEYS[1])
if not holder then
  return {false, 0}
end
return {holder, redis.call('PTTL', KEYS[1])}
