-- name: peek
-- keys: key
-- argv:
-- reply: value string|nil (found), hits int64
-- readonly: true
--
-- A read-only one-key script: it gets a cached variant.
local v = redis.call('GET', KEYS[1])
return {v, 0}
