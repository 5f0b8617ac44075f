-- name: two_words
-- keys: a_key, b_key
-- argv: limit int64, label string
-- reply: total int64
-- readonly: true
--
-- Read-only with two keys: no cached variant (rueidis caches one-key
-- scripts only). A source with a `backquote` is quoted, not raw.
return 0
