package gen_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"

	"github.com/klauthed/lock/gen"
	"github.com/klauthed/lock/internal/redistest"
)

func newClient(t testing.TB, addr string, disableCache bool) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: []string{addr}, DisableCache: disableCache,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func keys(t testing.TB) (string, string) {
	k := "klauthed:{" + t.Name() + "}"
	return k, k + ":fence"
}

// acquire runs gen.Acquire on the lock lk (fence fk, line keys named after
// lk) as TryAcquire would: line ttl 0, no channel.
func acquire(ctx context.Context, c rueidis.Client, lk, fk, tok string, ttl time.Duration) (
	gen.AcquireResult, error) {
	return gen.Acquire(ctx, c, acquireKeys(lk), gen.AcquireArgs{Token: tok, TTL: ttl})
}

func release(ctx context.Context, c rueidis.Client, lk, tok string) (gen.ReleaseResult, error) {
	return gen.Release(ctx, c, gen.ReleaseKeys(acquireKeys(lk)), tok, "")
}

// acquireKeys are the five keys of the lock lk, named as scripts/README.md
// says.
func acquireKeys(lk string) gen.AcquireKeys {
	return gen.AcquireKeys{LockKey: lk, FenceKey: lk + ":fence", LineKey: lk + ":line",
		LineDeadlinesKey: lk + ":line:deadlines", LineArgsKey: lk + ":line:args"}
}

// exercise runs every wrapper through the whole lock life cycle and checks
// the typed results.
func exercise(t *testing.T, c rueidis.Client) {
	t.Helper()
	ctx := context.Background()
	lk, fk := keys(t)

	in, err := gen.Inspect(ctx, c, lk)
	if err != nil || in != (gen.InspectResult{}) {
		t.Fatalf("Inspect(free) = %+v, %v; want zero result", in, err)
	}
	a, err := acquire(ctx, c, lk, fk, "tok", 5*time.Second)
	if err != nil || a != (gen.AcquireResult{Acquired: true, Fence: 1, TTL: 5 * time.Second}) {
		t.Fatalf("Acquire = %+v, %v; want {true 1 5s}", a, err)
	}
	a, err = acquire(ctx, c, lk, fk, "tok", 7*time.Second+999*time.Microsecond)
	if err != nil || a != (gen.AcquireResult{Acquired: true, Fence: 1, TTL: 7 * time.Second}) {
		t.Fatalf("Acquire(same token) = %+v, %v; want {true 1 7s} (ttl truncated to ms)", a, err)
	}
	o, err := acquire(ctx, c, lk, fk, "other", 5*time.Second)
	if err != nil || o.Acquired || o.Fence != 0 || o.TTL <= 0 || o.TTL > 7*time.Second {
		t.Fatalf("Acquire(other) = %+v, %v; want not acquired, holder TTL in (0, 7s]", o, err)
	}
	in, err = gen.Inspect(ctx, c, lk)
	if err != nil || !in.Held || in.Token != "tok" || in.TTL <= 0 || in.TTL > 7*time.Second {
		t.Fatalf("Inspect(held) = %+v, %v", in, err)
	}
	if r, err := gen.Refresh(ctx, c, lk, "tok", time.Minute); err != nil || !r.Refreshed {
		t.Fatalf("Refresh(holder) = %+v, %v", r, err)
	}
	if in, _ = gen.Inspect(ctx, c, lk); in.TTL <= 7*time.Second {
		t.Fatalf("TTL after Refresh(1m) = %v, want > 7s", in.TTL)
	}
	if r, err := gen.Refresh(ctx, c, lk, "other", time.Minute); err != nil || r.Refreshed {
		t.Fatalf("Refresh(other) = %+v, %v", r, err)
	}
	if r, err := release(ctx, c, lk, "other"); err != nil || r.Released {
		t.Fatalf("Release(other) = %+v, %v", r, err)
	}
	if r, err := release(ctx, c, lk, "tok"); err != nil || !r.Released {
		t.Fatalf("Release(holder) = %+v, %v", r, err)
	}
	if r, err := release(ctx, c, lk, "tok"); err != nil || r.Released {
		t.Fatalf("Release(again) = %+v, %v", r, err)
	}
	a, err = acquire(ctx, c, lk, fk, "next", time.Second)
	if err != nil || !a.Acquired || a.Fence != 2 {
		t.Fatalf("Acquire(after release) = %+v, %v; want fence 2", a, err)
	}
}

func TestWrappers_redisServer(t *testing.T) {
	srv := redistest.Start(t)
	exercise(t, newClient(t, srv.Addr, false))
}

func TestWrappers_miniredis(t *testing.T) {
	m := miniredis.RunT(t)
	exercise(t, newClient(t, m.Addr(), true))
}

// TestWrappers_afterScriptFlush checks the NOSCRIPT fallback: after SCRIPT
// FLUSH every wrapper still works (EVAL reloads the script) and the server
// then knows the script under the exported SHA1.
func TestWrappers_afterScriptFlush(t *testing.T) {
	srv := redistest.Start(t)
	c := newClient(t, srv.Addr, false)
	exercise(t, c) // loads every script
	srv.Cli(t, "SCRIPT", "FLUSH")
	for _, s := range gen.Scripts {
		if got := srv.Cli(t, "SCRIPT", "EXISTS", s.SHA1); got != "0" {
			t.Fatalf("SCRIPT EXISTS %s after FLUSH = %q, want 0", s.Name, got)
		}
	}
	t.Run("again", func(t *testing.T) { exercise(t, c) })
	ctx := context.Background()
	lk, _ := keys(t)
	if _, err := gen.InspectCache(ctx, c, lk+"cached", time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, s := range gen.Scripts {
		if got := srv.Cli(t, "SCRIPT", "EXISTS", s.SHA1); got != "1" {
			t.Fatalf("SCRIPT EXISTS %s after the wrappers ran = %q, want 1 (SHA1 %s)", s.Name, got, s.SHA1)
		}
	}
}

// TestInspectCache_afterScriptFlush checks the EVAL_RO fallback of the
// cached call on a key nobody has cached yet.
func TestInspectCache_afterScriptFlush(t *testing.T) {
	srv := redistest.Start(t)
	c := newClient(t, srv.Addr, false)
	ctx := context.Background()
	lk, fk := keys(t)
	if _, err := acquire(ctx, c, lk, fk, "tok", time.Minute); err != nil {
		t.Fatal(err)
	}
	srv.Cli(t, "SCRIPT", "FLUSH")
	in, err := gen.InspectCache(ctx, c, lk, time.Minute)
	if err != nil || !in.Held || in.Token != "tok" {
		t.Fatalf("InspectCache after SCRIPT FLUSH = %+v, %v", in, err)
	}
}

// evalshaROCalls reads how many EVALSHA_RO and EVAL_RO commands the server ran.
func evalROCalls(t *testing.T, srv *redistest.Server) int {
	t.Helper()
	n := 0
	for _, line := range strings.Split(srv.Cli(t, "INFO", "commandstats"), "\n") {
		for _, cmd := range []string{"cmdstat_evalsha_ro:calls=", "cmdstat_eval_ro:calls="} {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(line), cmd); ok {
				v, _, _ := strings.Cut(rest, ",")
				var k int
				for _, ch := range v {
					k = k*10 + int(ch-'0')
				}
				n += k
			}
		}
	}
	return n
}

// TestInspectCache_servedFromClientCacheUntilKeyChanges checks that a second
// InspectCache does not reach the server, and that a write to the key by
// another connection invalidates the cached reply.
func TestInspectCache_servedFromClientCacheUntilKeyChanges(t *testing.T) {
	srv := redistest.Start(t)
	c := newClient(t, srv.Addr, false)
	other := newClient(t, srv.Addr, true)
	ctx := context.Background()
	lk, fk := keys(t)
	if _, err := acquire(ctx, other, lk, fk, "first", time.Minute); err != nil {
		t.Fatal(err)
	}
	in, err := gen.InspectCache(ctx, c, lk, time.Minute)
	if err != nil || in.Token != "first" {
		t.Fatalf("InspectCache = %+v, %v", in, err)
	}
	calls := evalROCalls(t, srv)
	for i := 0; i < 10; i++ {
		in, err = gen.InspectCache(ctx, c, lk, time.Minute)
		if err != nil || in.Token != "first" {
			t.Fatalf("InspectCache (cached) = %+v, %v", in, err)
		}
	}
	// rueidis's static-TTL path (no MULTI/PTTL wrapper) stores the entry
	// on the second read, so at most one of the ten reaches the server.
	if got := evalROCalls(t, srv); got-calls > 1 {
		t.Fatalf("server ran %d read-only script calls for 10 InspectCache calls "+
			"of an unchanged key, want at most 1", got-calls)
	}

	// Another connection releases and re-takes the key: the server sends
	// an invalidation, and the next call must see the new holder.
	if r, err := release(ctx, other, lk, "first"); err != nil || !r.Released {
		t.Fatalf("Release = %+v, %v", r, err)
	}
	if _, err := acquire(ctx, other, lk, fk, "second", time.Minute); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second) // invalidations arrive asynchronously
	for {
		in, err = gen.InspectCache(ctx, c, lk, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if in.Token == "second" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("InspectCache still serves %+v after the key changed", in)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := evalROCalls(t, srv); got <= calls {
		t.Fatal("InspectCache saw the new holder without asking the server")
	}
}

func TestInspectCache_miniredisWithoutClientCache(t *testing.T) {
	m := miniredis.RunT(t)
	c := newClient(t, m.Addr(), true)
	ctx := context.Background()
	lk, fk := keys(t)
	if in, err := gen.InspectCache(ctx, c, lk, time.Minute); err != nil || in.Held {
		t.Fatalf("InspectCache(free) = %+v, %v", in, err)
	}
	if _, err := acquire(ctx, c, lk, fk, "tok", time.Minute); err != nil {
		t.Fatal(err)
	}
	if in, err := gen.InspectCache(ctx, c, lk, time.Minute); err != nil || in.Token != "tok" {
		t.Fatalf("InspectCache(held) = %+v, %v", in, err)
	}
}

// TestWrappers_errorRepliesAreRedisErrors checks that bad input and wrong
// key types come back as *rueidis.RedisError and grant nothing.
func TestWrappers_errorRepliesAreRedisErrors(t *testing.T) {
	srv := redistest.Start(t)
	c := newClient(t, srv.Addr, false)
	ctx := context.Background()
	lk, fk := keys(t)
	isRedisErr := func(what string, err error, want string) {
		t.Helper()
		rerr, ok := rueidis.IsRedisErr(err)
		if !ok || !strings.Contains(rerr.Error(), want) {
			t.Fatalf("%s: error %v, want a *rueidis.RedisError containing %q", what, err, want)
		}
		if errors.Is(err, rueidis.Nil) {
			t.Fatalf("%s: error %v is rueidis.Nil", what, err)
		}
	}
	r, err := acquire(ctx, c, lk, fk, "tok", 0)
	isRedisErr("Acquire(ttl 0)", err, "invalid ttl")
	if r != (gen.AcquireResult{}) {
		t.Fatalf("Acquire(ttl 0) result %+v, want zero", r)
	}
	_, err = acquire(ctx, c, lk, fk, "tok", 500*time.Microsecond)
	isRedisErr("Acquire(ttl 0.5ms)", err, "invalid ttl")
	_, err = acquire(ctx, c, lk, fk, "", time.Second)
	isRedisErr("Acquire(empty token)", err, "invalid token")
	_, err = gen.Refresh(ctx, c, lk, "tok", -time.Second)
	isRedisErr("Refresh(negative ttl)", err, "invalid ttl")
	_, err = release(ctx, c, lk, "")
	isRedisErr("Release(empty token)", err, "invalid token")
	if got := srv.Cli(t, "EXISTS", lk, fk); got != "0" {
		t.Fatalf("EXISTS after bad calls = %s, want 0", got)
	}
	srv.Cli(t, "HSET", lk, "f", "v")
	_, err = acquire(ctx, c, lk, fk, "tok", time.Second)
	isRedisErr("Acquire(hash key)", err, "WRONGTYPE")
	_, err = gen.Inspect(ctx, c, lk)
	isRedisErr("Inspect(hash key)", err, "WRONGTYPE")
	_, err = gen.InspectCache(ctx, c, lk, time.Minute)
	isRedisErr("InspectCache(hash key)", err, "WRONGTYPE")
	if got := srv.Cli(t, "EXISTS", fk); got != "0" {
		t.Fatalf("fence key written by a failed acquire")
	}
}

func TestScripts_listsEveryScriptWithItsSHA1(t *testing.T) {
	want := map[string]struct {
		src, sha string
		ro       bool
	}{
		"acquire": {gen.AcquireSource, gen.AcquireSHA1, false},
		"inspect": {gen.InspectSource, gen.InspectSHA1, true},
		"refresh": {gen.RefreshSource, gen.RefreshSHA1, false},
		"release": {gen.ReleaseSource, gen.ReleaseSHA1, false},
	}
	if len(gen.Scripts) != len(want) {
		t.Fatalf("len(Scripts) = %d, want %d", len(gen.Scripts), len(want))
	}
	for i, s := range gen.Scripts {
		w, ok := want[s.Name]
		if !ok || s.Source != w.src || s.SHA1 != w.sha || s.ReadOnly != w.ro {
			t.Fatalf("Scripts[%d] = {%s ro=%v sha=%s}: does not match the constants",
				i, s.Name, s.ReadOnly, s.SHA1)
		}
		if i > 0 && gen.Scripts[i-1].Name >= s.Name {
			t.Fatalf("Scripts not sorted by name at %d", i)
		}
	}
}

// BenchmarkAcquireRelease measures one uncontended acquire and release
// through the wrappers on a real redis-server (allocations included).
func BenchmarkAcquireRelease(b *testing.B) {
	srv := redistest.Start(b)
	c := newClient(b, srv.Addr, false)
	ctx := context.Background()
	lk, fk := keys(b)
	b.ReportAllocs()
	for b.Loop() {
		a, err := acquire(ctx, c, lk, fk, "tok", 10*time.Second)
		if err != nil || !a.Acquired {
			b.Fatal(a, err)
		}
		if r, err := release(ctx, c, lk, "tok"); err != nil || !r.Released {
			b.Fatal(r, err)
		}
	}
}

// BenchmarkRawFloor is the floor BenchmarkAcquireRelease is compared with:
// one SET NX PX and one compare-and-delete EVALSHA, straight on rueidis.
func BenchmarkRawFloor(b *testing.B) {
	srv := redistest.Start(b)
	c := newClient(b, srv.Addr, false)
	ctx := context.Background()
	lk, _ := keys(b)
	del := rueidis.NewLuaScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then ` +
		`return redis.call('DEL', KEYS[1]) end return 0`)
	b.ReportAllocs()
	for b.Loop() {
		set := c.B().Set().Key(lk).Value("tok").Nx().PxMilliseconds(10000).Build()
		if err := c.Do(ctx, set).Error(); err != nil {
			b.Fatal(err)
		}
		if n, err := del.Exec(ctx, c, []string{lk}, []string{"tok"}).AsInt64(); err != nil || n != 1 {
			b.Fatal(n, err)
		}
	}
}
