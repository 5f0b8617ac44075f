package reliability

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"math/bits"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
)

// TestToken_noRepeatsOverAMillionDraws draws a million tokens and checks
// that none repeats, that each is 22 characters of URL-safe base64 carrying
// 16 random bytes, and that they do not come from a clock or a counter:
// consecutive tokens share no long common prefix (a timestamp or counter in
// the high bytes would), differ in about half their bits (a counter differs
// in about two), and every one of the 128 bit positions is set in about
// half the draws (within 6 standard deviations; a fixed or time-derived
// field would be far off).
func TestToken_noRepeatsOverAMillionDraws(t *testing.T) {
	const n = 1_000_000
	seen := make(map[lock.Token]struct{}, n)
	var ones [128]int
	var prev [16]byte
	maxPrefix, hammingSum := 0, 0
	for i := 0; i < n; i++ {
		tok := lock.NewToken()
		if _, dup := seen[tok]; dup {
			t.Fatalf("token %q repeated after %d draws", tok, i)
		}
		seen[tok] = struct{}{}
		if len(tok) != lock.TokenLen {
			t.Fatalf("token %q has length %d, want %d", tok, len(tok), lock.TokenLen)
		}
		var raw [16]byte
		if k, err := base64.RawURLEncoding.Decode(raw[:], []byte(tok)); err != nil || k != 16 {
			t.Fatalf("token %q is not 16 bytes of unpadded URL-safe base64: %d bytes, %v", tok, k, err)
		}
		for b := 0; b < 128; b++ {
			if raw[b/8]>>(b%8)&1 == 1 {
				ones[b]++
			}
		}
		if i > 0 {
			p := 0
			for p < 16 && raw[p] == prev[p] {
				p++
			}
			maxPrefix = max(maxPrefix, p)
			for j := range raw {
				hammingSum += bits.OnesCount8(raw[j] ^ prev[j])
			}
		}
		prev = raw
	}
	// P(some pair of a million shares 6 leading random bytes) ~ 1e6/2^48.
	if maxPrefix >= 6 {
		t.Errorf("two consecutive tokens share a %d-byte prefix; "+
			"tokens look time- or counter-derived", maxPrefix)
	}
	// The mean Hamming distance of independent 128-bit draws is 64 with a
	// standard error of sqrt(32)/1000 ~ 0.006 over a million pairs.
	if mean := float64(hammingSum) / (n - 1); mean < 63.5 || mean > 64.5 {
		t.Errorf("consecutive tokens differ in %.3f bits on average, want about 64", mean)
	}
	// Each bit: binomial(n, 1/2), standard deviation 500.
	for b, c := range ones {
		if c < n/2-3000 || c > n/2+3000 {
			t.Errorf("bit %d set in %d of %d tokens, want %d±3000", b, c, n, n/2)
		}
	}
}

// aclCommands are the commands lockredis (with client-side caching and
// waiting over Pub/Sub) and rueidis need, found by running every operation
// as a user with -@all and adding what ACL LOG reported missing:
//
//   - hello, ping: rueidis's handshake (HELLO 3 AUTH ...) and health checks;
//   - cluster|slots: rueidis.NewClient asks it on connect to tell Redis
//     Cluster from a single server (ClientOption.ForceSingleClient skips
//     it);
//   - client|tracking, client|caching: client-side caching (tracking OPTIN
//     on connect, CACHING YES before each cached inspect);
//   - (Redis 7.2 and later also want client|setinfo: rueidis sends the
//     library name and version on connect and ignores a refusal; Redis
//     7.0, which these tests run, has no such subcommand);
//   - evalsha, eval: acquire, refresh, release, the NOSCRIPT fallback, and
//     each Manager's check, once subscribed, that the scripts see its
//     subscription (a one-line PUBSUB NUMSUB script);
//   - evalsha_ro, eval_ro: the read-only inspect of lease watches
//     (Lease.Lost);
//   - subscribe: each Manager subscribes, on a connection of its own, to
//     its hand-off channel; without it waiters poll (see
//     TestACL_noSubscribe_waitersPoll);
//   - get, set, del, pexpire, pttl, incr, exists, time, zadd, zrem, zrange,
//     zrangebyscore, zscore, zrank, hset, hget, hdel, publish, pubsub|numsub:
//     what the scripts call inside (pubsub|numsub tells whether a waiter's
//     strict channel is heard; without it the scripts hand keys to
//     waiters that died too, see TestACL_noPubsubNumsub_handsOffAsBefore).
//     Redis checks a script's commands against the user's ACL too; a user
//     could run each of them directly on the prefix's keys, so the
//     scripts do not stand guard over the lock's invariants against this
//     user: give the lock's user to the lock only.
//
// Besides commands the user needs the keys under the prefix (~klauthed:*)
// and the hand-off channels under it (aclChannels): a release script
// publishes on the channel of the waiter it hands the key to, and each
// Manager subscribes to its own.
var aclCommands = []string{
	"+hello", "+ping", "+cluster|slots", "+client|tracking", "+client|caching",
	"+evalsha", "+eval", "+evalsha_ro", "+eval_ro", "+subscribe",
	"+get", "+set", "+del", "+pexpire", "+pttl", "+incr",
	"+exists", "+time", "+zadd", "+zrem", "+zrange", "+zrangebyscore", "+zscore", "+zrank",
	"+hset", "+hget", "+hdel", "+publish", "+pubsub|numsub",
}

// without is aclCommands less the command rule drop.
func without(drop string) []string {
	var out []string
	for _, c := range aclCommands {
		if c != drop {
			out = append(out, c)
		}
	}
	return out
}

// aclChannels is the Pub/Sub channel rule of the minimal user: every
// Manager's hand-off channel is its prefix followed by "wake:" and a random
// id. A narrower rule is not possible (a release publishes to the channels
// of other processes' Managers); a user with a custom Prefix needs
// "&"+Prefix+"wake:*".
const aclChannels = "&" + lockredis.DefaultPrefix + "wake:*"

// setUser creates ACL user name with password "pw", key pattern keys,
// channel pattern chans ("" for none) and the given command rules, after
// resetting everything.
func setUser(t *testing.T, s *redistest.Server, name, keys, chans string, cmds []string) {
	t.Helper()
	args := []string{"ACL", "SETUSER", name, "reset", "on", ">pw", keys, "resetchannels"}
	if chans != "" {
		args = append(args, chans)
	}
	args = append(append(args, "-@all"), cmds...)
	if got := s.Cli(t, args...); got != "OK" {
		t.Fatalf("ACL SETUSER = %q", got)
	}
}

func aclManager(t *testing.T, s *redistest.Server, user string) (*lockredis.Manager, error) {
	t.Helper()
	m, err := lockredis.New(lockredis.Options{ClientOption: rueidis.ClientOption{
		InitAddress: []string{s.Addr},
		Username:    user,
		Password:    "pw",
		Dialer:      net.Dialer{Timeout: time.Second},
	}})
	if err == nil {
		t.Cleanup(func() { m.Close() })
	}
	return m, err
}

// exercise runs every kind of call lockredis makes: a TryAcquire, Refresh,
// a waiter in line handed the key by another Manager's release (over
// Pub/Sub), a waiter whose context ends in line (it leaves the line), a
// lease watch (lock.Run), Release.
func exercise(t *testing.T, a, b *lockredis.Manager) {
	t.Helper()
	c := ctxT(t)
	l := take(t, a, "acl", time.Minute)
	if err := l.Refresh(c, time.Minute); err != nil {
		t.Fatalf("Refresh = %v", err)
	}
	got := make(chan error, 1)
	go func() {
		w, err := b.Acquire(c, "acl", time.Minute)
		if err == nil {
			err = w.Release(c)
		}
		got <- err
	}()
	// A second waiter that gives up while in line.
	gctx, giveUp := context.WithTimeout(c, 300*time.Millisecond)
	defer giveUp()
	if _, err := a.Acquire(gctx, "acl", time.Minute); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire that gives up in line = %v, want its deadline", err)
	}
	if err := l.Release(c); err != nil {
		t.Fatalf("Release = %v", err)
	}
	if err := <-got; err != nil {
		t.Fatalf("waiter = %v", err)
	}
	opts := lock.RunOptions{TTL: time.Second}
	err := lock.Run(c, a, "acl", opts, func(ctx context.Context, _ lock.Lease) error {
		time.Sleep(50 * time.Millisecond)
		return ctx.Err()
	})
	if err != nil {
		t.Fatalf("lock.Run = %v", err)
	}
}

// TestACL_minimalUser_worksEndToEnd runs lockredis as an ACL user allowed
// only aclCommands on only the keys and channels under the default prefix,
// and checks that Redis logged no denied command while it did.
func TestACL_minimalUser_worksEndToEnd(t *testing.T) {
	s := redistest.Start(t)
	setUser(t, s, "klauthed", "~"+lockredis.DefaultPrefix+"*", aclChannels, aclCommands)
	s.Cli(t, "ACL", "LOG", "RESET")
	a, err := aclManager(t, s, "klauthed")
	if err != nil {
		t.Fatalf("New as the minimal ACL user: %v", err)
	}
	b, err := aclManager(t, s, "klauthed")
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, a, b)
	if log := s.Cli(t, "ACL", "LOG"); log != "" {
		t.Errorf("Redis denied commands to the minimal user:\n%s", log)
	}
	// Both Managers were subscribed: hand-offs reached them as pushes.
	chans := strings.Fields(s.Cli(t, "PUBSUB", "CHANNELS", lockredis.DefaultPrefix+"wake:*"))
	if len(chans) != 2 {
		t.Errorf("hand-off channels subscribed: %q, want one per Manager", chans)
	}
}

// aclDenied returns the objects (command, key or channel names) of the
// entries in s's ACL LOG, newest first.
func aclDenied(t *testing.T, s *redistest.Server) []string {
	t.Helper()
	lines := strings.Split(s.Cli(t, "ACL", "LOG"), "\n")
	var out []string
	for i := 0; i+1 < len(lines); i++ {
		if strings.TrimSpace(lines[i]) == "object" {
			out = append(out, strings.TrimSpace(lines[i+1]))
		}
	}
	return out
}

// lineLen returns the number of waiters in key's line (default prefix).
func lineLen(t *testing.T, s *redistest.Server, key string) int {
	t.Helper()
	n, err := strconv.Atoi(s.Cli(t, "ZCARD", lockredis.LockKey(lockredis.DefaultPrefix, key)+":line"))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitInLine waits until key's line has n waiters.
func waitInLine(t *testing.T, s *redistest.Server, key string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for lineLen(t, s, key) < n {
		if time.Now().After(deadline) {
			t.Fatalf("key %q: fewer than %d waiters in line after 5s", key, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitHeard waits until the head of key's line registered its Manager's
// channel (a strict one: scripts/README.md, "Tokens and channels"), which a
// waiter does once its Manager is subscribed: a release then publishes the
// hand-off to it.
func waitHeard(t *testing.T, s *redistest.Server, key string) {
	t.Helper()
	k := lockredis.LockKey(lockredis.DefaultPrefix, key)
	deadline := time.Now().Add(5 * time.Second)
	for {
		head := s.Cli(t, "ZRANGE", k+":line", "0", "0")
		if head != "" && strings.HasSuffix(s.Cli(t, "HGET", k+":line:args", head), "!") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the head of %q never registered a strict channel", key)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// permEnv is where a permCall runs: the server, and two Managers of the
// user under test (other where a second process is needed).
type permEnv struct {
	t        *testing.T
	s        *redistest.Server
	m, other *lockredis.Manager
}

// permCall is a call that needs one permission.
type permCall func(ctx context.Context, e permEnv) error

// tryFree is TryAcquire of a free key: the acquire script's fast path.
func tryFree(ctx context.Context, e permEnv) error {
	_, _, err := e.m.TryAcquire(ctx, "k", time.Minute)
	return err
}

// joinLine is an Acquire of a held key: its first attempt joins the line.
func joinLine(ctx context.Context, e permEnv) error {
	if _, ok, err := e.m.TryAcquire(ctx, "k", time.Minute); err != nil || !ok {
		return fmt.Errorf("setup: first TryAcquire = %v, %v", ok, err)
	}
	_, err := e.m.Acquire(ctx, "k", time.Minute)
	return err
}

// releaseFree is the Release of a key nobody waits for: DEL.
func releaseFree(ctx context.Context, e permEnv) error {
	l, ok, err := e.m.TryAcquire(ctx, "k", time.Minute)
	if err != nil || !ok {
		return fmt.Errorf("setup: first TryAcquire = %v, %v", ok, err)
	}
	return l.Release(ctx)
}

// afterScriptFlush is a TryAcquire after SCRIPT FLUSH: EVALSHA meets
// NOSCRIPT and the wrapper falls back to EVAL.
func afterScriptFlush(ctx context.Context, e permEnv) error {
	if got := e.s.Cli(e.t, "SCRIPT", "FLUSH"); got != "OK" {
		e.t.Fatalf("SCRIPT FLUSH = %q", got)
	}
	return tryFree(ctx, e)
}

// handOff is the Release of a key another Manager waits for in line: the
// release script takes the waiter out of the line, hands it the key and
// publishes on its channel.
func handOff(ctx context.Context, e permEnv) error {
	l, ok, err := e.m.TryAcquire(ctx, "k", time.Minute)
	if err != nil || !ok {
		return fmt.Errorf("setup: first TryAcquire = %v, %v", ok, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	waited := make(chan struct{})
	go func() {
		defer close(waited)
		if w, err := e.other.Acquire(wctx, "k", time.Minute); err == nil {
			_ = w.Release(context.Background())
		}
	}()
	defer func() { cancel(); <-waited }()
	waitInLine(e.t, e.s, "k", 1)
	waitHeard(e.t, e.s, "k")
	e.s.Cli(e.t, "ACL", "LOG", "RESET") // only the release's denials count
	return l.Release(ctx)
}

// TestACL_missingPermission_failsFastWithNOPERM removes one permission at a
// time and checks that the call that needs it returns Redis's denial (an
// error reply: NOPERM, or, inside a script, "The user executing the script
// can't ...") well within its context's deadline, instead of hanging or
// reporting contention, and that Redis logged the denial of that very
// command, key or channel. A command denied inside a script aborts the
// script after the writes it made (Redis has no rollback), so a user
// missing one of them can leave a key's line half updated: the minimal
// user needs every command of aclCommands.
//
// SUBSCRIBE is the exception: without it waiters poll
// (TestACL_noSubscribe_waitersPoll). Without evalsha_ro (or, after SCRIPT
// FLUSH, eval_ro), lease watches cannot read the key; no call returns that
// (TestACL_noEvalshaRO_leaseWatchStopsAsking). Without client|caching
// rueidis reads the key anyway but Redis does not track it, so Lost
// reports a loss only when Refresh finds it; no call returns that either.
func TestACL_missingPermission_failsFastWithNOPERM(t *testing.T) {
	keys := "~" + lockredis.DefaultPrefix + "*"
	type permCase struct {
		name        string
		keys, chans string
		cmds        []string
		call        permCall
		denied      string // the ACL LOG object: command, key or channel prefix
	}
	cases := []permCase{
		{name: "keyPatternExcludesPrefix", keys: "~other:*", chans: aclChannels, cmds: aclCommands,
			call: tryFree, denied: lockredis.LockKey(lockredis.DefaultPrefix, "k")},
		{name: "noEvalsha", keys: keys, chans: aclChannels, cmds: without("+evalsha"),
			call: tryFree, denied: "evalsha"},
	}
	// Commands the scripts call inside, each with the call that meets it
	// first.
	for _, c := range []struct {
		cmd  string
		call permCall
	}{
		{"eval", afterScriptFlush}, {"del", releaseFree},
		{"get", releaseFree}, {"exists", tryFree}, {"incr", tryFree}, {"set", tryFree},
		{"pttl", joinLine}, {"time", joinLine}, {"zrangebyscore", joinLine},
		{"zscore", joinLine}, {"zrange", joinLine}, {"zadd", joinLine}, {"hset", joinLine},
		{"pexpire", joinLine}, {"zrank", joinLine}, {"hget", joinLine},
		{"zrem", handOff}, {"hdel", handOff}, {"publish", handOff},
	} {
		cases = append(cases, permCase{name: "no_" + c.cmd, keys: keys, chans: aclChannels,
			cmds: without("+" + c.cmd), call: c.call, denied: c.cmd})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := redistest.Start(t)
			setUser(t, s, "klauthed", tc.keys, tc.chans, tc.cmds)
			m, err := aclManager(t, s, "klauthed")
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			other, err := aclManager(t, s, "klauthed")
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			s.Cli(t, "ACL", "LOG", "RESET")
			const bound = 10 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			start := time.Now()
			err = tc.call(ctx, permEnv{t: t, s: s, m: m, other: other})
			took := time.Since(start)
			var re *rueidis.RedisError
			if !errors.As(err, &re) ||
				!(strings.Contains(err.Error(), "NOPERM") ||
					strings.Contains(err.Error(), "user executing the script can't")) {
				t.Fatalf("call without the permission = %v, want Redis's denial", err)
			}
			if errors.Is(err, context.DeadlineExceeded) || took > bound/2 {
				t.Fatalf("call without the permission took %v (%v); "+
					"want a prompt denial, not a wait for the deadline", took, err)
			}
			denied := aclDenied(t, s)
			found := false
			for _, o := range denied {
				prefix := strings.HasSuffix(tc.denied, ":") && strings.HasPrefix(o, tc.denied)
				found = found || o == tc.denied || prefix
			}
			if !found {
				t.Fatalf("ACL LOG denied %q, want %q among them", denied, tc.denied)
			}
			t.Logf("%s: %v (after %v)", tc.name, err, took.Round(time.Millisecond))
		})
	}

	t.Run("noClientTracking", func(t *testing.T) {
		// Without CLIENT TRACKING the connection handshake fails: New
		// reports it at once.
		s := redistest.Start(t)
		setUser(t, s, "klauthed", keys, aclChannels, without("+client|tracking"))
		_, err := aclManager(t, s, "klauthed")
		if err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Fatalf("New without client|tracking = %v, want an error naming NOPERM", err)
		}
	})
}

// TestACL_noEvalshaRO_leaseWatchStopsAsking runs a lease watch (Lost) as a
// user without evalsha_ro, the read the watch is made of. No call returns
// the denial (the watch runs in the background), so what is asserted is
// that the watch does not go on asking: Redis denies it a few times, not
// once per MaxBackoff for as long as the lease is held.
//
// It fails today (about 25 denied reads a second per watched lease, for
// as long as the lease lives): lockredis's watchLoop treats every error of
// its read as "Redis unreachable for now" and retries with backoff capped at
// MaxBackoff (50ms), so a permanent error reply (NOPERM) becomes a polling
// loop, and the lease's Lost never fires. See the report of the
// reliability branch.
func TestACL_noEvalshaRO_leaseWatchStopsAsking(t *testing.T) {
	cmds := without("+evalsha_ro")
	s := redistest.Start(t)
	setUser(t, s, "klauthed", "~"+lockredis.DefaultPrefix+"*", aclChannels, cmds)
	m, err := aclManager(t, s, "klauthed")
	if err != nil {
		t.Fatal(err)
	}
	l := take(t, m, "k", time.Minute)
	s.Cli(t, "ACL", "LOG", "RESET")
	_ = l.(lock.Watcher).Lost()
	time.Sleep(time.Second)
	lines := strings.Split(s.Cli(t, "ACL", "LOG"), "\n")
	denied := 0
	for i := 0; i+1 < len(lines); i++ {
		if strings.TrimSpace(lines[i]) == "count" {
			n, _ := strconv.Atoi(strings.TrimSpace(lines[i+1]))
			denied += n
		}
	}
	if denied == 0 {
		t.Fatal("setup: Redis denied nothing; the watch did not read the key")
	}
	if denied > 5 {
		t.Errorf("Redis denied the lease watch's read %d times in 1s; want it to stop asking "+
			"after a permanent denial (error reply), not to retry every MaxBackoff", denied)
	}
}

// TestACL_noSubscribe_waitersPoll runs waiters as a user without
// SUBSCRIBE, or without the channel rule: Redis refuses the Manager's
// subscription (logged in ACL LOG, and no channel is subscribed), and
// waiting still works, by polling: each of a line of waiters of another
// Manager gets the key, in turn, promptly after the holder before it
// releases. (The waiters then register no channel, so no release publishes
// to one.)
func TestACL_noSubscribe_waitersPoll(t *testing.T) {
	cmds := without("+subscribe")
	t.Run("noSubscribe", func(t *testing.T) { waitersPoll(t, aclChannels, cmds, "subscribe") })
	t.Run("noChannels", func(t *testing.T) {
		waitersPoll(t, "", aclCommands, lockredis.DefaultPrefix+"wake:")
	})
}

// waitersPoll is TestACL_noSubscribe_waitersPoll for a user with channel
// rule chans and commands cmds, whose subscription Redis denies as denied
// (a command, or a channel prefix ending in ":").
func waitersPoll(t *testing.T, chans string, cmds []string, denied string) {
	s := redistest.Start(t)
	setUser(t, s, "klauthed", "~"+lockredis.DefaultPrefix+"*", chans, cmds)
	s.Cli(t, "ACL", "LOG", "RESET")
	holder, err := aclManager(t, s, "klauthed")
	if err != nil {
		t.Fatal(err)
	}
	waiters, err := aclManager(t, s, "klauthed")
	if err != nil {
		t.Fatal(err)
	}
	c := ctxT(t)
	l := take(t, holder, "k", time.Minute)
	const n = 3
	got := make(chan lock.Lease, n)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			w, err := waiters.Acquire(c, "k", time.Minute)
			if err != nil {
				errs <- err
				return
			}
			got <- w
		}()
		waitInLine(t, s, "k", i+1)
	}
	// Both Managers' subscriptions were refused by now.
	deadline := time.Now().Add(5 * time.Second)
	for !slices.ContainsFunc(aclDenied(t, s), func(o string) bool {
		return o == denied || strings.HasSuffix(denied, ":") && strings.HasPrefix(o, denied)
	}) {
		if time.Now().After(deadline) {
			t.Fatalf("ACL LOG never denied %s: %q", denied, aclDenied(t, s))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if chans := s.Cli(t, "PUBSUB", "CHANNELS", "*"); chans != "" {
		t.Fatalf("subscribed channels %q, want none", chans)
	}
	prev := l
	for i := 0; i < n; i++ {
		start := time.Now()
		if err := prev.Release(c); err != nil {
			t.Fatalf("Release = %v", err)
		}
		select {
		case w := <-got:
			if took := time.Since(start); took > time.Second {
				t.Errorf("waiter %d got the key %v after the release; want about a poll's delay", i, took)
			}
			if w.Fence() != prev.Fence()+1 {
				t.Errorf("waiter %d got fence %d, want %d", i, w.Fence(), prev.Fence()+1)
			}
			prev = w
		case err := <-errs:
			t.Fatalf("waiter = %v", err)
		case <-time.After(5 * time.Second):
			t.Fatalf("waiter %d not served within 5s of the release", i)
		}
	}
	if err := prev.Release(c); err != nil {
		t.Fatal(err)
	}
}

// TestACL_noPubsubNumsub_handsOffAsBefore runs lockredis as a user without
// PUBSUB NUMSUB, which the scripts use to skip a waiter whose strict channel
// nobody hears (a killed process). The scripts then count every waiter as
// hearing: hand-offs work as before (and a killed waiter is handed the key
// until its TTL ends), Redis logging the denied NUMSUB.
func TestACL_noPubsubNumsub_handsOffAsBefore(t *testing.T) {
	cmds := without("+pubsub|numsub")
	s := redistest.Start(t)
	setUser(t, s, "klauthed", "~"+lockredis.DefaultPrefix+"*", aclChannels, cmds)
	m, err := aclManager(t, s, "klauthed")
	if err != nil {
		t.Fatal(err)
	}
	other, err := aclManager(t, s, "klauthed")
	if err != nil {
		t.Fatal(err)
	}
	c := ctxT(t)
	if err := handOff(c, permEnv{t: t, s: s, m: m, other: other}); err != nil {
		t.Fatalf("hand-off without pubsub|numsub = %v, want it to work", err)
	}
	if denied := aclDenied(t, s); !slices.Contains(denied, "pubsub|numsub") {
		t.Fatalf("ACL LOG denied %q, want pubsub|numsub: the release did not ask", denied)
	}
}

// tlsFiles writes a fresh CA and a server certificate for 127.0.0.1 signed
// by it (ECDSA P-256) into dir and returns the CA pool and the file names.
func tlsFiles(t *testing.T, dir string) (pool *x509.CertPool, caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "klauthed test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		block := &pem.Block{Type: typ, Bytes: der}
		if err := os.WriteFile(p, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pool = x509.NewCertPool()
	pool.AddCert(ca)
	return pool, write("ca.crt", "CERTIFICATE", caDER),
		write("server.crt", "CERTIFICATE", srvDER), write("server.key", "EC PRIVATE KEY", keyDER)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestTLS_acquireReleaseOverTLS starts redis-server with a TLS port and a
// certificate made here, and runs lockredis over TLS (verifying the server
// against the test CA). It also checks that a client that does not trust
// the CA is refused, and that plain RESP on the TLS port does not work, so
// the lease really went over TLS. The server keeps a plain port too: the
// test helper checks readiness on it (redistest pings without TLS).
func TestTLS_acquireReleaseOverTLS(t *testing.T) {
	pool, ca, cert, key := tlsFiles(t, t.TempDir())
	port := freePort(t)
	s := redistest.Start(t,
		"--tls-port", strconv.Itoa(port),
		"--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
		"--tls-auth-clients", "no")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	newTLS := func(cfg *tls.Config) (*lockredis.Manager, error) {
		m, err := lockredis.New(lockredis.Options{ClientOption: rueidis.ClientOption{
			InitAddress: []string{addr},
			TLSConfig:   cfg,
			Dialer:      net.Dialer{Timeout: 2 * time.Second},
		}})
		if err == nil {
			t.Cleanup(func() { m.Close() })
		}
		return m, err
	}
	a, err := newTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("New over TLS: %v", err)
	}
	b, err := newTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, a, b)
	if n := s.Cli(t, "INFO", "stats"); !strings.Contains(n, "total_connections_received") {
		t.Fatalf("INFO stats: %q", n)
	}

	_, err = newTLS(&tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12})
	if err == nil {
		t.Error("a client that does not trust the test CA connected")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted CA: %v, want a certificate error", err)
	}
	if m, err := lockredis.New(lockredis.Options{ClientOption: rueidis.ClientOption{
		InitAddress: []string{addr},
		Dialer:      net.Dialer{Timeout: time.Second},
	}}); err == nil {
		m.Close()
		t.Error("plain RESP on the TLS port connected")
	}
}
