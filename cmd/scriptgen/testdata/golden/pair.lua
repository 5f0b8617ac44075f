-- name: pair
-- keys: lock_key, fence_key
-- argv: owner_id string, ttl duration_ms
-- reply: ok bool, seq uint64, ttl duration_ms
-- error: ERR bad owner
--
-- Two keys, a duration argument and an array reply.
return {1, 1, tonumber(ARGV[2])}
