// Package examples_test runs the Python (redis-py) and Node (ioredis) lock
// helpers in python/ and node/ as child processes against one real
// redis-server, next to a Go lockredis Manager, all contending on the same
// keys: it proves that the scripts in scripts/, used from other languages,
// keep the lock contract with Go holders, and (fairness_test.go) that
// waiters of all three languages share one FIFO line per key (protocol 2).
//
// The tests need /usr/bin/python3 (or python3) with redis-py
// (`apt-get install -y python3-redis`) and node with ioredis installed in
// examples/node (`npm ci` there). Without them they fail, never skip.
package examples_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/gen"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
)

// replyTimeout bounds one worker command; the longest one waits a few
// seconds for a lock.
const replyTimeout = 30 * time.Second

// language is one helper implementation driven through its worker mode.
type language struct {
	name string
	argv func(t *testing.T) []string // command line, minus the Redis address
}

var languages = []language{
	{"python", pythonArgv},
	{"node", nodeArgv},
}

// pythonArgv finds a python3 that can import redis: Debian's python3-redis
// lives in /usr/bin/python3's dist-packages, which a pyenv or venv python3
// earlier on PATH does not see, so /usr/bin/python3 is tried first.
func pythonArgv(t *testing.T) []string {
	t.Helper()
	var tried []string
	candidates := []string{"/usr/bin/python3"}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	for _, py := range candidates {
		out, err := exec.Command(py, "-c", "import redis").CombinedOutput()
		if err == nil {
			return []string{py, "python/klauthed_lock.py", "worker"}
		}
		tried = append(tried, fmt.Sprintf("%s: %v %s", py, err, bytes.TrimSpace(out)))
	}
	t.Fatalf("no python3 with redis-py (tried %s): install it with "+
		"`apt-get install -y python3-redis` "+
		"(the interop tests need every language; they are not skipped)", strings.Join(tried, "; "))
	return nil
}

// nodeArgv finds node and checks that ioredis is installed in examples/node.
func nodeArgv(t *testing.T) []string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node not found: install Node.js (apt-get install -y nodejs npm), " +
			"then run `npm ci` in examples/node " +
			"(the interop tests need every language; they are not skipped)")
	}
	cmd := exec.Command(node, "-e", `require("ioredis")`)
	cmd.Dir = "node"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ioredis missing in examples/node (%v: %s): run `npm ci` in examples/node "+
			"(the interop tests need every language; they are not skipped)", err, firstLine(out))
	}
	return []string{node, "node/klauthed-lock.js", "worker"}
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(bytes.TrimSpace(b)), "\n")
	return s
}

// lockedBuffer collects a child's stderr for failure messages.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// worker is one running helper process. do is safe for one goroutine at a
// time.
type worker struct {
	name   string
	proc   *os.Process
	in     io.WriteCloser
	lines  chan string // stdout, one line each; closed at EOF
	stderr *lockedBuffer
}

// startWorker starts lang's worker against addr, with extra arguments
// (such as "--poll") after it, and waits for its "ready" line. The process
// ends in t.Cleanup: stdin is closed (the worker exits at end of input), then
// it is killed if it has not exited within 5 s.
func startWorker(t *testing.T, lang language, addr string, extra ...string) *worker {
	t.Helper()
	argv := append(append(lang.argv(t), addr), extra...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = sysProcAttr()
	w := &worker{name: lang.name, lines: make(chan string, 16), stderr: &lockedBuffer{}}
	cmd.Stderr = w.stderr
	var err error
	if w.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s worker: %v", lang.name, err)
	}
	w.proc = cmd.Process
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(w.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		w.in.Close()
		go func() {
			// Drain so the reader never blocks on a full channel.
			for range w.lines {
			}
		}()
		select {
		case <-readDone:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
		}
		_ = cmd.Wait()
	})
	if got, err := w.read(); err != nil || got != "ready" {
		t.Fatalf("%s worker did not start: %q, %v", lang.name, got, err)
	}
	return w
}

func (w *worker) read() (string, error) {
	select {
	case l, ok := <-w.lines:
		if !ok {
			return "", fmt.Errorf("%s worker exited; stderr:\n%s", w.name, w.stderr)
		}
		return l, nil
	case <-time.After(replyTimeout):
		return "", fmt.Errorf("%s worker: no reply within %v; stderr:\n%s",
			w.name, replyTimeout, w.stderr)
	}
}

// do sends one command line and returns the reply line; a reply starting
// with "error" is an error.
func (w *worker) do(format string, a ...any) (string, error) {
	line := fmt.Sprintf(format, a...)
	if _, err := io.WriteString(w.in, line+"\n"); err != nil {
		return "", fmt.Errorf("%s worker: write %q: %w", w.name, line, err)
	}
	reply, err := w.read()
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(reply, "error") {
		return "", fmt.Errorf("%s worker: %s: %s", w.name, line, reply)
	}
	return reply, nil
}

// must is do for the test goroutine.
func (w *worker) must(t *testing.T, format string, a ...any) string {
	t.Helper()
	reply, err := w.do(format, a...)
	if err != nil {
		t.Fatal(err)
	}
	return reply
}

var tokenRe = regexp.MustCompile(`^[A-Za-z0-9_-]{22}$`)

// acquired is a worker's successful acquire.
type acquired struct {
	fence uint64
	token string
}

// acquire runs "acquire KEY TTL WAIT" and parses "acquired FENCE TOKEN".
func (w *worker) acquire(key string, ttl, wait time.Duration) (acquired, error) {
	return w.acquireLine(key, ttl, wait, 0)
}

// acquireLine is acquire with the worker's place in line kept alive for
// lineTTL; 0 leaves the helper's default.
func (w *worker) acquireLine(key string, ttl, wait, lineTTL time.Duration) (acquired, error) {
	cmd := fmt.Sprintf("acquire %s %d %d", key, ttl.Milliseconds(), wait.Milliseconds())
	if lineTTL > 0 {
		cmd += fmt.Sprintf(" %d", lineTTL.Milliseconds())
	}
	reply, err := w.do("%s", cmd)
	if err != nil {
		return acquired{}, err
	}
	f := strings.Fields(reply)
	if len(f) != 3 || f[0] != "acquired" {
		return acquired{}, fmt.Errorf("%s worker: acquire %s: reply %q, want \"acquired FENCE TOKEN\"",
			w.name, key, reply)
	}
	fence, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return acquired{}, fmt.Errorf("%s worker: acquire %s: fence %q: %v", w.name, key, f[1], err)
	}
	if !tokenRe.MatchString(f[2]) {
		return acquired{}, fmt.Errorf("%s worker: token %q is not 22 characters of unpadded "+
			"URL-safe base64 like lock.NewToken", w.name, f[2])
	}
	return acquired{fence, f[2]}, nil
}

func (w *worker) mustAcquire(t *testing.T, key string, ttl, wait time.Duration) acquired {
	t.Helper()
	a, err := w.acquire(key, ttl, wait)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// env is one redis-server with a Go manager and one worker per language.
type env struct {
	addr    string
	c       rueidis.Client // plain client for inspecting state
	m       *lockredis.Manager
	workers []*worker
}

func newEnv(t *testing.T) *env {
	t.Helper()
	// Check every language before starting anything, so a missing one is
	// reported plainly.
	for _, l := range languages {
		l.argv(t)
	}
	srv := redistest.Start(t)
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: []string{srv.Addr}, DisableCache: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	e := &env{addr: srv.Addr, c: c, m: newManager(t, srv.Addr)}
	for _, l := range languages {
		e.workers = append(e.workers, startWorker(t, l, srv.Addr))
	}
	return e
}

// newManager is a Go process of its own: a lockredis Manager with its own
// connections and hand-off channel, closed in t.Cleanup.
func newManager(t *testing.T, addr string) *lockredis.Manager {
	t.Helper()
	m, err := lockredis.New(lockredis.Options{
		ClientOption: rueidis.ClientOption{InitAddress: []string{addr}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// lockKey is the Redis name of key's lock, built here from the documented
// layout (not from lockredis), for the default prefix.
func lockKey(key string) string {
	if strings.HasPrefix(key, "}") {
		return lockredis.DefaultPrefix + "}{~}" + key + "}"
	}
	return lockredis.DefaultPrefix + "{" + key + "}"
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestInterop_sameKeyNames checks that every language names the five keys
// of a user key (lock, fence, line, line deadlines, line args) as lockredis
// does, including keys with braces and a key starting with "}".
func TestInterop_sameKeyNames(t *testing.T) {
	e := newEnv(t)
	for _, key := range []string{"orders/42", "a{b}c", "}x", "{}", "ключ", "k:fence"} {
		want := lockredis.LockKey(lockredis.DefaultPrefix, key)
		if got := lockKey(key); got != want {
			t.Errorf("documented layout of %q = %q, lockredis.LockKey = %q", key, got, want)
		}
		for _, w := range e.workers {
			got := w.must(t, "keys %s", key)
			wantReply := "keys " + want + " " + want + ":fence " + want + ":line " +
				want + ":line:deadlines " + want + ":line:args"
			if got != wantReply {
				t.Errorf("%s: keys %q = %q, want %q", w.name, key, got, wantReply)
			}
		}
	}
}

// TestInterop_mutualExclusion has a Go holder, the Python worker and the
// Node worker take the same key over and over, each doing a non-atomic
// read-modify-write (GET, sleep, SET) of a shared counter while holding it.
// It checks that the holders' critical sections never overlap (as seen
// from this process, where each starts after the acquire reply and ends
// before the release is sent, so inside the real holding), that no
// increment was lost, and that the fences, read in acquisition order, grow
// strictly across languages.
func TestInterop_mutualExclusion(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	const (
		rounds = 25
		ttl    = 10 * time.Second // far longer than a critical section: leases never expire here
		wait   = 20 * time.Second
		hold   = 2 * time.Millisecond
		pause  = 5 * time.Millisecond // between rounds, so that holders interleave
	)
	key := "mutex"
	counter := "interop:counter"

	var (
		inside   atomic.Int32
		mu       sync.Mutex
		fences   []uint64
		holders  []string
		overlaps atomic.Int32
	)
	enter := func(who string, fence uint64) {
		if inside.Add(1) != 1 {
			overlaps.Add(1)
		}
		mu.Lock()
		fences = append(fences, fence)
		holders = append(holders, who)
		mu.Unlock()
	}
	leave := func() { inside.Add(-1) }

	var wg sync.WaitGroup
	errs := make(chan error, 3*rounds)
	wg.Add(1)
	go func() { // the Go holder
		defer wg.Done()
		for i := 0; i < rounds; i++ {
			actx, cancel := context.WithTimeout(ctx, wait)
			l, err := e.m.Acquire(actx, key, ttl)
			cancel()
			if err != nil {
				errs <- fmt.Errorf("go: acquire: %w", err)
				return
			}
			enter("go", l.Fence())
			n, err := e.c.Do(ctx, e.c.B().Get().Key(counter).Build()).AsInt64()
			if err != nil && !rueidis.IsRedisNil(err) {
				errs <- err
			}
			time.Sleep(hold)
			set := e.c.B().Set().Key(counter).Value(strconv.FormatInt(n+1, 10)).Build()
			if err := e.c.Do(ctx, set).Error(); err != nil {
				errs <- err
			}
			leave()
			if err := l.Release(ctx); err != nil {
				errs <- fmt.Errorf("go: release: %w", err)
			}
			time.Sleep(pause)
		}
	}()
	for _, w := range e.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				a, err := w.acquire(key, ttl, wait)
				if err != nil {
					errs <- err
					return
				}
				enter(w.name, a.fence)
				if _, err := w.do("rmw %s %d", counter, hold.Milliseconds()); err != nil {
					errs <- err
				}
				leave()
				if got, err := w.do("release"); err != nil || got != "released 1" {
					errs <- fmt.Errorf("%s: release: %q, %v "+
						"(want \"released 1\": the lease cannot have expired)", w.name, got, err)
				}
				time.Sleep(pause)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}

	if n := overlaps.Load(); n != 0 {
		t.Errorf("%d critical sections overlapped", n)
	}
	total, err := e.c.Do(ctx, e.c.B().Get().Key(counter).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(rounds * (1 + len(e.workers))); total != want {
		t.Errorf("counter = %d after %d locked increments: %d lost to overlapping holders",
			total, want, want-total)
	}
	handoffs := 0
	for i := 1; i < len(fences); i++ {
		if fences[i] <= fences[i-1] {
			t.Errorf("fence %d (%s) after %d (%s): want strictly increasing in acquisition order",
				fences[i], holders[i], fences[i-1], holders[i-1])
		}
		if holders[i] != holders[i-1] {
			handoffs++
		}
	}
	// Every holder ran all its rounds, so there are at least two hand-offs
	// between languages; interleaving usually gives many more.
	if handoffs < len(e.workers) {
		t.Errorf("%d hand-offs between languages, want at least %d", handoffs, len(e.workers))
	}
	t.Logf("%d acquisitions, %d hand-offs between languages, fences %d..%d",
		len(fences), handoffs, fences[0], fences[len(fences)-1])
}

// TestInterop_fencesGrowAcrossLanguages takes one key in turn from Go,
// Python, Node and Go again, by release and by expiry, and checks that each
// fence is greater than the one before.
func TestInterop_fencesGrowAcrossLanguages(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	py, node := e.workers[0], e.workers[1]
	const key = "fences"
	var last uint64
	next := func(who string, fence uint64) {
		t.Helper()
		if fence <= last {
			t.Fatalf("%s got fence %d after %d: want it greater", who, fence, last)
		}
		last = fence
	}

	for round := 0; round < 2; round++ {
		// By release: Go -> Python -> Node.
		l, ok, err := e.m.TryAcquire(ctx, key, 5*time.Second)
		if err != nil || !ok {
			t.Fatalf("go TryAcquire = %v, %v", ok, err)
		}
		next("go", l.Fence())
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
		for _, w := range []*worker{py, node} {
			a := w.mustAcquire(t, key, 5*time.Second, 0)
			next(w.name, a.fence)
			if got := w.must(t, "release"); got != "released 1" {
				t.Fatalf("%s release = %q", w.name, got)
			}
		}
	}

	// By expiry: Python's lease runs out, Node takes the key, then Node's
	// runs out and Go takes it.
	a := py.mustAcquire(t, key, 100*time.Millisecond, 0)
	next("python", a.fence)
	a = node.mustAcquire(t, key, 100*time.Millisecond, 5*time.Second)
	next("node (after python's expiry)", a.fence)
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := e.m.Acquire(actx, key, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	next("go (after node's expiry)", l.Fence())
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestInterop_releaseWakesGoWaiter has Python, then Node, hold a key with a
// long TTL while a Go Acquire waits for it, and checks that their release
// hands the key to the Go waiter promptly: far sooner than the TTL, so by
// the release (the invalidation lockredis listens for), not by expiry.
func TestInterop_releaseWakesGoWaiter(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	const (
		ttl = 20 * time.Second
		// promptly is generous for a loaded CI machine, yet far from ttl.
		promptly = 5 * time.Second
	)
	for _, w := range e.workers {
		t.Run(w.name, func(t *testing.T) {
			key := "wake/" + w.name
			held := w.mustAcquire(t, key, ttl, 0)

			type result struct {
				l   lock.Lease
				err error
				at  time.Time
			}
			done := make(chan result, 1)
			actx, cancel := context.WithTimeout(ctx, ttl/2) // fails rather than waits for the expiry
			defer cancel()
			go func() {
				l, err := e.m.Acquire(actx, key, 5*time.Second)
				done <- result{l, err, time.Now()}
			}()
			// Let the Go waiter make its first attempt, find the key held
			// and start waiting.
			select {
			case r := <-done:
				t.Fatalf("go Acquire returned while %s held the key: %v, %v", w.name, r.l, r.err)
			case <-time.After(300 * time.Millisecond):
			}
			if got := w.must(t, "release"); got != "released 1" {
				t.Fatalf("%s release = %q", w.name, got)
			}
			released := time.Now()
			var r result
			select {
			case r = <-done:
			case <-time.After(ttl):
				t.Fatal("go Acquire did not return")
			}
			if r.err != nil {
				t.Fatalf("go Acquire after %s's release: %v", w.name, r.err)
			}
			defer r.l.Release(context.Background())
			if d := r.at.Sub(released); d > promptly {
				t.Errorf("go waiter took the key %v after %s's release, want under %v (the TTL was %v)",
					d, w.name, promptly, ttl)
			}
			if r.l.Fence() <= held.fence {
				t.Errorf("go fence %d after %s's %d: want greater", r.l.Fence(), w.name, held.fence)
			}
			t.Logf("go waiter woke %v after %s's release", r.at.Sub(released), w.name)
		})
	}
}

// TestInterop_goReleaseWakesWorker has a Go lease with a long TTL hold a key
// while the Python, then the Node, worker waits for it in line with a line
// TTL of a minute, so it would try again by itself only after 20s (its
// keep-alive) or 30s (the holder's TTL). It checks that Go's release hands
// the key to the worker promptly: by the hand-off published on the helper's
// channel.
func TestInterop_goReleaseWakesWorker(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	const (
		ttl     = 30 * time.Second
		lineTTL = time.Minute
		// promptly is generous for a loaded CI machine, yet far from the
		// helper's own next attempt (lineTTL/3).
		promptly = 5 * time.Second
	)
	for _, w := range e.workers {
		t.Run(w.name, func(t *testing.T) {
			key := "wake-worker/" + w.name
			l, ok, err := e.m.TryAcquire(ctx, key, ttl)
			if err != nil || !ok {
				t.Fatalf("go TryAcquire = %v, %v", ok, err)
			}
			type result struct {
				a   acquired
				err error
				at  time.Time
			}
			done := make(chan result, 1)
			go func() {
				a, err := w.acquireLine(key, 5*time.Second, lineTTL/3-time.Second, lineTTL)
				done <- result{a, err, time.Now()}
			}()
			deadline := time.Now().Add(10 * time.Second)
			for {
				line, err := e.line(ctx, key)
				if err != nil {
					t.Fatal(err)
				}
				if len(line) == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s did not join the line: %q", w.name, line)
				}
				time.Sleep(2 * time.Millisecond)
			}
			released := time.Now()
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
			r := <-done
			if r.err != nil {
				t.Fatalf("%s acquire after go's release: %v", w.name, r.err)
			}
			if got := w.must(t, "release"); got != "released 1" {
				t.Errorf("%s release = %q", w.name, got)
			}
			if d := r.at.Sub(released); d > promptly {
				t.Errorf("%s took the key %v after go's release, want under %v", w.name, d, promptly)
			}
			if r.a.fence != l.Fence()+1 {
				t.Errorf("%s fence %d after go's %d: want the next one", w.name, r.a.fence, l.Fence())
			}
			t.Logf("%s woke %v after go's release", w.name, r.at.Sub(released))
		})
	}
}

// TestInterop_staleHolderCannotFreeGoLease lets a Python, then a Node,
// lease expire, has Go take the key, and checks that the stale holder's
// release and refresh reply 0 and leave Go's lease held, with its token and
// no longer TTL than Go gave it.
func TestInterop_staleHolderCannotFreeGoLease(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	const goTTL = 5 * time.Second
	for _, w := range e.workers {
		t.Run(w.name, func(t *testing.T) {
			key := "stale/" + w.name
			stale := w.mustAcquire(t, key, 100*time.Millisecond, 0)
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			l, err := e.m.Acquire(actx, key, goTTL) // succeeds once the worker's lease expires
			if err != nil {
				t.Fatal(err)
			}
			defer l.Release(context.Background())
			if l.Fence() <= stale.fence {
				t.Errorf("go fence %d after stale %s fence %d: want greater", l.Fence(), w.name, stale.fence)
			}
			if got := w.must(t, "release"); got != "released 0" {
				t.Errorf("stale %s release = %q, want \"released 0\"", w.name, got)
			}
			if got := w.must(t, "refresh 60000"); got != "refreshed 0" {
				t.Errorf("stale %s refresh = %q, want \"refreshed 0\"", w.name, got)
			}
			in, err := gen.Inspect(ctx, e.c, lockKey(key))
			if err != nil {
				t.Fatal(err)
			}
			if !in.Held || in.Token != l.Token().String() {
				t.Fatalf("after the stale %s release: inspect = %+v, want held by go's token %q",
					w.name, in, l.Token())
			}
			if in.TTL <= 0 || in.TTL > goTTL {
				t.Errorf("go lease TTL %v after the stale %s refresh, want in (0, %v]", in.TTL, w.name, goTTL)
			}
			if err := l.Refresh(ctx, goTTL); err != nil {
				t.Errorf("go Refresh after the stale %s calls: %v", w.name, err)
			}
			if err := l.Release(ctx); err != nil {
				t.Errorf("go Release: %v", err)
			}
			in, err = gen.Inspect(ctx, e.c, lockKey(key))
			if err != nil || in.Held {
				t.Errorf("after go's release: inspect = %+v, %v, want free", in, err)
			}
		})
	}
}
