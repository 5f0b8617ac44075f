package examples_test

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockredis"
)

// This file checks protocol 2's line across languages: Go (lockredis), Python
// and Node waiters on one key are served in the order of their entries in the
// key's line (p{k}:line), each hand-off going to the head.

// lineWaiter is one contender: a Go Manager of its own or a worker process,
// each standing for a separate process waiting for one key.
type lineWaiter struct {
	name    string // "go#1", "python#2", ...
	lang    string
	acquire func() (acquired, error) // waits in line
	release func() error
}

// goWaiter waits through a Manager of its own.
func goWaiter(t *testing.T, e *env, name, key string, ttl time.Duration) *lineWaiter {
	t.Helper()
	m := newManager(t, e.addr)
	var l lock.Lease
	return &lineWaiter{
		name: name, lang: "go",
		acquire: func() (acquired, error) {
			ctx, cancel := context.WithTimeout(context.Background(), lineWait)
			defer cancel()
			var err error
			if l, err = m.Acquire(ctx, key, ttl); err != nil {
				return acquired{}, fmt.Errorf("%s: %w", name, err)
			}
			return acquired{l.Fence(), l.Token().String()}, nil
		},
		release: func() error { return l.Release(context.Background()) },
	}
}

// workerWaiter waits through a worker process; lineTTL 0 is the helper's
// default.
func workerWaiter(w *worker, name, key string, ttl, lineTTL time.Duration) *lineWaiter {
	return &lineWaiter{
		name: name, lang: w.name,
		acquire: func() (acquired, error) { return w.acquireLine(key, ttl, lineWait, lineTTL) },
		release: func() error {
			got, err := w.do("release")
			if err == nil && got != "released 1" {
				err = fmt.Errorf("%s: release = %q, want \"released 1\"", name, got)
			}
			return err
		},
	}
}

// lineWait bounds one waiter's wait; under replyTimeout, so a worker answers.
const lineWait = 20 * time.Second

// turn is one waiter's time as the holder.
type turn struct {
	w       *lineWaiter
	a       acquired
	wait    time.Duration // from its joining the line to holding the key
	handoff time.Duration // from the previous holder's release call to holding the key
}

// lineRun runs waiters that each take the key once, hold it for hold and
// release it.
type lineRun struct {
	hold     time.Duration
	done     chan error // one per waiter: nil, or why it failed
	inside   atomic.Int32
	overlaps atomic.Int32

	mu          sync.Mutex
	turns       []turn    // in the order they held the key
	lastRelease time.Time // when the last holder started its release
}

func newLineRun(n int, hold time.Duration) *lineRun {
	return &lineRun{hold: hold, done: make(chan error, n)}
}

// start has w begin waiting.
func (r *lineRun) start(w *lineWaiter) {
	joined := time.Now()
	go func() {
		a, err := w.acquire()
		at := time.Now()
		if err != nil {
			r.done <- err
			return
		}
		if r.inside.Add(1) != 1 {
			r.overlaps.Add(1)
		}
		r.mu.Lock()
		r.turns = append(r.turns, turn{w, a, at.Sub(joined), at.Sub(r.lastRelease)})
		r.mu.Unlock()
		time.Sleep(r.hold)
		r.inside.Add(-1)
		r.released()
		if err := w.release(); err != nil {
			r.done <- fmt.Errorf("%s: release: %w", w.name, err)
			return
		}
		r.done <- nil
	}()
}

// released notes that a holder starts its release now.
func (r *lineRun) released() {
	r.mu.Lock()
	r.lastRelease = time.Now()
	r.mu.Unlock()
}

// line reads key's line, head first.
func (e *env) line(ctx context.Context, key string) ([]string, error) {
	zrange := e.c.B().Zrange().Key(lockKey(key) + ":line").Min("0").Max("-1").Build()
	return e.c.Do(ctx, zrange).AsStrSlice()
}

// join starts ws one after another, each once the entry of the one before is
// visible in key's line, and returns their entries' tokens in join order.
// Nobody may finish meanwhile: the key is held.
func (r *lineRun) join(t *testing.T, e *env, key string, ws []*lineWaiter) []string {
	t.Helper()
	ctx := ctxT(t)
	var joined []string
	for _, w := range ws {
		r.start(w)
		deadline := time.Now().Add(10 * time.Second)
		for {
			line, err := e.line(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if len(line) > len(joined) {
				if len(line) != len(joined)+1 || !slices.Equal(line[:len(joined)], joined) {
					t.Fatalf("line after %s joined: %q, want %q and one more", w.name, line, joined)
				}
				joined = line
				break
			}
			select {
			case err := <-r.done:
				t.Fatalf("a waiter finished while the key was held (before %s joined): %v", w.name, err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not join the line within 10s: line %q", w.name, line)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return joined
}

// stillInLine sleeps for d, then checks that key's line is still line: every
// waiter kept its place alive with the token it joined with.
func stillInLine(t *testing.T, e *env, key string, line []string, d time.Duration) {
	t.Helper()
	time.Sleep(d)
	now, err := e.line(ctxT(t), key)
	if err != nil || !slices.Equal(now, line) {
		t.Fatalf("line after %v = %q, %v; want it unchanged, %q: waiters keep their place",
			d, now, err, line)
	}
}

// finish waits for every waiter and checks that they held the key one at a
// time, exactly in line order, with fences from firstFence up by 1 (each
// hand-off went to the head), and logs the order and the waits.
func (r *lineRun) finish(t *testing.T, ws []*lineWaiter, line []string, firstFence uint64) []turn {
	t.Helper()
	for range ws {
		if err := <-r.done; err != nil {
			t.Error(err) // a waiter that timed out was starved
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	if n := r.overlaps.Load(); n != 0 {
		t.Errorf("%d holders overlapped", n)
	}
	var order []string
	maxWait := map[string]time.Duration{}
	maxHandoff := map[string]time.Duration{}
	for i, tu := range r.turns {
		order = append(order, fmt.Sprintf("%s(fence %d, hand-off %v)", tu.w.name, tu.a.fence,
			tu.handoff.Round(time.Millisecond/10)))
		maxWait[tu.w.lang] = max(maxWait[tu.w.lang], tu.wait)
		maxHandoff[tu.w.lang] = max(maxHandoff[tu.w.lang], tu.handoff)
		if tu.w != ws[i] || tu.a.token != line[i] {
			t.Errorf("turn %d went to %s (token %s), want %s, whose entry %s is number %d in line",
				i+1, tu.w.name, tu.a.token, ws[i].name, line[i], i+1)
		}
		if want := firstFence + uint64(i); tu.a.fence != want {
			t.Errorf("turn %d (%s) has fence %d, want %d: a hand-off skipped the head or "+
				"someone else held the key in between", i+1, tu.w.name, tu.a.fence, want)
		}
	}
	t.Logf("served in order: %s", strings.Join(order, ", "))
	var langs []string
	for l := range maxWait {
		langs = append(langs, l)
	}
	sort.Strings(langs)
	for _, l := range langs {
		t.Logf("%s: max wait in line %v, max hand-off %v", l, maxWait[l].Round(time.Millisecond),
			maxHandoff[l].Round(time.Millisecond/10))
	}
	return r.turns
}

// TestInterop_lineOrderAcrossLanguages queues Go, Python and Node waiters on
// one held key in a known order (Go, Python, Node, three times; each joins
// only once the previous entry is visible in the line), checks that all keep
// their place for longer than the line TTL (3s, everyone's default), then
// releases the key, each holder holding it briefly. It checks they are served
// exactly in line order,
// all of them, one at a time, and that every hand-off went to the head:
// fences grow by exactly 1 per turn.
func TestInterop_lineOrderAcrossLanguages(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	const (
		key    = "fair"
		rounds = 3
		ttl    = 10 * time.Second // no lease expires here: every turn is a hand-off
		hold   = 20 * time.Millisecond
	)
	holder, ok, err := e.m.TryAcquire(ctx, key, 30*time.Second)
	if err != nil || !ok {
		t.Fatalf("go holder: TryAcquire = %v, %v", ok, err)
	}
	var ws []*lineWaiter
	for i := 1; i <= rounds; i++ {
		ws = append(ws, goWaiter(t, e, fmt.Sprintf("go#%d", i), key, ttl))
		for j, l := range languages {
			w := e.workers[j]
			if i > 1 {
				w = startWorker(t, l, e.addr)
			}
			ws = append(ws, workerWaiter(w, fmt.Sprintf("%s#%d", l.name, i), key, ttl, 0))
		}
	}
	r := newLineRun(len(ws), hold)
	line := r.join(t, e, key, ws)
	// Longer than every waiter's line TTL (Go's and the helpers' default):
	// entries not kept alive would be gone.
	stillInLine(t, e, key, line, lockredis.DefaultLineTTL+500*time.Millisecond)
	r.released()
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	r.finish(t, ws, line, holder.Fence()+1)
}

// TestInterop_pollersKeepTheirPlace has a Python and a Node waiter without
// Pub/Sub (--poll, line TTL 600ms) queue for a held key, then Go waiters
// arrive after them, and the holder keeps the key for more than three line
// TTLs. It checks that the pollers' entries carry no channel, that they are
// still first in line when the holder releases, and that they are served
// first, before the Go waiters that arrived later, while a Go TryAcquire loop
// never takes the key from the line.
func TestInterop_pollersKeepTheirPlace(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	const (
		key     = "pollers"
		ttl     = 10 * time.Second
		lineTTL = 600 * time.Millisecond
		hold    = 20 * time.Millisecond
		goN     = 4
	)
	holder, ok, err := e.m.TryAcquire(ctx, key, 30*time.Second)
	if err != nil || !ok {
		t.Fatalf("go holder: TryAcquire = %v, %v", ok, err)
	}
	var ws []*lineWaiter
	for _, l := range languages {
		w := startWorker(t, l, e.addr, "--poll")
		ws = append(ws, workerWaiter(w, l.name+"#poll", key, ttl, lineTTL))
	}
	for i := 1; i <= goN; i++ {
		ws = append(ws, goWaiter(t, e, fmt.Sprintf("go#%d", i), key, ttl))
	}
	r := newLineRun(len(ws), hold)
	line := r.join(t, e, key, ws)
	for i, w := range ws[:len(languages)] {
		hget := e.c.B().Hget().Key(lockKey(key) + ":line:args").Field(line[i]).Build()
		args, err := e.c.Do(ctx, hget).ToString()
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("%d ", ttl.Milliseconds()); args != want {
			t.Errorf("%s's line args %q, want %q (its ttl and no channel: it polls)", w.name, args, want)
		}
	}
	stillInLine(t, e, key, line, 3*lineTTL+lineTTL/2)

	// A Go process that only ever tries: it must never get the key while
	// anyone waits in line.
	bm := newManager(t, e.addr)
	stop := make(chan struct{})
	var barged []uint64
	bargerDone := make(chan struct{})
	go func() {
		defer close(bargerDone)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			l, ok, err := bm.TryAcquire(ctx, key, ttl)
			if err != nil || !ok {
				continue
			}
			barged = append(barged, l.Fence())
			_ = l.Release(ctx)
		}
	}()

	r.released()
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	turns := r.finish(t, ws, line, holder.Fence()+1)
	close(stop)
	<-bargerDone
	last := turns[len(turns)-1].a.fence
	for _, f := range barged {
		if f < last {
			t.Errorf("go TryAcquire took the key with fence %d while waiters were in line "+
				"(the last waiter got %d)", f, last)
		}
	}
}

// TestInterop_killedWorkerInLineIsSkipped has a Python (then a Node) worker
// wait at the head of a key's line for a lease of a minute, a Go waiter
// behind it, and kills the worker (SIGKILL) while a Go holder has the key.
// The helpers' channels are strict (scripts/README.md, "Tokens and
// channels") and the worker's connections closed with it, so the holder's
// release skips it and hands the key to the Go waiter at once, rather than
// to the dead worker for its minute.
func TestInterop_killedWorkerInLineIsSkipped(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	for _, l := range languages {
		t.Run(l.name, func(t *testing.T) {
			key := "killed-" + l.name
			holder, ok, err := e.m.TryAcquire(ctx, key, time.Minute)
			if err != nil || !ok {
				t.Fatalf("go holder: TryAcquire = %v, %v", ok, err)
			}
			w := startWorker(t, l, e.addr)
			go func() { _, _ = w.acquire(key, time.Minute, lineWait) }() // it dies waiting
			channel := waitStrictHead(t, e, key)
			next := newManager(t, e.addr)
			got := make(chan error, 1)
			go func() {
				lease, err := next.Acquire(ctx, key, time.Minute)
				if err == nil {
					err = lease.Release(context.Background())
				}
				got <- err
			}()
			deadline := time.Now().Add(5 * time.Second)
			for line, _ := e.line(ctx, key); len(line) < 2; line, _ = e.line(ctx, key) {
				if time.Now().After(deadline) {
					t.Fatalf("line %q: the Go waiter never joined behind the %s worker", line, l.name)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if err := w.proc.Kill(); err != nil {
				t.Fatal(err)
			}
			// Redis drops a dead connection's subscription as soon as it
			// reads the close; the release must not race ahead of that.
			for numsub(t, e, channel) != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("%s's subscription outlived its process", channel)
				}
				time.Sleep(5 * time.Millisecond)
			}
			start := time.Now()
			if err := holder.Release(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-got:
				if err != nil {
					t.Fatalf("go waiter behind the killed %s worker: %v", l.name, err)
				}
				t.Logf("go waiter held the key %v after the release", time.Since(start))
			case <-time.After(10 * time.Second):
				t.Fatalf("go waiter not served within 10s of the release: "+
					"the key went to the killed %s worker (TTL 1m)", l.name)
			}
		})
	}
}

// waitStrictHead waits until the head of key's line has a strict channel
// (its worker is subscribed) and returns that channel.
func waitStrictHead(t *testing.T, e *env, key string) string {
	t.Helper()
	ctx := ctxT(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if line, _ := e.line(ctx, key); len(line) > 0 {
			args, _ := e.c.Do(ctx, e.c.B().Hget().Key(lockKey(key)+":line:args").
				Field(line[0]).Build()).ToString()
			if _, ch, ok := strings.Cut(args, " "); ok && strings.HasSuffix(ch, "!") {
				return ch
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the head of %q never registered a strict channel", key)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// numsub is PUBSUB NUMSUB of channel.
func numsub(t *testing.T, e *env, channel string) int64 {
	t.Helper()
	vals, err := e.c.Do(ctxT(t), e.c.B().PubsubNumsub().Channel(channel).Build()).ToArray()
	if err != nil || len(vals) != 2 {
		t.Fatalf("PUBSUB NUMSUB %s = %v, %v", channel, vals, err)
	}
	n, err := vals[1].AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n
}
