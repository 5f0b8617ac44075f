package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
)

// lineMax bounds how many entries of a waiting line are read and shown.
const lineMax = 100

// cacheTTL bounds how long watch's cached reads may be served from memory;
// an invalidation drops them earlier, and rueidis never keeps a reply past
// its key's PTTL.
const cacheTTL = time.Minute

// names are the Redis names of one key (lockredis.LockKey plus suffixes).
type names struct {
	lock, fence, line, deadlines, args string
}

func keyNames(prefix, key string) names {
	l := lockredis.LockKey(prefix, key)
	return names{l, l + ":fence", l + ":line", l + ":line:deadlines", l + ":line:args"}
}

// waiter is one entry of a key's waiting line.
type waiter struct {
	Token string `json:"token"`
	// TTLMs is the TTL the waiter asks for when it gets the key.
	TTLMs int64 `json:"ttl_ms"`
	// PlaceMs is how long its place lasts unless its waiter keeps it alive
	// (server clock); 0 or less means the entry is stale and the next
	// script call drops it. Absent in watch events.
	PlaceMs *int64 `json:"place_ms,omitempty"`
	// Heard is, for a waiter with a strict channel (scripts/README.md,
	// "Tokens and channels"), whether anyone is subscribed to it: when
	// false its process is gone or its Pub/Sub connection down, and
	// releases skip it while its place lasts. Absent for waiters that poll
	// or use a plain channel, when PUBSUB NUMSUB is refused, and in watch
	// events.
	Heard *bool `json:"heard,omitempty"`
}

// state is what one read of a key found.
type state struct {
	Key   string `json:"key"`
	Name  string `json:"redis_key"`
	Held  bool   `json:"held"`
	Token string `json:"token,omitempty"`
	// TTLMs is the holder's remaining time, -1 for a key without expiry
	// (which the lock scripts never make), 0 when free.
	TTLMs int64 `json:"ttl_ms"`
	// Fence is the key's fence counter: the holder's fence when held, the
	// last one handed out when free, 0 if the key was never locked.
	Fence   uint64   `json:"fence"`
	LineLen int64    `json:"line_length"`
	Line    []waiter `json:"line"`

	sent time.Time // when the read was sent: sent+TTLMs is no later than expiry
}

// notLockError says that a key's Redis names hold something the lock
// scripts never write.
type notLockError struct{ key, why string }

func (e *notLockError) Error() string {
	return fmt.Sprintf("lockctl: %s is not a klauthed lock: %s", show(e.key), e.why)
}

// reader reads key states, through client-side caching when cached is set
// (watch), so that Redis pushes an invalidation when any of them changes.
type reader struct {
	c      rueidis.Client
	cfg    *config
	cached bool
}

func (r *reader) do(ctx context.Context, cmds ...rueidis.Cacheable) []rueidis.RedisResult {
	if r.cached {
		cts := make([]rueidis.CacheableTTL, len(cmds))
		for i, c := range cmds {
			cts[i] = rueidis.CT(c, cacheTTL)
		}
		return r.c.DoMultiCache(ctx, cts...)
	}
	cs := make([]rueidis.Completed, len(cmds))
	for i, c := range cmds {
		cs[i] = rueidis.Completed(c)
	}
	return r.c.DoMulti(ctx, cs...)
}

// read returns key's state. A name holding the wrong type, a lock value that
// is not a token or a fence that is not a counter gives a *notLockError.
func (r *reader) read(ctx context.Context, key string) (state, error) {
	n := keyNames(r.cfg.prefix, key)
	b := r.c.B()
	st := state{Key: key, Name: n.lock, Line: []waiter{}}
	// rueidis recycles a command once it ran: build afresh for each use.
	snap := func() []rueidis.Cacheable {
		return []rueidis.Cacheable{
			b.Get().Key(n.lock).Cache(),
			b.Pttl().Key(n.lock).Cache(),
			b.Get().Key(n.fence).Cache(),
			b.Zcard().Key(n.line).Cache(),
			b.Zrange().Key(n.line).Min("0").Max(strconv.Itoa(lineMax - 1)).Withscores().Cache(),
		}
	}
	cmdNames := []string{"GET", "PTTL", "GET", "ZCARD", "ZRANGE"}
	keysOf := []string{n.lock, n.lock, n.fence, n.line, n.line}
	check := func(i int, err error) error {
		if err != nil && !rueidis.IsRedisNil(err) {
			return r.wrap(ctx, key, keysOf[i], cmdNames[i], err)
		}
		return nil
	}
	if r.cached {
		// Arm the invalidations: any change after this read is pushed.
		for i, x := range r.do(ctx, snap()...) {
			if err := check(i, x.Error()); err != nil {
				return st, err
			}
		}
	}
	// The values come from one transaction, so they are one moment's: the
	// scripts change the lock, its fence and its line together, and cached
	// replies of different keys can be from either side of such a change
	// (an invalidation still on its way).
	cmds := rueidis.Commands{b.Multi().Build()}
	for _, c := range snap() {
		cmds = append(cmds, rueidis.Completed(c))
	}
	cmds = append(cmds, b.Exec().Build())
	st.sent = time.Now()
	res := r.c.DoMulti(ctx, cmds...)
	for i, x := range res[:len(res)-1] {
		if err := x.Error(); err != nil && i == 0 {
			return st, r.wrap(ctx, key, "", "MULTI", err)
		} else if err := check(i-1, err); err != nil {
			return st, err
		}
	}
	v, err := res[len(res)-1].ToArray()
	if err != nil {
		return st, r.wrap(ctx, key, "", "EXEC", err)
	}
	if len(v) != len(cmdNames) {
		return st, fmt.Errorf("lockctl: EXEC replied %d values, want %d", len(v), len(cmdNames))
	}
	for i := range v {
		if err := check(i, v[i].Error()); err != nil {
			return st, err
		}
	}
	if tok, err := v[0].ToString(); err == nil {
		if why := tokenProblem(tok); why != "" {
			return st, &notLockError{key, fmt.Sprintf("%s holds %s, %s", n.lock, quoteShort(tok), why)}
		}
		pttl, _ := v[1].AsInt64()
		if pttl != -2 { // -2: gone between GET and PTTL
			st.Held, st.Token, st.TTLMs = true, tok, pttl
		}
	}
	if f, err := v[2].ToString(); err == nil {
		n, perr := strconv.ParseUint(f, 10, 64)
		if perr != nil {
			return st, &notLockError{key, fmt.Sprintf("%s holds %s, not a fence counter",
				keysOf[2], quoteShort(f))}
		}
		st.Fence = n
	}
	st.LineLen, _ = v[3].AsInt64()
	zs, _ := v[4].AsZScores()
	if len(zs) == 0 {
		return st, nil
	}
	tokens := make([]string, len(zs))
	for i, z := range zs {
		tokens[i] = z.Member
	}
	// Who waits how long is a detail read after the transaction (it needs
	// the tokens); a waiter that left in between shows no ttl.
	details := []rueidis.Cacheable{
		b.Zmscore().Key(n.deadlines).Member(tokens...).Cache(),
		b.Hmget().Key(n.args).Field(tokens...).Cache(),
	}
	var now int64
	res = r.do(ctx, details...)
	if !r.cached {
		t, err := r.c.Do(ctx, b.Time().Build()).AsStrSlice()
		if err != nil {
			return st, r.wrap(ctx, key, "", "TIME", err)
		}
		if len(t) == 2 {
			s, _ := strconv.ParseInt(t[0], 10, 64)
			us, _ := strconv.ParseInt(t[1], 10, 64)
			now = s*1000 + us/1000
		}
	}
	for i, name := range []string{n.deadlines, n.args} {
		if err := res[i].Error(); err != nil && !rueidis.IsRedisNil(err) {
			return st, r.wrap(ctx, key, name, []string{"ZMSCORE", "HMGET"}[i], err)
		}
	}
	ds, _ := res[0].ToArray()
	as, _ := res[1].ToArray()
	chans := make([]string, len(tokens)) // each waiter's strict channel, or ""
	anyStrict := false
	for i, t := range tokens {
		w := waiter{Token: t}
		if i < len(as) {
			if a, err := as[i].ToString(); err == nil {
				ttl, ch, _ := strings.Cut(a, " ")
				w.TTLMs, _ = strconv.ParseInt(ttl, 10, 64)
				if strings.HasSuffix(ch, "!") {
					chans[i], anyStrict = ch, true
				}
			}
		}
		if !r.cached {
			var left int64
			if i < len(ds) {
				if d, err := ds[i].AsFloat64(); err == nil {
					left = int64(d) - now
				}
			}
			w.PlaceMs = &left
		}
		st.Line = append(st.Line, w)
	}
	if !r.cached && anyStrict {
		r.heard(ctx, st.Line, chans)
	}
	return st, nil
}

// heard sets Heard of the waiters in line whose strict channel is chans[i]
// ("" for none), from one PUBSUB NUMSUB of those channels; on a refusal (an
// operator's ACL without it) it leaves them unknown.
func (r *reader) heard(ctx context.Context, line []waiter, chans []string) {
	var strict []string
	for _, ch := range chans {
		if ch != "" {
			strict = append(strict, ch)
		}
	}
	counts, err := r.c.Do(ctx, r.c.B().PubsubNumsub().Channel(strict...).Build()).AsIntMap()
	if err != nil {
		return
	}
	for i, ch := range chans {
		if n, ok := counts[ch]; ok && ch != "" {
			heard := n > 0
			line[i].Heard = &heard
		}
	}
}

// wrap turns err from cmd on Redis name into a notLockError for WRONGTYPE,
// else into redisErr's description.
func (r *reader) wrap(ctx context.Context, key, name, cmd string, err error) error {
	if strings.HasPrefix(err.Error(), "WRONGTYPE") {
		why := fmt.Sprintf("%s holds a value of the wrong type", name)
		if t, terr := r.c.Do(ctx, r.c.B().Type().Key(name).Build()).ToString(); terr == nil {
			why = fmt.Sprintf("%s is a %s", name, t)
		}
		return &notLockError{key, why}
	}
	return r.cfg.redisErr(ctx, cmd, err)
}

// tokenProblem says why v cannot be a lock token, or "" if it can be one:
// tokens are short text without spaces or control bytes (Go's are 22
// characters of URL-safe base64; other languages use similar ones).
func tokenProblem(v string) string {
	if v == "" {
		return "an empty string, not a token"
	}
	if len(v) > 256 {
		return "too long for a token"
	}
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] > '~' {
			return "not a token (tokens are printable ASCII without spaces)"
		}
	}
	return ""
}

// short shortens a token for text output; --json prints tokens whole.
func short(t string) string {
	if len(t) <= 11 {
		return t
	}
	return t[:8] + "..."
}

// quoteShort quotes v for an error message, cut to 40 bytes.
func quoteShort(v string) string {
	if len(v) > 40 {
		return strconv.Quote(v[:40]) + "..."
	}
	return strconv.Quote(v)
}

// show prints a key as it is when it is plain text, else quoted.
func show(k string) string {
	for i := 0; i < len(k); i++ {
		if k[i] <= ' ' || k[i] > '~' || k[i] == '"' {
			return strconv.Quote(k)
		}
	}
	return k
}

// ms formats a millisecond count as a duration ("4.982s").
func ms(v int64) string {
	return (time.Duration(v) * time.Millisecond).String()
}
