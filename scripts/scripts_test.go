// Tests of the Lua scripts as files: what a user pastes into EVAL. Every case
// of the contract in README.md runs against a real redis-server and against
// miniredis (where time moves with FastForward). The redis-cli tests run the
// exact copy-paste commands of the README through a shell.
package scripts_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
	return backend{c: c, advance: func(t *testing.T, d time.Duration) { time.Sleep(d) }}
}

func miniRedis(t *testing.T) backend {
	t.Helper()
	m := miniredis.RunT(t)
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{m.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return backend{c: c, advance: func(t *testing.T, d time.Duration) { m.FastForward(d) }}
}

// forEachBackend runs fn as a subtest per backend. Each backend is shared by
// the cases of one test; every case uses its own keys.
func forEachBackend(t *testing.T, fn func(t *testing.T, b backend)) {
	t.Run("redis-server", func(t *testing.T) { fn(t, realRedis(t)) })
	t.Run("miniredis", func(t *testing.T) { fn(t, miniRedis(t)) })
}

func source(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name + ".lua")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// keys returns the lock and fence key for the running test, laid out as
// README.md says: "klauthed:{k}" and "klauthed:{k}:fence".
func keys(t *testing.T) (lockKey, fenceKey string) {
	k := "klauthed:{" + t.Name() + "}"
	return k, k + ":fence"
}

// eval runs a script file with EVAL (or EVAL_RO) and returns the reply.
func eval(t *testing.T, b backend, ro bool, name string, keys []string, args ...string) rueidis.RedisResult {
	t.Helper()
	src := source(t, name)
	ctx := context.Background()
	if ro {
		return b.c.Do(ctx, b.c.B().EvalRo().Script(src).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build())
	}
	return b.c.Do(ctx, b.c.B().Eval().Script(src).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build())
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

func TestAcquire(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Run("absentKey_setsTokenWithTTLAndFenceWithout", func(t *testing.T) {
			lk, fk := keys(t)
			got := ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "5000"))
			equal(t, "reply", len(got), 3)
			equal(t, "acquired", got[0], int64(1))
			equal(t, "fence", got[1], int64(1))
			equal(t, "ttl", got[2], int64(5000))
			v, _ := get(t, b, lk)
			equal(t, "lock value", v, "tok")
			if p := pttl(t, b, lk); p <= 0 || p > 5000 {
				t.Fatalf("lock PTTL = %d, want in (0, 5000]", p)
			}
			f, _ := get(t, b, fk)
			equal(t, "fence value", f, "1")
			equal(t, "fence PTTL", pttl(t, b, fk), int64(-1))
		})
		t.Run("sameToken_resetsTTLKeepsFence", func(t *testing.T) {
			lk, fk := keys(t)
			first := ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "1000"))
			again := ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "60000"))
			equal(t, "acquired", again[0], int64(1))
			equal(t, "fence", again[1], first[1])
			equal(t, "ttl", again[2], int64(60000))
			if p := pttl(t, b, lk); p <= 1000 {
				t.Fatalf("lock PTTL = %d after re-acquire with 60000, want > 1000", p)
			}
			f, _ := get(t, b, fk)
			equal(t, "fence counter", f, "1")
		})
		t.Run("otherToken_repliesHolderPTTLChangesNothing", func(t *testing.T) {
			lk, fk := keys(t)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "holder", "5000"))
			got := ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "other", "60000"))
			equal(t, "acquired", got[0], int64(0))
			equal(t, "fence", got[1], int64(0))
			if got[2] <= 0 || got[2] > 5000 {
				t.Fatalf("holder PTTL = %d, want in (0, 5000]", got[2])
			}
			v, _ := get(t, b, lk)
			equal(t, "lock value", v, "holder")
			if p := pttl(t, b, lk); p > 5000 {
				t.Fatalf("lock PTTL = %d, want <= 5000 (unchanged)", p)
			}
			f, _ := get(t, b, fk)
			equal(t, "fence counter", f, "1")
		})
		t.Run("holderWithoutExpiry_repliesMinusOne", func(t *testing.T) {
			lk, fk := keys(t)
			do(t, b, "SET", lk, "foreign")
			got := ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "5000"))
			equal(t, "acquired", got[0], int64(0))
			equal(t, "pttl", got[2], int64(-1))
		})
		t.Run("fenceGrowsAcrossReleaseAndExpiry", func(t *testing.T) {
			lk, fk := keys(t)
			a := ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "a", "5000"))
			equal(t, "released", one(t, eval(t, b, false, "release", []string{lk}, "a")), int64(1))
			bb := ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "b", "50"))
			b.advance(t, 150*time.Millisecond)
			equal(t, "lock exists after expiry", exists(t, b, lk), false)
			c := ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "c", "5000"))
			if !(a[1] < bb[1] && bb[1] < c[1]) {
				t.Fatalf("fences %d, %d, %d: want strictly increasing", a[1], bb[1], c[1])
			}
			equal(t, "acquired after expiry", c[0], int64(1))
		})
		t.Run("maxTTL_accepted", func(t *testing.T) {
			lk, fk := keys(t)
			got := ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "31536000000"))
			equal(t, "acquired", got[0], int64(1))
			equal(t, "ttl", got[2], int64(31536000000))
		})
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"emptyToken", []string{"", "5000"}, "invalid token"},
			{"missingToken", nil, "invalid token"},
			{"missingTTL", []string{"tok"}, "invalid ttl"},
			{"zeroTTL", []string{"tok", "0"}, "invalid ttl"},
			{"negativeTTL", []string{"tok", "-5"}, "invalid ttl"},
			{"leadingZeroTTL", []string{"tok", "05000"}, "invalid ttl"},
			{"fractionalTTL", []string{"tok", "1.5"}, "invalid ttl"},
			{"textTTL", []string{"tok", "5s"}, "invalid ttl"},
			{"emptyTTL", []string{"tok", ""}, "invalid ttl"},
			{"spaceTTL", []string{"tok", " 5000"}, "invalid ttl"},
			{"overMaxTTL", []string{"tok", "31536000001"}, "invalid ttl"},
			{"hugeTTL", []string{"tok", strings.Repeat("9", 400)}, "invalid ttl"},
		} {
			t.Run("badArgs_"+tc.name+"_errWritesNothing", func(t *testing.T) {
				lk, fk := keys(t)
				wantErr(t, eval(t, b, false, "acquire", []string{lk, fk}, tc.args...), tc.want)
				equal(t, "lock key exists", exists(t, b, lk), false)
				equal(t, "fence key exists", exists(t, b, fk), false)
			})
		}
		t.Run("oneKey_errWritesNothing", func(t *testing.T) {
			lk, _ := keys(t)
			wantErr(t, eval(t, b, false, "acquire", []string{lk}, "tok", "5000"), "wrong number of keys")
			equal(t, "lock key exists", exists(t, b, lk), false)
		})
		t.Run("lockKeyWrongType_WRONGTYPEWritesNothing", func(t *testing.T) {
			lk, fk := keys(t)
			do(t, b, "HSET", lk, "f", "v")
			wantErr(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "5000"), "WRONGTYPE")
			equal(t, "fence key exists", exists(t, b, fk), false)
			typ, err := do(t, b, "TYPE", lk).ToString()
			if err != nil {
				t.Fatal(err)
			}
			equal(t, "lock key type", typ, "hash")
		})
		t.Run("fenceKeyWrongType_WRONGTYPELockNotSet", func(t *testing.T) {
			lk, fk := keys(t)
			do(t, b, "HSET", fk, "f", "v")
			wantErr(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "5000"), "WRONGTYPE")
			equal(t, "lock key exists", exists(t, b, lk), false)
		})
		t.Run("fenceKeyNotInteger_errLockNotSet", func(t *testing.T) {
			lk, fk := keys(t)
			do(t, b, "SET", fk, "not-a-number")
			wantErr(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "5000"), "not an integer")
			equal(t, "lock key exists", exists(t, b, lk), false)
		})
		t.Run("sameTokenFenceKeyWrongType_WRONGTYPETTLUnchanged", func(t *testing.T) {
			lk, fk := keys(t)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "5000"))
			do(t, b, "DEL", fk)
			do(t, b, "HSET", fk, "f", "v")
			wantErr(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "60000"), "WRONGTYPE")
			if p := pttl(t, b, lk); p > 5000 {
				t.Fatalf("lock PTTL = %d, want <= 5000: the failed re-acquire must not extend it", p)
			}
		})
		t.Run("sameTokenFenceKeyNotInteger_errTTLUnchanged", func(t *testing.T) {
			lk, fk := keys(t)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "5000"))
			do(t, b, "SET", fk, "junk")
			wantErr(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "60000"), "not an integer")
			if p := pttl(t, b, lk); p > 5000 {
				t.Fatalf("lock PTTL = %d, want <= 5000", p)
			}
		})
	})
}

func TestRefresh(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Run("holder_setsTTLReplies1", func(t *testing.T) {
			lk, fk := keys(t)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "1000"))
			equal(t, "reply", one(t, eval(t, b, false, "refresh", []string{lk}, "tok", "60000")), int64(1))
			if p := pttl(t, b, lk); p <= 1000 || p > 60000 {
				t.Fatalf("PTTL = %d, want in (1000, 60000]", p)
			}
		})
		t.Run("otherToken_replies0ChangesNothing", func(t *testing.T) {
			lk, fk := keys(t)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "holder", "5000"))
			equal(t, "reply", one(t, eval(t, b, false, "refresh", []string{lk}, "other", "60000")), int64(0))
			if p := pttl(t, b, lk); p > 5000 {
				t.Fatalf("PTTL = %d, want <= 5000", p)
			}
			v, _ := get(t, b, lk)
			equal(t, "value", v, "holder")
		})
		t.Run("absent_replies0CreatesNothing", func(t *testing.T) {
			lk, _ := keys(t)
			equal(t, "reply", one(t, eval(t, b, false, "refresh", []string{lk}, "tok", "5000")), int64(0))
			equal(t, "exists", exists(t, b, lk), false)
		})
		t.Run("afterExpiry_replies0", func(t *testing.T) {
			lk, fk := keys(t)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "50"))
			b.advance(t, 150*time.Millisecond)
			equal(t, "reply", one(t, eval(t, b, false, "refresh", []string{lk}, "tok", "5000")), int64(0))
			equal(t, "exists", exists(t, b, lk), false)
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
				lk, fk := keys(t)
				ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "5000"))
				wantErr(t, eval(t, b, false, "refresh", []string{lk}, tc.args...), tc.want)
				if p := pttl(t, b, lk); p > 5000 {
					t.Fatalf("PTTL = %d, want <= 5000", p)
				}
			})
		}
		t.Run("wrongType_WRONGTYPE", func(t *testing.T) {
			lk, _ := keys(t)
			do(t, b, "LPUSH", lk, "x")
			wantErr(t, eval(t, b, false, "refresh", []string{lk}, "tok", "5000"), "WRONGTYPE")
			equal(t, "PTTL", pttl(t, b, lk), int64(-1))
		})
	})
}

func TestRelease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Run("holder_deletesReplies1KeepsFence", func(t *testing.T) {
			lk, fk := keys(t)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "5000"))
			equal(t, "reply", one(t, eval(t, b, false, "release", []string{lk}, "tok")), int64(1))
			equal(t, "lock exists", exists(t, b, lk), false)
			f, _ := get(t, b, fk)
			equal(t, "fence", f, "1")
		})
		t.Run("otherToken_replies0KeepsHolder", func(t *testing.T) {
			lk, fk := keys(t)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "holder", "5000"))
			equal(t, "reply", one(t, eval(t, b, false, "release", []string{lk}, "other")), int64(0))
			v, _ := get(t, b, lk)
			equal(t, "value", v, "holder")
		})
		t.Run("absent_replies0", func(t *testing.T) {
			lk, _ := keys(t)
			equal(t, "reply", one(t, eval(t, b, false, "release", []string{lk}, "tok")), int64(0))
		})
		t.Run("twice_secondReplies0", func(t *testing.T) {
			lk, fk := keys(t)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "5000"))
			equal(t, "first", one(t, eval(t, b, false, "release", []string{lk}, "tok")), int64(1))
			equal(t, "second", one(t, eval(t, b, false, "release", []string{lk}, "tok")), int64(0))
		})
		t.Run("expiredThenRetaken_staleTokenCannotFreeNewHolder", func(t *testing.T) {
			lk, fk := keys(t)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "old", "50"))
			b.advance(t, 150*time.Millisecond)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "new", "5000"))
			equal(t, "reply", one(t, eval(t, b, false, "release", []string{lk}, "old")), int64(0))
			v, _ := get(t, b, lk)
			equal(t, "value", v, "new")
		})
		t.Run("badArgs_emptyToken_errKeepsHolder", func(t *testing.T) {
			lk, fk := keys(t)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "5000"))
			wantErr(t, eval(t, b, false, "release", []string{lk}, ""), "invalid token")
			wantErr(t, eval(t, b, false, "release", []string{lk}), "invalid token")
			equal(t, "exists", exists(t, b, lk), true)
		})
		t.Run("wrongType_WRONGTYPEKeepsKey", func(t *testing.T) {
			lk, _ := keys(t)
			do(t, b, "SADD", lk, "x")
			wantErr(t, eval(t, b, false, "release", []string{lk}, "tok"), "WRONGTYPE")
			equal(t, "exists", exists(t, b, lk), true)
		})
	})
}

// inspectReply decodes {token|nil, pttl}; a nil token arrives as RESP3
// false from a real redis-server and as nil from miniredis.
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
			lk, _ := keys(t)
			tok, held, p := inspectReply(t, eval(t, b, true, "inspect", []string{lk}))
			equal(t, "held", held, false)
			equal(t, "token", tok, "")
			equal(t, "pttl", p, int64(0))
		})
		t.Run("held_tokenAndPTTL", func(t *testing.T) {
			lk, fk := keys(t)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "5000"))
			tok, held, p := inspectReply(t, eval(t, b, true, "inspect", []string{lk}))
			equal(t, "held", held, true)
			equal(t, "token", tok, "tok")
			if p <= 0 || p > 5000 {
				t.Fatalf("pttl = %d, want in (0, 5000]", p)
			}
		})
		t.Run("noExpiry_minusOne", func(t *testing.T) {
			lk, _ := keys(t)
			do(t, b, "SET", lk, "foreign")
			tok, _, p := inspectReply(t, eval(t, b, true, "inspect", []string{lk}))
			equal(t, "token", tok, "foreign")
			equal(t, "pttl", p, int64(-1))
		})
		t.Run("afterExpiry_nil", func(t *testing.T) {
			lk, fk := keys(t)
			ints(t, eval(t, b, false, "acquire", []string{lk, fk}, "tok", "50"))
			b.advance(t, 150*time.Millisecond)
			_, held, _ := inspectReply(t, eval(t, b, true, "inspect", []string{lk}))
			equal(t, "held", held, false)
		})
		t.Run("wrongType_WRONGTYPE", func(t *testing.T) {
			lk, _ := keys(t)
			do(t, b, "HSET", lk, "f", "v")
			wantErr(t, eval(t, b, true, "inspect", []string{lk}), "WRONGTYPE")
		})
		t.Run("twoKeys_err", func(t *testing.T) {
			lk, fk := keys(t)
			wantErr(t, eval(t, b, true, "inspect", []string{lk, fk}), "wrong number of keys")
		})
	})
}

// TestWriteScripts_refusedUnderEVAL_RO checks that the headers' readonly:
// false is honest: a real redis-server refuses their writes under EVAL_RO.
func TestWriteScripts_refusedUnderEVAL_RO(t *testing.T) {
	b := realRedis(t)
	lk, fk := keys(t)
	wantErr(t, eval(t, b, true, "acquire", []string{lk, fk}, "tok", "5000"), "Write commands are not allowed")
	equal(t, "lock exists", exists(t, b, lk), false)
	equal(t, "fence exists", exists(t, b, fk), false)
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

// TestRedisCLI_copyPaste runs the README's redis-cli examples verbatim
// (through a shell, with "$(cat scripts/NAME.lua)") and checks the replies,
// error replies included, as redis-cli prints them.
func TestRedisCLI_copyPaste(t *testing.T) {
	srv := redistest.Start(t)
	steps := []struct{ cmd, want string }{
		{`$CLI EVAL "$(cat scripts/acquire.lua)" 2 '{k}' '{k}:fence' tok 5000`, "1\n1\n5000"},
		{`$CLI EVAL "$(cat scripts/acquire.lua)" 2 '{k}' '{k}:fence' tok 5000`, "1\n1\n5000"},
		{`$CLI EVAL "$(cat scripts/acquire.lua)" 2 '{k}' '{k}:fence' other 5000 | head -2`, "0\n0"},
		{`$CLI EVAL "$(cat scripts/refresh.lua)" 1 '{k}' tok 10000`, "1"},
		{`$CLI EVAL "$(cat scripts/refresh.lua)" 1 '{k}' other 10000`, "0"},
		{`$CLI EVAL_RO "$(cat scripts/inspect.lua)" 1 '{k}' | head -1`, "tok"},
		{`$CLI EVAL "$(cat scripts/release.lua)" 1 '{k}' other`, "0"},
		{`$CLI EVAL "$(cat scripts/release.lua)" 1 '{k}' tok`, "1"},
		{`$CLI EVAL_RO "$(cat scripts/inspect.lua)" 1 '{k}'`, "0"}, // RESP2: nil prints as an empty line
		{`$CLI EVAL "$(cat scripts/acquire.lua)" 2 '{k}' '{k}:fence' tok2 5000`, "1\n2\n5000"},
		{`$CLI EVAL "$(cat scripts/acquire.lua)" 2 '{e}' '{e}:fence' '' 5000`, "ERR invalid token: want a non-empty string"},
		{`$CLI EVAL "$(cat scripts/acquire.lua)" 2 '{e}' '{e}:fence' tok 0`, "ERR invalid ttl: want an integer number of milliseconds from 1 to 31536000000"},
		{`$CLI EVAL "$(cat scripts/refresh.lua)" 1 '{e}' tok 1.5`, "ERR invalid ttl: want an integer number of milliseconds from 1 to 31536000000"},
		{`$CLI EVAL "$(cat scripts/release.lua)" 1 '{e}' ''`, "ERR invalid token: want a non-empty string"},
		{`$CLI EXISTS '{e}' '{e}:fence'`, "0"},
		{`$CLI HSET '{w}' f v >/dev/null; $CLI EVAL "$(cat scripts/acquire.lua)" 2 '{w}' '{w}:fence' tok 5000 | cut -c1-9`, "WRONGTYPE"},
		{`$CLI EXISTS '{w}:fence'`, "0"},
		{`$CLI HSET '{v}:fence' f v >/dev/null; $CLI EVAL "$(cat scripts/acquire.lua)" 2 '{v}' '{v}:fence' tok 5000 | cut -c1-9`, "WRONGTYPE"},
		{`$CLI EXISTS '{v}'`, "0"},
	}
	for _, s := range steps {
		if got := cliShell(t, srv, s.cmd); got != s.want {
			t.Fatalf("%s\ngot:\n%s\nwant:\n%s", s.cmd, got, s.want)
		}
	}
	if p, err := strconv.Atoi(cliShell(t, srv, `$CLI PTTL '{k}'`)); err != nil || p <= 0 || p > 5000 {
		t.Fatalf("PTTL {k} = %d (%v), want in (0, 5000]", p, err)
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
