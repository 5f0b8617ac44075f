-- name: count
-- keys: key
-- argv: step int64
-- reply: name string
-- readonly: true
return redis.call('TYPE', KEYS[1])['ok']
