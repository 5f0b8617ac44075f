// Tests of the Lua scripts as files: what a user pastes into EVAL. Every case
// of the contract in README.md runs against a real redis-server and against
// miniredis (where time moves with SetTime and FastForward, so line
// deadlines, read with TIME, and key TTLs move together). The redis-cli tests
// run the exact copy-paste commands of the README through a shell.
package scripts_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"

	"github.com/klauthed/lock/gen"
	"github.com/klauthed/lock/internal/redistest"
)

// backend is one Redis the scripts run on.
type backend struct {
	c       rueidis.Client
	addr    string
	advance func(t *testing.T, d time.Duration) // let d pass on the server's clock
}

func realRedis(t *testing.T) backend {
	t.Helper()
	srv := redistest.Start(t)
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	advance := func(t *testing.T, d time.Duration) { time.Sleep(d) }
	return backend{c: c, addr: srv.Addr, advance: advance}
}

// miniRedis runs miniredis on a fixed clock: TIME (which the scripts read
// for line deadlines) replies the clock, and advance moves the clock and
// the keys' TTLs together.
func miniRedis(t *testing.T) backend {
	t.Helper()
	m := miniredis.RunT(t)
	var mu sync.Mutex
	now := time.Now()
	m.SetTime(now)
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: []string{m.Addr()}, DisableCache: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return backend{c: c, addr: m.Addr(), advance: func(t *testing.T, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(d)
		m.SetTime(now)
		m.FastForward(d)
	}}
}

// forEachBackend runs fn as a subtest per backend. Each backend is shared by
// the cases of one test; every case uses its own keys.
func forEachBackend(t *testing.T, fn func(t *testing.T, b backend)) {
	t.Run("redis-server", func(t *testing.T) { fn(t, realRedis(t)) })
	t.Run("miniredis", func(t *testing.T) { fn(t, miniRedis(t)) })
}

func source(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(name + ".lua")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// lockKeys are the five keys of one lock, laid out as README.md says:
// "klauthed:{k}", then ":fence", ":line", ":line:deadlines", ":line:args".
type lockKeys struct{ lock, fence, line, deadlines, args string }

func (k lockKeys) all() []string { return []string{k.lock, k.fence, k.line, k.deadlines, k.args} }

// keys returns the keys of the lock named after the running test.
func keys(t *testing.T) lockKeys {
	k := "klauthed:{" + t.Name() + "}"
	return lockKeys{k, k + ":fence", k + ":line", k + ":line:deadlines", k + ":line:args"}
}

// eval runs a script file with EVAL (or EVAL_RO) and returns the reply.
func eval(
	t *testing.T, b backend, ro bool, name string, keys []string, args ...string,
) rueidis.RedisResult {
	t.Helper()
	src := source(t, name)
	ctx := context.Background()
	if ro {
		return b.c.Do(ctx, b.c.B().EvalRo().Script(src).Numkeys(int64(len(keys))).
			Key(keys...).Arg(args...).Build())
	}
	return b.c.Do(ctx, b.c.B().Eval().Script(src).Numkeys(int64(len(keys))).
		Key(keys...).Arg(args...).Build())
}

// acq runs acquire.lua on k's five keys and decodes {acquired, fence, ttl,
// position}.
func acq(t *testing.T, b backend, k lockKeys, token, ttl, lineTTL, channel string) []int64 {
	t.Helper()
	got := ints(t, eval(t, b, false, "acquire", k.all(), token, ttl, lineTTL, channel))
	equal(t, "acquire reply length", len(got), 4)
	return got
}

// released is release.lua's reply {released, next token or nil, fence, ttl}.
type released struct {
	Released int64
	Next     string // "" for nil
	Fence    int64
	TTL      int64
}

func rel(t *testing.T, b backend, k lockKeys, token, channel string) released {
	t.Helper()
	r := eval(t, b, false, "release", k.all(), token, channel)
	vals, err := r.ToArray()
	if err != nil {
		t.Fatalf("release reply: %v", err)
	}
	equal(t, "release reply length", len(vals), 4)
	var out released
	if out.Released, err = vals[0].AsInt64(); err != nil {
		t.Fatal(err)
	}
	if !vals[1].IsNil() {
		if out.Next, err = vals[1].ToString(); err != nil {
			t.Fatalf("release next: %v", err)
		}
	}
	if out.Fence, err = vals[2].AsInt64(); err != nil {
		t.Fatal(err)
	}
	if out.TTL, err = vals[3].AsInt64(); err != nil {
		t.Fatal(err)
	}
	return out
}

func ints(t *testing.T, r rueidis.RedisResult) []int64 {
	t.Helper()
	vals, err := r.ToArray()
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	out := make([]int64, len(vals))
	for i := range vals {
		if out[i], err = vals[i].AsInt64(); err != nil {
			t.Fatalf("reply element %d: %v", i+1, err)
		}
	}
	return out
}

func one(t *testing.T, r rueidis.RedisResult) int64 {
	t.Helper()
	n, err := r.AsInt64()
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	return n
}

// wantErr checks that r is a Redis error reply containing want.
func wantErr(t *testing.T, r rueidis.RedisResult, want string) {
	t.Helper()
	rerr, ok := rueidis.IsRedisErr(r.Error())
	if !ok {
		t.Fatalf("reply %v, error %v: want a Redis error reply containing %q", r, r.Error(), want)
	}
	if !strings.Contains(rerr.Error(), want) {
		t.Fatalf("error reply %q: want it to contain %q", rerr.Error(), want)
	}
}

func do(t *testing.T, b backend, args ...string) rueidis.RedisResult {
	t.Helper()
	return b.c.Do(context.Background(), b.c.B().Arbitrary(args...).Build())
}

func get(t *testing.T, b backend, key string) (string, bool) {
	t.Helper()
	s, err := do(t, b, "GET", key).ToString()
	if rueidis.IsRedisNil(err) {
		return "", false
	}
	if err != nil {
		t.Fatalf("GET %s: %v", key, err)
	}
	return s, true
}

func pttl(t *testing.T, b backend, key string) int64 {
	t.Helper()
	return one(t, do(t, b, "PTTL", key))
}

func exists(t *testing.T, b backend, key string) bool {
	t.Helper()
	return one(t, do(t, b, "EXISTS", key)) == 1
}

func equal(t *testing.T, what string, got, want any) {
	t.Helper()
	if got != want {
		t.Fatalf("%s = %v, want %v", what, got, want)
	}
}

// inLine reports the token's place in k's line from 1, or 0 when it is not
// in the line.
func inLine(t *testing.T, b backend, k lockKeys, token string) int64 {
	t.Helper()
	r := do(t, b, "ZRANK", k.line, token)
	n, err := r.AsInt64()
	if rueidis.IsRedisNil(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return n + 1
}

// subscribe subscribes to channel on a client of its own (miniredis
// refuses other commands on a RESP3 connection that subscribed) and
// returns the messages published there. It returns once the server counts
// the subscription.
func subscribe(t *testing.T, b backend, channel string) <-chan string {
	t.Helper()
	sub, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: []string{b.addr}, DisableCache: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	ctx, cancel := context.WithCancel(context.Background())
	msgs := make(chan string, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = sub.Receive(ctx, sub.B().Subscribe().Channel(channel).Build(), func(m rueidis.PubSubMessage) {
			msgs <- m.Message
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(5 * time.Second)
	for {
		vals, err := do(t, b, "PUBSUB", "NUMSUB", channel).ToArray()
		if err != nil {
			t.Fatal(err)
		}
		if n, _ := vals[1].AsInt64(); n == 1 {
			return msgs
		}
		if time.Now().After(deadline) {
			t.Fatalf("subscription to %s never counted", channel)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// nextMessage returns the next message on msgs, failing after 5s.
func nextMessage(t *testing.T, msgs <-chan string) string {
	t.Helper()
	select {
	case m := <-msgs:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message within 5s")
		return ""
	}
}

// snapshot is the content of k's keys as text: each key's type, value and
// TTL rounded up to whole seconds, so that two reads a few milliseconds
// apart compare equal while a PEXPIRE to another TTL shows.
func snapshot(t *testing.T, b backend, k lockKeys) string {
	t.Helper()
	var sb strings.Builder
	for _, key := range k.all() {
		typ, err := do(t, b, "TYPE", key).ToString()
		if err != nil {
			t.Fatal(err)
		}
		var v any
		switch typ {
		case "string":
			v, _ = do(t, b, "GET", key).ToString()
		case "zset":
			v, _ = do(t, b, "ZRANGE", key, "0", "-1", "WITHSCORES").ToAny()
		case "hash":
			v, _ = do(t, b, "HGETALL", key).ToAny()
		case "list":
			v, _ = do(t, b, "LRANGE", key, "0", "-1").ToAny()
		}
		p := pttl(t, b, key)
		if p > 0 {
			p = (p + 999) / 1000
		}
		fmt.Fprintf(&sb, "%s: %s %v ttl~%ds\n", key, typ, v, p)
	}
	return sb.String()
}

func TestAcquire(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Run("absentKey_setsTokenWithTTLAndFenceWithout", func(t *testing.T) {
			k := keys(t)
			got := acq(t, b, k, "tok", "5000", "0", "")
			equal(t, "acquired", got[0], int64(1))
			equal(t, "fence", got[1], int64(1))
			equal(t, "ttl", got[2], int64(5000))
			equal(t, "position", got[3], int64(0))
			v, _ := get(t, b, k.lock)
			equal(t, "lock value", v, "tok")
			if p := pttl(t, b, k.lock); p <= 0 || p > 5000 {
				t.Fatalf("lock PTTL = %d, want in (0, 5000]", p)
			}
			f, _ := get(t, b, k.fence)
			equal(t, "fence value", f, "1")
			equal(t, "fence PTTL", pttl(t, b, k.fence), int64(-1))
			equal(t, "line exists", exists(t, b, k.line), false)
		})
		t.Run("sameToken_resetsTTLKeepsFence", func(t *testing.T) {
			k := keys(t)
			first := acq(t, b, k, "tok", "1000", "0", "")
			again := acq(t, b, k, "tok", "60000", "5000", "ch")
			equal(t, "acquired", again[0], int64(1))
			equal(t, "fence", again[1], first[1])
			equal(t, "ttl", again[2], int64(60000))
			equal(t, "position", again[3], int64(0))
			if p := pttl(t, b, k.lock); p <= 1000 {
				t.Fatalf("lock PTTL = %d after re-acquire with 60000, want > 1000", p)
			}
			f, _ := get(t, b, k.fence)
			equal(t, "fence counter", f, "1")
			equal(t, "line exists", exists(t, b, k.line), false)
		})
		t.Run("otherToken_repliesHolderPTTLChangesNothing", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "holder", "5000", "0", "")
			got := acq(t, b, k, "other", "60000", "0", "")
			equal(t, "acquired", got[0], int64(0))
			equal(t, "fence", got[1], int64(0))
			if got[2] <= 0 || got[2] > 5000 {
				t.Fatalf("holder PTTL = %d, want in (0, 5000]", got[2])
			}
			equal(t, "position", got[3], int64(0))
			v, _ := get(t, b, k.lock)
			equal(t, "lock value", v, "holder")
			if p := pttl(t, b, k.lock); p > 5000 {
				t.Fatalf("lock PTTL = %d, want <= 5000 (unchanged)", p)
			}
			f, _ := get(t, b, k.fence)
			equal(t, "fence counter", f, "1")
			for _, key := range k.all()[2:] {
				equal(t, key+" exists", exists(t, b, key), false)
			}
		})
		t.Run("holderWithoutExpiry_repliesMinusOne", func(t *testing.T) {
			k := keys(t)
			do(t, b, "SET", k.lock, "foreign")
			got := acq(t, b, k, "tok", "5000", "0", "")
			equal(t, "acquired", got[0], int64(0))
			equal(t, "pttl", got[2], int64(-1))
		})
		t.Run("fenceGrowsAcrossReleaseAndExpiry", func(t *testing.T) {
			k := keys(t)
			a := acq(t, b, k, "a", "5000", "0", "")
			equal(t, "released", rel(t, b, k, "a", "").Released, int64(1))
			bb := acq(t, b, k, "b", "50", "0", "")
			b.advance(t, 150*time.Millisecond)
			equal(t, "lock exists after expiry", exists(t, b, k.lock), false)
			c := acq(t, b, k, "c", "5000", "0", "")
			if !(a[1] < bb[1] && bb[1] < c[1]) {
				t.Fatalf("fences %d, %d, %d: want strictly increasing", a[1], bb[1], c[1])
			}
			equal(t, "acquired after expiry", c[0], int64(1))
		})
		t.Run("maxTTL_accepted", func(t *testing.T) {
			k := keys(t)
			got := acq(t, b, k, "tok", "31536000000", "31536000000", "")
			equal(t, "acquired", got[0], int64(1))
			equal(t, "ttl", got[2], int64(31536000000))
		})
		t.Run("missingChannel_isEmpty", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "holder", "5000", "0", "")
			got := ints(t, eval(t, b, false, "acquire", k.all(), "tok", "5000", "5000"))
			equal(t, "position", got[3], int64(1))
			a, _ := do(t, b, "HGET", k.args, "tok").ToString()
			equal(t, "line args", a, "5000 ")
		})
		const badLine = "invalid line ttl: want an integer number of milliseconds from 0 to 31536000000"
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"emptyToken", []string{"", "5000", "0", ""}, "invalid token"},
			{"missingToken", nil, "invalid token"},
			{"missingTTL", []string{"tok"}, "invalid ttl"},
			{"zeroTTL", []string{"tok", "0", "0", ""}, "invalid ttl"},
			{"negativeTTL", []string{"tok", "-5", "0", ""}, "invalid ttl"},
			{"leadingZeroTTL", []string{"tok", "05000", "0", ""}, "invalid ttl"},
			{"fractionalTTL", []string{"tok", "1.5", "0", ""}, "invalid ttl"},
			{"textTTL", []string{"tok", "5s", "0", ""}, "invalid ttl"},
			{"emptyTTL", []string{"tok", "", "0", ""}, "invalid ttl"},
			{"spaceTTL", []string{"tok", " 5000", "0", ""}, "invalid ttl"},
			{"overMaxTTL", []string{"tok", "31536000001", "0", ""}, "invalid ttl"},
			{"hugeTTL", []string{"tok", strings.Repeat("9", 400), "0", ""}, "invalid ttl"},
			{"missingLineTTL", []string{"tok", "5000"}, badLine},
			{"emptyLineTTL", []string{"tok", "5000", "", ""}, badLine},
			{"negativeLineTTL", []string{"tok", "5000", "-1", ""}, badLine},
			{"fractionalLineTTL", []string{"tok", "5000", "0.5", ""}, badLine},
			{"leadingZeroLineTTL", []string{"tok", "5000", "00", ""}, badLine},
			{"textLineTTL", []string{"tok", "5000", "1s", ""}, badLine},
			{"overMaxLineTTL", []string{"tok", "5000", "31536000001", ""}, badLine},
		} {
			t.Run("badArgs_"+tc.name+"_errWritesNothing", func(t *testing.T) {
				k := keys(t)
				wantErr(t, eval(t, b, false, "acquire", k.all(), tc.args...), tc.want)
				for _, key := range k.all() {
					equal(t, key+" exists", exists(t, b, key), false)
				}
			})
		}
		t.Run("badLineTTL_heldKey_errLeavesLineAlone", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "holder", "5000", "0", "")
			acq(t, b, k, "w", "5000", "5000", "")
			before := snapshot(t, b, k)
			wantErr(t, eval(t, b, false, "acquire", k.all(), "x", "5000", "-1", ""), badLine)
			equal(t, "keys after a bad line ttl", snapshot(t, b, k), before)
		})
		t.Run("twoKeys_errWritesNothing", func(t *testing.T) {
			k := keys(t)
			wantErr(t, eval(t, b, false, "acquire", k.all()[:2], "tok", "5000", "0", ""),
				"wrong number of keys: want 5")
			equal(t, "lock key exists", exists(t, b, k.lock), false)
		})
		t.Run("fenceKeyNotInteger_errLockNotSet", func(t *testing.T) {
			k := keys(t)
			do(t, b, "SET", k.fence, "not-a-number")
			wantErr(t, eval(t, b, false, "acquire", k.all(), "tok", "5000", "0", ""), "not an integer")
			equal(t, "lock key exists", exists(t, b, k.lock), false)
		})
		t.Run("sameTokenFenceKeyNotInteger_errTTLUnchanged", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "tok", "5000", "0", "")
			do(t, b, "SET", k.fence, "junk")
			wantErr(t, eval(t, b, false, "acquire", k.all(), "tok", "60000", "0", ""), "not an integer")
			if p := pttl(t, b, k.lock); p > 5000 {
				t.Fatalf("lock PTTL = %d, want <= 5000", p)
			}
		})
		t.Run("freeKeyWithLineFenceNotInteger_errWritesNothing", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "holder", "5000", "0", "")
			acq(t, b, k, "w", "5000", "5000", "")
			do(t, b, "DEL", k.lock)
			do(t, b, "SET", k.fence, "1.5")
			before := snapshot(t, b, k)
			wantErr(t, eval(t, b, false, "acquire", k.all(), "x", "5000", "5000", ""), "not an integer")
			equal(t, "keys after the failed acquire", snapshot(t, b, k), before)
		})
	})
}

func TestRefresh(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Run("holder_setsTTLReplies1", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "tok", "1000", "0", "")
			equal(t, "reply",
				one(t, eval(t, b, false, "refresh", []string{k.lock}, "tok", "60000")), int64(1))
			if p := pttl(t, b, k.lock); p <= 1000 || p > 60000 {
				t.Fatalf("PTTL = %d, want in (1000, 60000]", p)
			}
		})
		t.Run("otherToken_replies0ChangesNothing", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "holder", "5000", "0", "")
			equal(t, "reply",
				one(t, eval(t, b, false, "refresh", []string{k.lock}, "other", "60000")), int64(0))
			if p := pttl(t, b, k.lock); p > 5000 {
				t.Fatalf("PTTL = %d, want <= 5000", p)
			}
			v, _ := get(t, b, k.lock)
			equal(t, "value", v, "holder")
		})
		t.Run("absent_replies0CreatesNothing", func(t *testing.T) {
			k := keys(t)
			equal(t, "reply",
				one(t, eval(t, b, false, "refresh", []string{k.lock}, "tok", "5000")), int64(0))
			equal(t, "exists", exists(t, b, k.lock), false)
		})
		t.Run("afterExpiry_replies0", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "tok", "50", "0", "")
			b.advance(t, 150*time.Millisecond)
			equal(t, "reply",
				one(t, eval(t, b, false, "refresh", []string{k.lock}, "tok", "5000")), int64(0))
			equal(t, "exists", exists(t, b, k.lock), false)
		})
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"emptyToken", []string{"", "5000"}, "invalid token"},
			{"zeroTTL", []string{"tok", "0"}, "invalid ttl"},
			{"textTTL", []string{"tok", "abc"}, "invalid ttl"},
			{"overMaxTTL", []string{"tok", "31536000001"}, "invalid ttl"},
			{"missingTTL", []string{"tok"}, "invalid ttl"},
		} {
			t.Run("badArgs_"+tc.name+"_errWritesNothing", func(t *testing.T) {
				k := keys(t)
				acq(t, b, k, "tok", "5000", "0", "")
				wantErr(t, eval(t, b, false, "refresh", []string{k.lock}, tc.args...), tc.want)
				if p := pttl(t, b, k.lock); p > 5000 {
					t.Fatalf("PTTL = %d, want <= 5000", p)
				}
			})
		}
		t.Run("wrongType_WRONGTYPE", func(t *testing.T) {
			k := keys(t)
			do(t, b, "LPUSH", k.lock, "x")
			wantErr(t, eval(t, b, false, "refresh", []string{k.lock}, "tok", "5000"), "WRONGTYPE")
			equal(t, "PTTL", pttl(t, b, k.lock), int64(-1))
		})
	})
}

func TestRelease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Run("holder_deletesReplies1KeepsFence", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "tok", "5000", "0", "")
			equal(t, "reply", rel(t, b, k, "tok", ""), released{Released: 1})
			equal(t, "lock exists", exists(t, b, k.lock), false)
			f, _ := get(t, b, k.fence)
			equal(t, "fence", f, "1")
		})
		t.Run("otherToken_replies0KeepsHolder", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "holder", "5000", "0", "")
			equal(t, "reply", rel(t, b, k, "other", ""), released{})
			v, _ := get(t, b, k.lock)
			equal(t, "value", v, "holder")
		})
		t.Run("absent_replies0", func(t *testing.T) {
			k := keys(t)
			equal(t, "reply", rel(t, b, k, "tok", ""), released{})
		})
		t.Run("twice_secondReplies0", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "tok", "5000", "0", "")
			equal(t, "first", rel(t, b, k, "tok", "").Released, int64(1))
			equal(t, "second", rel(t, b, k, "tok", "").Released, int64(0))
		})
		t.Run("expiredThenRetaken_staleTokenCannotFreeNewHolder", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "old", "50", "0", "")
			b.advance(t, 150*time.Millisecond)
			acq(t, b, k, "new", "5000", "0", "")
			equal(t, "reply", rel(t, b, k, "old", ""), released{})
			v, _ := get(t, b, k.lock)
			equal(t, "value", v, "new")
		})
		t.Run("badArgs_errKeepsHolder", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "tok", "5000", "0", "")
			wantErr(t, eval(t, b, false, "release", k.all(), "", ""), "invalid token")
			wantErr(t, eval(t, b, false, "release", k.all()), "invalid token")
			wantErr(t, eval(t, b, false, "release", k.all()[:1], "tok", ""), "wrong number of keys: want 5")
			equal(t, "exists", exists(t, b, k.lock), true)
		})
		t.Run("missingChannel_isEmpty", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "tok", "5000", "0", "")
			vals, err := eval(t, b, false, "release", k.all(), "tok").ToArray()
			if err != nil {
				t.Fatal(err)
			}
			n, _ := vals[0].AsInt64()
			equal(t, "released", n, int64(1))
		})
		t.Run("fenceNotIntegerWithLine_errKeepsEverything", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "tok", "5000", "0", "")
			acq(t, b, k, "w", "5000", "5000", "")
			do(t, b, "SET", k.fence, "x")
			before := snapshot(t, b, k)
			wantErr(t, eval(t, b, false, "release", k.all(), "tok", ""), "not an integer")
			equal(t, "keys after the failed release", snapshot(t, b, k), before)
		})
	})
}

// TestLine covers protocol 2's waiting line (README.md, "The line").
func TestLine(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Run("joinAndKeepPlace_sameTokenPositionStable", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "h", "5000", "0", "")
			a := acq(t, b, k, "a", "3000", "10000", "chA")
			if a[0] != 0 || a[1] != 0 || a[2] <= 0 || a[2] > 5000 || a[3] != 1 {
				t.Fatalf("first waiter = %v, want {0, 0, holder PTTL, 1}", a)
			}
			equal(t, "second waiter position", acq(t, b, k, "b", "3000", "10000", "chB")[3], int64(2))
			for i := 0; i < 3; i++ {
				equal(t, "a again", acq(t, b, k, "a", "3000", "10000", "chA")[3], int64(1))
				equal(t, "b again", acq(t, b, k, "b", "3000", "10000", "chB")[3], int64(2))
			}
			v, _ := get(t, b, k.lock)
			equal(t, "holder", v, "h")
			args, _ := do(t, b, "HGET", k.args, "a").ToString()
			equal(t, "a's line args", args, "3000 chA")
		})
		t.Run("lineTTL0_neverJoins", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "h", "5000", "0", "")
			got := acq(t, b, k, "c", "5000", "0", "chC")
			equal(t, "position", got[3], int64(0))
			for _, key := range k.all()[2:] {
				equal(t, key+" exists", exists(t, b, key), false)
			}
			acq(t, b, k, "a", "5000", "5000", "")
			got = acq(t, b, k, "c", "5000", "0", "chC")
			equal(t, "position with a line", got[3], int64(0))
			equal(t, "c in line", inLine(t, b, k, "c"), int64(0))
		})
		t.Run("release_handsToHeadAndPublishes", func(t *testing.T) {
			k := keys(t)
			chA := "ch:" + t.Name() + ":a"
			msgs := subscribe(t, b, chA)
			h := acq(t, b, k, "h", "5000", "0", "")
			acq(t, b, k, "a", "7000", "10000", chA)
			acq(t, b, k, "b", "8000", "10000", "chB")
			got := rel(t, b, k, "h", "chH")
			equal(t, "release", got, released{Released: 1, Next: "a", Fence: h[1] + 1, TTL: 7000})
			v, _ := get(t, b, k.lock)
			equal(t, "lock", v, "a")
			if p := pttl(t, b, k.lock); p <= 5000 || p > 7000 {
				t.Fatalf("lock PTTL = %d, want the head's ttl 7000", p)
			}
			f, _ := get(t, b, k.fence)
			equal(t, "fence", f, strconv.FormatInt(h[1]+1, 10))
			equal(t, "a in line", inLine(t, b, k, "a"), int64(0))
			equal(t, "b in line", inLine(t, b, k, "b"), int64(1))
			equal(t, "published", nextMessage(t, msgs), fmt.Sprintf("%d 7000 a", h[1]+1))
		})
		t.Run("release_noPublishOnOwnChannel", func(t *testing.T) {
			k := keys(t)
			ch := "ch:" + t.Name()
			msgs := subscribe(t, b, ch)
			acq(t, b, k, "h", "5000", "0", "")
			acq(t, b, k, "a", "7000", "10000", ch)
			equal(t, "handed to", rel(t, b, k, "h", ch).Next, "a")
			do(t, b, "PUBLISH", ch, "marker")
			equal(t, "first message", nextMessage(t, msgs), "marker")
		})
		t.Run("release_skipsStrictHeadNobodyHears_itKeepsItsPlace", func(t *testing.T) {
			k := keys(t)
			deaf := "ch:" + t.Name() + ":a!" // strict, nobody subscribed
			chB := "ch:" + t.Name() + ":b!"  // strict, subscribed
			msgsB := subscribe(t, b, chB)
			h := acq(t, b, k, "h", "5000", "0", "")
			acq(t, b, k, "a", "7000", "10000", deaf)
			acq(t, b, k, "b", "8000", "10000", chB)
			acq(t, b, k, "c", "9000", "10000", "chC") // not strict, nobody subscribed
			got := rel(t, b, k, "h", "")
			equal(t, "release", got, released{Released: 1, Next: "b", Fence: h[1] + 1, TTL: 8000})
			equal(t, "published to b", nextMessage(t, msgsB), fmt.Sprintf("%d 8000 b", h[1]+1))
			equal(t, "a in line", inLine(t, b, k, "a"), int64(1))
			// Once a hears, it is next: it kept its place.
			msgsA := subscribe(t, b, deaf)
			got = rel(t, b, k, "b", "")
			equal(t, "second release", got, released{Released: 1, Next: "a", Fence: h[1] + 2, TTL: 7000})
			equal(t, "published to a", nextMessage(t, msgsA), fmt.Sprintf("%d 7000 a", h[1]+2))
			// A channel that is not strict is handed the key heard or not.
			equal(t, "third release", rel(t, b, k, "a", "").Next, "c")
		})
		t.Run("release_nobodyHears_keyFreeFenceUnchanged", func(t *testing.T) {
			k := keys(t)
			h := acq(t, b, k, "h", "5000", "0", "")
			acq(t, b, k, "a", "7000", "10000", "ch:"+t.Name()+":a!")
			equal(t, "release", rel(t, b, k, "h", ""), released{Released: 1})
			equal(t, "lock exists", exists(t, b, k.lock), false)
			f, _ := get(t, b, k.fence)
			equal(t, "fence", f, strconv.FormatInt(h[1], 10))
			equal(t, "a in line", inLine(t, b, k, "a"), int64(1))
			// Nobody ahead of a try can hear: it takes the free key.
			got := acq(t, b, k, "d", "5000", "0", "")
			equal(t, "try acquired", got[0], int64(1))
			equal(t, "try fence", got[1], h[1]+1)
			equal(t, "a in line", inLine(t, b, k, "a"), int64(1))
			// The caller's own strict channel counts as heard in release:
			// its reply carries the hand-off.
			got2 := rel(t, b, k, "d", "ch:"+t.Name()+":a!")
			equal(t, "release to own channel", got2.Next, "a")
		})
		t.Run("acquireOnFreeKey_skipsStrictHeadNobodyHears", func(t *testing.T) {
			k := keys(t)
			chB := "ch:" + t.Name() + ":b!"
			msgsB := subscribe(t, b, chB)
			h := acq(t, b, k, "h", "100", "0", "")
			acq(t, b, k, "a", "6000", "10000", "ch:"+t.Name()+":a!")
			acq(t, b, k, "b", "7000", "10000", chB)
			b.advance(t, 200*time.Millisecond) // h expires; nobody released it
			got := acq(t, b, k, "c", "5000", "10000", "chC")
			if got[0] != 0 || got[3] != 2 {
				t.Fatalf("acquire of the free key = %v, want {0, 0, b's ttl, 2}", got)
			}
			v, _ := get(t, b, k.lock)
			equal(t, "lock", v, "b")
			equal(t, "published to b", nextMessage(t, msgsB), fmt.Sprintf("%d 7000 b", h[1]+1))
			equal(t, "a in line", inLine(t, b, k, "a"), int64(1))
			// The deaf head itself takes the free key when it calls.
			equal(t, "b's release skips a", rel(t, b, k, "b", "").Next, "c")
			equal(t, "c's release", rel(t, b, k, "c", ""), released{Released: 1})
			equal(t, "a acquires", acq(t, b, k, "a", "6000", "10000", "ch:"+t.Name()+":a!")[0], int64(1))
		})
		t.Run("acquireOnFreeKey_handsToHeadCallerJoins", func(t *testing.T) {
			k := keys(t)
			chA := "ch:" + t.Name() + ":a"
			msgs := subscribe(t, b, chA)
			h := acq(t, b, k, "h", "100", "0", "")
			acq(t, b, k, "a", "6000", "10000", chA)
			b.advance(t, 200*time.Millisecond) // h expires; nobody released it
			equal(t, "lock exists", exists(t, b, k.lock), false)
			got := acq(t, b, k, "c", "5000", "10000", "chC")
			if got[0] != 0 || got[2] <= 5000 || got[2] > 6000 || got[3] != 1 {
				t.Fatalf("acquire of the free key = %v, want {0, 0, a's ttl 6000, 1}", got)
			}
			v, _ := get(t, b, k.lock)
			equal(t, "lock", v, "a")
			f, _ := get(t, b, k.fence)
			equal(t, "fence", f, strconv.FormatInt(h[1]+1, 10))
			equal(t, "published", nextMessage(t, msgs), fmt.Sprintf("%d 6000 a", h[1]+1))
			// With line ttl 0 (TryAcquire) the hand-off happens too, and
			// the caller stays out of the line.
			k2 := lockKeys{k.lock + "2", k.fence + "2", k.line + "2", k.deadlines + "2", k.args + "2"}
			acq(t, b, k2, "h", "100", "0", "")
			acq(t, b, k2, "a", "6000", "10000", "")
			b.advance(t, 200*time.Millisecond)
			got = acq(t, b, k2, "c", "5000", "0", "")
			if got[0] != 0 || got[2] <= 5000 || got[3] != 0 {
				t.Fatalf("TryAcquire of the free key = %v, want {0, 0, a's ttl, 0}", got)
			}
			v, _ = get(t, b, k2.lock)
			equal(t, "lock", v, "a")
			equal(t, "line exists", exists(t, b, k2.line), false)
		})
		t.Run("headCallsAcquireOnFreeKey_takesIt", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "h", "100", "0", "")
			acq(t, b, k, "a", "6000", "10000", "")
			acq(t, b, k, "b", "6000", "10000", "")
			b.advance(t, 200*time.Millisecond)
			got := acq(t, b, k, "a", "6000", "10000", "")
			equal(t, "acquired", got[0], int64(1))
			equal(t, "fence", got[1], int64(2))
			equal(t, "a in line", inLine(t, b, k, "a"), int64(0))
			equal(t, "b in line", inLine(t, b, k, "b"), int64(1))
		})
		t.Run("entriesNotKeptAlive_expireAndAreSkipped", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "h", "60000", "0", "")
			acq(t, b, k, "a", "5000", "100", "")
			acq(t, b, k, "b", "5000", "10000", "")
			b.advance(t, 200*time.Millisecond)
			// a stopped keeping its place: the hand-off skips it.
			got := rel(t, b, k, "h", "")
			equal(t, "handed to", got.Next, "b")
			equal(t, "a in line", inLine(t, b, k, "a"), int64(0))
			equal(t, "line exists", exists(t, b, k.line), false)
		})
		t.Run("entryNotKeptAlive_rejoinsAtTheTail", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "h", "60000", "0", "")
			acq(t, b, k, "a", "5000", "100", "")
			acq(t, b, k, "b", "5000", "10000", "")
			b.advance(t, 200*time.Millisecond)
			// Nothing dropped a's entry yet, but its place is lost.
			equal(t, "a's position", acq(t, b, k, "a", "5000", "10000", "")[3], int64(2))
			equal(t, "b's position", acq(t, b, k, "b", "5000", "10000", "")[3], int64(1))
		})
		t.Run("lineKeys_PTTLOfLongestEntryVanishWhenEmpty", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "h", "60000", "0", "")
			acq(t, b, k, "a", "5000", "3000", "")
			acq(t, b, k, "b", "5000", "1000", "")
			for _, key := range k.all()[2:] {
				if p := pttl(t, b, key); p <= 1000 || p > 3000 {
					t.Fatalf("PTTL %s = %d, want in (1000, 3000]: the longest entry's", key, p)
				}
			}
			acq(t, b, k, "a", "5000", "500", "")
			for _, key := range k.all()[2:] {
				if p := pttl(t, b, key); p <= 500 || p > 1000 {
					t.Fatalf("PTTL %s = %d after a shortened its entry, want in (500, 1000]", key, p)
				}
			}
			rel(t, b, k, "a", "")
			rel(t, b, k, "b", "")
			equal(t, "line exists after everyone left", exists(t, b, k.line), false)
			// What is left are the marks of the two given-up places, until
			// the longer of them (b's, 1000ms) would have lapsed.
			b.advance(t, 1100*time.Millisecond)
			for _, key := range k.all()[2:] {
				equal(t, key+" exists after the given-up places lapsed", exists(t, b, key), false)
			}
			acq(t, b, k, "c", "5000", "100", "")
			b.advance(t, 200*time.Millisecond)
			for _, key := range k.all()[2:] {
				equal(t, key+" exists after its entry expired", exists(t, b, key), false)
			}
		})
		t.Run("waiterRelease_leavesLine", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "h", "5000", "0", "")
			acq(t, b, k, "a", "5000", "1000", "")
			acq(t, b, k, "b", "5000", "1000", "")
			equal(t, "a gives up", rel(t, b, k, "a", ""), released{})
			equal(t, "a in line", inLine(t, b, k, "a"), int64(0))
			equal(t, "b in line", inLine(t, b, k, "b"), int64(1))
			v, _ := get(t, b, k.lock)
			equal(t, "holder", v, "h")
			// An acquire with a's token that arrives late (sent before its
			// release, delayed on another connection) neither joins the
			// line again nor takes the key.
			late := acq(t, b, k, "a", "5000", "10000", "")
			equal(t, "a's late acquire: acquired", late[0], int64(0))
			equal(t, "a's late acquire: position", late[3], int64(0))
			equal(t, "a in line after its late acquire", inLine(t, b, k, "a"), int64(0))
			rel(t, b, k, "b", "")
			equal(t, "line exists", exists(t, b, k.line), false)
			equal(t, "h releases", rel(t, b, k, "h", ""), released{Released: 1})
			late = acq(t, b, k, "a", "5000", "10000", "")
			equal(t, "a's late acquire of the free key: acquired", late[0], int64(0))
			if _, ok := get(t, b, k.lock); ok {
				t.Fatal("a late acquire of a token that gave its place up took the key")
			}
			b.advance(t, 1100*time.Millisecond)
			for _, key := range k.all()[2:] {
				equal(t, key+" exists after the given-up places lapsed", exists(t, b, key), false)
			}
		})
		t.Run("waiterReleaseOnFreeKey_handsToNext", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "h", "100", "0", "")
			acq(t, b, k, "a", "5000", "10000", "")
			acq(t, b, k, "b", "5000", "10000", "")
			b.advance(t, 200*time.Millisecond)
			equal(t, "a gives up", rel(t, b, k, "a", ""), released{Next: "b", Fence: 2, TTL: 5000})
		})
		t.Run("grantedWaiter_acquireRepliesGrantedFence", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "h", "5000", "0", "")
			acq(t, b, k, "a", "3000", "10000", "")
			got := rel(t, b, k, "h", "")
			equal(t, "handed to", got.Next, "a")
			again := acq(t, b, k, "a", "60000", "10000", "")
			equal(t, "poll", fmt.Sprint(again), fmt.Sprint([]int64{1, got.Fence, 60000, 0}))
			if p := pttl(t, b, k.lock); p <= 3000 {
				t.Fatalf("lock PTTL = %d after the poll with ttl 60000, want > 3000", p)
			}
		})
		t.Run("handedToDeadWaiter_freeAfterItsTTL", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "h", "5000", "0", "")
			acq(t, b, k, "a", "100", "10000", "")
			equal(t, "handed to", rel(t, b, k, "h", "").Next, "a")
			b.advance(t, 200*time.Millisecond)
			equal(t, "acquired after the dead waiter's ttl", acq(t, b, k, "c", "5000", "0", "")[0], int64(1))
		})
	})
}

// TestWrongType puts each of the five keys, in turn, in the wrong type
// under each state a call can meet, and checks that every call either
// succeeds (it did not need that key) or fails with WRONGTYPE having
// written nothing: scripts are not rolled back, so each reads every key it
// may write before its first write.
func TestWrongType(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		type call struct {
			name, script string
			args         []string
		}
		states := []struct {
			name  string
			setup func(t *testing.T, k lockKeys)
			calls []call
		}{
			{"heldWithLine", func(t *testing.T, k lockKeys) {
				acq(t, b, k, "h", "5000", "0", "")
				acq(t, b, k, "a", "5000", "10000", "")
			}, []call{
				{"holderAcquires", "acquire", []string{"h", "60000", "10000", ""}},
				{"otherJoins", "acquire", []string{"x", "60000", "10000", ""}},
				{"waiterKeepsPlace", "acquire", []string{"a", "60000", "20000", ""}},
				{"holderReleases", "release", []string{"h", ""}},
				{"waiterGivesUp", "release", []string{"a", ""}},
			}},
			{"freeWithLine", func(t *testing.T, k lockKeys) {
				acq(t, b, k, "h", "5000", "0", "")
				acq(t, b, k, "a", "5000", "10000", "")
				do(t, b, "DEL", k.lock)
			}, []call{
				{"otherAcquires", "acquire", []string{"x", "60000", "10000", ""}},
				{"otherTries", "acquire", []string{"x", "60000", "0", ""}},
				{"headAcquires", "acquire", []string{"a", "60000", "10000", ""}},
				{"waiterGivesUp", "release", []string{"a", ""}},
			}},
			{"heldNoLine", func(t *testing.T, k lockKeys) {
				acq(t, b, k, "h", "5000", "0", "")
			}, []call{
				{"holderAcquires", "acquire", []string{"h", "60000", "0", ""}},
				{"otherJoins", "acquire", []string{"x", "60000", "10000", ""}},
				{"holderReleases", "release", []string{"h", ""}},
			}},
		}
		names := []string{"lock", "fence", "line", "deadlines", "args"}
		for _, st := range states {
			for _, c := range st.calls {
				for wrong := range 5 {
					t.Run(st.name+"_"+c.name+"_"+names[wrong], func(t *testing.T) {
						k := keys(t)
						st.setup(t, k)
						key := k.all()[wrong]
						do(t, b, "DEL", key)
						do(t, b, "RPUSH", key, "x")
						before := snapshot(t, b, k)
						r := eval(t, b, false, c.script, k.all(), c.args...)
						if r.Error() == nil {
							return // the call did not need the key
						}
						wantErr(t, r, "WRONGTYPE")
						equal(t, "keys after WRONGTYPE", snapshot(t, b, k), before)
					})
				}
			}
		}
	})
}

// TestProtocol1Client runs the protocol-1 scripts (testdata/protocol1: the
// acquire of SET NX PX + INCR on two keys, the release of compare-and-
// delete) beside protocol-2 users of the same key.
func TestProtocol1Client(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		const p1Acquire, p1Release = "testdata/protocol1/acquire", "testdata/protocol1/release"
		p1acq := func(t *testing.T, k lockKeys, tok string) []int64 {
			t.Helper()
			return ints(t, eval(t, b, false, p1Acquire, k.all()[:2], tok, "5000"))
		}
		p1rel := func(t *testing.T, k lockKeys, tok string) int64 {
			t.Helper()
			return one(t, eval(t, b, false, p1Release, k.all()[:1], tok))
		}
		t.Run("mutualExclusionBothWays", func(t *testing.T) {
			k := keys(t)
			equal(t, "p1 takes the free key", p1acq(t, k, "old")[0], int64(1))
			equal(t, "p2 try", acq(t, b, k, "new", "5000", "0", "")[0], int64(0))
			equal(t, "p2 joins", acq(t, b, k, "new", "5000", "10000", "")[3], int64(1))
			equal(t, "p2 cannot release p1's lock", rel(t, b, k, "x", "").Released, int64(0))
			equal(t, "p1 releases", p1rel(t, k, "old"), int64(1))
			// p1's release does not hand off: the key is free with a line,
			// and the next protocol-2 call hands it to the head.
			got := acq(t, b, k, "new", "5000", "10000", "")
			equal(t, "head takes it", got[0], int64(1))
			equal(t, "fence", got[1], int64(2))
			equal(t, "p1 while p2 holds", p1acq(t, k, "old2")[0], int64(0))
			equal(t, "p1 cannot release p2's lock", p1rel(t, k, "old2"), int64(0))
			acq(t, b, k, "w", "5000", "10000", "")
			equal(t, "p2 release hands to its line", rel(t, b, k, "new", "").Next, "w")
			equal(t, "p1 after the hand-off", p1acq(t, k, "old2")[0], int64(0))
			rel(t, b, k, "w", "")
			got = p1acq(t, k, "old2")
			equal(t, "p1 on the free key, empty line", got[0], int64(1))
			equal(t, "fence", got[1], int64(4))
		})
		t.Run("p1JumpsTheLineOnlyWhenTheKeyIsFree", func(t *testing.T) {
			k := keys(t)
			acq(t, b, k, "h", "100", "0", "")
			acq(t, b, k, "a", "5000", "10000", "")
			b.advance(t, 200*time.Millisecond) // h expired: free, line non-empty
			equal(t, "p1 takes the free key", p1acq(t, k, "old")[0], int64(1))
			equal(t, "waiter polls", acq(t, b, k, "a", "5000", "10000", "")[0], int64(0))
			v, _ := get(t, b, k.lock)
			equal(t, "holder", v, "old")
		})
	})
}

// TestProtocol1Client_concurrentMutualExclusion has protocol-1 and
// protocol-2 clients contend for one key on a real redis-server; a
// holder counts itself in while it holds, and no two ever overlap.
func TestProtocol1Client_concurrentMutualExclusion(t *testing.T) {
	b := realRedis(t)
	k := keys(t)
	src1 := source(t, "testdata/protocol1/acquire")
	rel1 := source(t, "testdata/protocol1/release")
	src2, rel2 := source(t, "acquire"), source(t, "release")
	ctx := context.Background()
	var mu sync.Mutex
	inside, entries := 0, [2]int{}
	enter := func() error {
		mu.Lock()
		defer mu.Unlock()
		inside++
		if inside != 1 {
			return fmt.Errorf("%d holders at once", inside)
		}
		return nil
	}
	leave := func(proto int) {
		mu.Lock()
		inside--
		entries[proto-1]++
		mu.Unlock()
	}
	deadline := time.Now().Add(time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		proto := 1 + w%2
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := b.c
			for i := 0; time.Now().Before(deadline); i++ {
				tok := fmt.Sprintf("w%d-%d", w, i)
				for held := false; !held; {
					var r rueidis.RedisResult
					if proto == 1 {
						r = c.Do(ctx, c.B().Eval().Script(src1).Numkeys(2).Key(k.lock, k.fence).
							Arg(tok, "10000").Build())
					} else {
						r = c.Do(ctx, c.B().Eval().Script(src2).Numkeys(5).Key(k.all()...).
							Arg(tok, "10000", "2000", "").Build())
					}
					vals, err := r.ToArray()
					if err != nil {
						errs <- err
						return
					}
					n, _ := vals[0].AsInt64()
					held = n == 1
					if !held {
						time.Sleep(time.Millisecond)
					}
				}
				if err := enter(); err != nil {
					errs <- err
					return
				}
				leave(proto)
				var err error
				if proto == 1 {
					err = c.Do(ctx, c.B().Eval().Script(rel1).Numkeys(1).Key(k.lock).Arg(tok).Build()).Error()
				} else {
					err = c.Do(ctx, c.B().Eval().Script(rel2).Numkeys(5).Key(k.all()...).
						Arg(tok, "").Build()).Error()
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("entries: protocol 1 %d, protocol 2 %d", entries[0], entries[1])
	if entries[1] == 0 {
		t.Fatal("protocol-2 clients never held the key")
	}
}

// inspectReply decodes {token|nil, pttl}; a nil token arrives as a RESP3
// null (rueidis speaks RESP3); a boolean false would mean the script called
// redis.setresp(3), and is accepted too.
func inspectReply(t *testing.T, r rueidis.RedisResult) (token string, held bool, pttl int64) {
	t.Helper()
	vals, err := r.ToArray()
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	equal(t, "reply length", len(vals), 2)
	if !vals[0].IsNil() && !vals[0].IsBool() {
		if token, err = vals[0].ToString(); err != nil {
			t.Fatal(err)
		}
		held = true
	} else if vals[0].IsBool() {
		if b, _ := vals[0].ToBool(); b {
			t.Fatal("token element is boolean true")
		}
	}
	if pttl, err = vals[1].AsInt64(); err != nil {
		t.Fatal(err)
	}
	return token, held, pttl
}

func TestInspect(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		// Every case runs under EVAL_RO: the header says readonly: true.
		t.Run("absent_nilAndZero", func(t *testing.T) {
			lk := keys(t).lock
			tok, held, p := inspectReply(t, eval(t, b, true, "inspect", []string{lk}))
			equal(t, "held", held, false)
			equal(t, "token", tok, "")
			equal(t, "pttl", p, int64(0))
		})
		t.Run("held_tokenAndPTTL", func(t *testing.T) {
			k := keys(t)
			lk := k.lock
			acq(t, b, k, "tok", "5000", "0", "")
			tok, held, p := inspectReply(t, eval(t, b, true, "inspect", []string{lk}))
			equal(t, "held", held, true)
			equal(t, "token", tok, "tok")
			if p <= 0 || p > 5000 {
				t.Fatalf("pttl = %d, want in (0, 5000]", p)
			}
		})
		t.Run("noExpiry_minusOne", func(t *testing.T) {
			lk := keys(t).lock
			do(t, b, "SET", lk, "foreign")
			tok, _, p := inspectReply(t, eval(t, b, true, "inspect", []string{lk}))
			equal(t, "token", tok, "foreign")
			equal(t, "pttl", p, int64(-1))
		})
		t.Run("afterExpiry_nil", func(t *testing.T) {
			k := keys(t)
			lk := k.lock
			acq(t, b, k, "tok", "50", "0", "")
			b.advance(t, 150*time.Millisecond)
			_, held, _ := inspectReply(t, eval(t, b, true, "inspect", []string{lk}))
			equal(t, "held", held, false)
		})
		t.Run("wrongType_WRONGTYPE", func(t *testing.T) {
			lk := keys(t).lock
			do(t, b, "HSET", lk, "f", "v")
			wantErr(t, eval(t, b, true, "inspect", []string{lk}), "WRONGTYPE")
		})
		t.Run("twoKeys_err", func(t *testing.T) {
			k := keys(t)
			wantErr(t, eval(t, b, true, "inspect", []string{k.lock, k.fence}), "wrong number of keys")
		})
	})
}

// TestWriteScripts_refusedUnderEVAL_RO checks that the headers' readonly:
// false is honest: a real redis-server refuses their writes under EVAL_RO.
func TestWriteScripts_refusedUnderEVAL_RO(t *testing.T) {
	b := realRedis(t)
	k := keys(t)
	wantErr(t, eval(t, b, true, "acquire", k.all(), "tok", "5000", "0", ""),
		"Write commands are not allowed")
	for _, key := range k.all() {
		equal(t, key+" exists", exists(t, b, key), false)
	}
	acq(t, b, k, "tok", "5000", "0", "")
	before := snapshot(t, b, k)
	wantErr(t, eval(t, b, true, "refresh", k.all()[:1], "tok", "60000"),
		"Write commands are not allowed")
	wantErr(t, eval(t, b, true, "release", k.all(), "tok", ""), "Write commands are not allowed")
	equal(t, "keys", snapshot(t, b, k), before)
}

// cliShell runs a shell command line in the module root with $CLI set to
// "redis-cli -h HOST -p PORT" for srv, as a user would type it.
func cliShell(t *testing.T, srv *redistest.Server, line string) string {
	t.Helper()
	host, port, err := net.SplitHostPort(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", line)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CLI=redis-cli -h "+host+" -p "+port)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", line, err, out)
	}
	return strings.TrimSpace(string(out))
}

// readmeBlocks returns the ```sh blocks of README.md that run redis-cli.
func readmeBlocks(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	rest := string(b)
	for {
		_, after, ok := strings.Cut(rest, "\n```sh\n")
		if !ok {
			return blocks
		}
		block, next, ok := strings.Cut(after, "\n```\n")
		if !ok {
			t.Fatal("README.md: unterminated ```sh block")
		}
		if strings.Contains(block, "redis-cli ") {
			blocks = append(blocks, block)
		}
		rest = next
	}
}

// TestREADME_redisCLI runs every ```sh block of README.md that uses
// redis-cli, in the order of the page, as one shell script each, on one
// redis-server (redis-cli pointed at it by a wrapper first on PATH), from
// the module root, and compares what redis-cli prints with the block's "#>"
// lines; "<ms>" there stands for an integer.
func TestREADME_redisCLI(t *testing.T) {
	srv := redistest.Start(t)
	host, port, err := net.SplitHostPort(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	real, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	wrapper := "#!/bin/sh\nexec " + real + " -h " + host + " -p " + port + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(bin, "redis-cli"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	blocks := readmeBlocks(t)
	if len(blocks) < 4 {
		t.Fatalf("README.md has %d redis-cli blocks, want at least 4: "+
			"did the fences change?", len(blocks))
	}
	for i, block := range blocks {
		var want []string
		for _, line := range strings.Split(block, "\n") {
			if rest, ok := strings.CutPrefix(line, "#>"); ok {
				want = append(want, strings.TrimPrefix(rest, " "))
			}
		}
		cmd := exec.Command("sh", "-c", block)
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("block %d: %v\n%s", i+1, err, block)
		}
		got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
		if len(got) != len(want) {
			t.Fatalf("block %d printed %d lines, want %d:\n%s\n--- got:\n%s",
				i+1, len(got), len(want), block, out)
		}
		for j := range want {
			ok := got[j] == want[j]
			if w, has := strings.CutSuffix(want[j], "<ms>"); has && strings.HasPrefix(got[j], w) {
				_, err := strconv.ParseInt(strings.TrimPrefix(got[j], w), 10, 64)
				ok = err == nil
			}
			if !ok {
				t.Fatalf("block %d, output line %d = %q, want %q\n%s", i+1, j+1, got[j], want[j], block)
			}
		}
	}
}

// TestRedisCLI_errorsAndWrongType runs error cases through redis-cli as
// README.md describes its output: the error text on stdout, exit status 0,
// nothing written.
func TestRedisCLI_errorsAndWrongType(t *testing.T) {
	srv := redistest.Start(t)
	const k5 = `'{e}' '{e}:fence' '{e}:line' '{e}:line:deadlines' '{e}:line:args'`
	steps := []struct{ cmd, want string }{
		{
			`$CLI EVAL "$(cat scripts/acquire.lua)" 5 ` + k5 + ` '' 5000 0 ''`,
			"ERR invalid token: want a non-empty string",
		},
		{
			`$CLI EVAL "$(cat scripts/acquire.lua)" 5 ` + k5 + ` tok 5000 -1 ''`,
			"ERR invalid line ttl: want an integer number of milliseconds from 0 to 31536000000",
		},
		{
			`$CLI EVAL "$(cat scripts/acquire.lua)" 2 '{e}' '{e}:fence' tok 5000`,
			"ERR wrong number of keys: want 5 (lock, fence, line, line deadlines, line args)",
		},
		{
			`$CLI EVAL "$(cat scripts/refresh.lua)" 1 '{e}' tok 1.5`,
			"ERR invalid ttl: want an integer number of milliseconds from 1 to 31536000000",
		},
		{
			`$CLI EVAL "$(cat scripts/release.lua)" 5 ` + k5 + ` '' ''`,
			"ERR invalid token: want a non-empty string",
		},
		{`$CLI EXISTS '{e}' '{e}:fence' '{e}:line'`, "0"},
		{
			`$CLI HSET '{e}' f v >/dev/null; ` +
				`$CLI EVAL "$(cat scripts/acquire.lua)" 5 ` + k5 + ` tok 5000 0 '' | cut -c1-9`,
			"WRONGTYPE",
		},
		{`$CLI EXISTS '{e}:fence'`, "0"},
	}
	for _, s := range steps {
		if got := cliShell(t, srv, s.cmd); got != s.want {
			t.Fatalf("%s\ngot:\n%s\nwant:\n%s", s.cmd, got, s.want)
		}
	}
}

// TestRedisCLI_scriptLoadMatchesGenSHA1 checks that SCRIPT LOAD "$(cat ...)"
// returns the SHA1 that gen exports, so EVALSHA works across languages.
func TestRedisCLI_scriptLoadMatchesGenSHA1(t *testing.T) {
	srv := redistest.Start(t)
	if len(gen.Scripts) != 4 {
		t.Fatalf("gen.Scripts has %d scripts, want 4", len(gen.Scripts))
	}
	for _, s := range gen.Scripts {
		got := cliShell(t, srv, `$CLI SCRIPT LOAD "$(cat scripts/`+s.Name+`.lua)"`)
		equal(t, s.Name+" SHA1", got, s.SHA1)
	}
}
