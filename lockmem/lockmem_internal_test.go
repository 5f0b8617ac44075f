package lockmem

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/klauthed/lock"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newFake(t *testing.T) (*Manager, *FakeClock) {
	t.Helper()
	c := NewFakeClock(t0)
	m := New(Options{Clock: c})
	t.Cleanup(func() { _ = m.Close() })
	return m, c
}

func take(t *testing.T, m *Manager, key string, ttl time.Duration) *Lease {
	t.Helper()
	l, ok, err := m.TryAcquire(context.Background(), key, ttl)
	if err != nil || !ok {
		t.Fatalf("TryAcquire(%q) = %v, %v, %v", key, l, ok, err)
	}
	return l.(*Lease)
}

// entries counts the entries in all shards of m.
func (m *Manager) entries() int {
	n := 0
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		n += len(s.keys)
		s.mu.Unlock()
	}
	return n
}

// waiting returns the number of Acquire calls queued for key.
func (m *Manager) waiting(key string) int {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.keys[key]
	if h == nil || h.q == nil {
		return 0
	}
	n := 0
	for w := h.q.head; w != nil; w = w.next {
		n++
	}
	return n
}

// waitFor polls cond (a test helper, not the code under test) until it
// holds, failing t after two seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

type acq struct {
	id    int
	lease lock.Lease
	err   error
}

func startWaiters(t *testing.T, ctx context.Context, m *Manager, key string, n int) <-chan acq {
	t.Helper()
	out := make(chan acq, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := m.Acquire(ctx, key, time.Minute)
			out <- acq{i, l, err}
		}()
		// Queue them in a known order.
		waitFor(t, fmt.Sprintf("waiter %d to queue", i), func() bool { return m.waiting(key) == i+1 })
	}
	t.Cleanup(wg.Wait)
	return out
}

func TestAcquire_FIFOOneAtATime(t *testing.T) {
	m, _ := newFake(t)
	ctx := context.Background()
	l := take(t, m, "k", time.Minute)
	out := startWaiters(t, ctx, m, "k", 3)
	for want := range 3 {
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
		r := <-out
		if r.err != nil || r.id != want {
			t.Fatalf("woken: waiter %d (err %v), want waiter %d", r.id, r.err, want)
		}
		// Only one waiter is woken per hand-off.
		if got, wantLeft := m.waiting("k"), 2-want; got != wantLeft {
			t.Fatalf("%d still waiting, want %d", got, wantLeft)
		}
		select {
		case r := <-out:
			t.Fatalf("waiter %d woken too while the key is held", r.id)
		default:
		}
		l = r.lease.(*Lease)
	}
	_ = l.Release(ctx)
	if n := m.entries(); n != 0 {
		t.Fatalf("%d entries left after the last release, want 0", n)
	}
}

// Waiting costs one timer per contended key, on the manager's clock, and
// nothing wakes before the holder expires: there is no polling.
func TestAcquire_expiryWakesThroughOneClockTimer(t *testing.T) {
	m, c := newFake(t)
	ctx := context.Background()
	h := take(t, m, "k", 10*time.Second)
	out := startWaiters(t, ctx, m, "k", 3)
	if n := c.pending(); n != 1 {
		t.Fatalf("%d clock timers for one contended key, want 1", n)
	}
	c.Advance(9 * time.Second)
	select {
	case r := <-out:
		t.Fatalf("waiter %d woken before the holder expired", r.id)
	default:
	}
	if err := h.Refresh(ctx, 10*time.Second); err != nil { // expires at 19s now
		t.Fatal(err)
	}
	c.Advance(2 * time.Second) // the timer fires at 10s, finds the lease refreshed, re-arms
	select {
	case r := <-out:
		t.Fatalf("waiter %d woken though the holder refreshed", r.id)
	default:
	}
	c.Advance(8 * time.Second)
	r := <-out // Advance returned only after the hand-off
	if r.err != nil || r.id != 0 {
		t.Fatalf("woken: waiter %d (err %v), want waiter 0", r.id, r.err)
	}
	if !errors.Is(h.Refresh(ctx, time.Second), lock.ErrNotHeld) {
		t.Fatal("expired holder could refresh")
	}
	// The next holder got TTL 1 minute from the hand-off; two waiters remain.
	c.Advance(time.Minute)
	if r := <-out; r.id != 1 {
		t.Fatalf("second hand-off to waiter %d, want 1", r.id)
	}
	c.Advance(time.Minute)
	if r := <-out; r.id != 2 {
		t.Fatalf("third hand-off to waiter %d, want 2", r.id)
	}
	if n := c.pending(); n != 0 {
		t.Fatalf("%d clock timers left with no waiter, want 0", n)
	}
}

// A cancelled waiter leaves the queue, and its key's timer stops once
// nobody waits.
func TestAcquire_cancelLeavesNoWaiter(t *testing.T) {
	m, c := newFake(t)
	h := take(t, m, "k", time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	out := startWaiters(t, ctx, m, "k", 2)
	cancel()
	for range 2 {
		r := <-out
		if !errors.Is(r.err, lock.ErrNotAcquired) || !errors.Is(r.err, context.Canceled) {
			t.Fatalf("cancelled Acquire = %v", r.err)
		}
	}
	if n := m.waiting("k"); n != 0 {
		t.Fatalf("%d waiters left after cancel", n)
	}
	if n := c.pending(); n != 0 {
		t.Fatalf("%d clock timers left after every waiter left", n)
	}
	_ = h.Release(context.Background())
	if n := m.entries(); n != 0 {
		t.Fatalf("%d entries left", n)
	}
}

// Expired entries do not accumulate: new keys sweep them, and a shard's map
// is rebuilt smaller once most of its keys are gone.
func TestManager_memoryBoundedByLiveKeys(t *testing.T) {
	m, c := newFake(t)
	const n = 80000 // about 1250 keys per shard, over shrinkMin
	for i := range n {
		take(t, m, fmt.Sprint("old", i), time.Second)
	}
	c.Advance(2 * time.Second)
	for i := range n {
		take(t, m, fmt.Sprint("new", i), time.Hour)
	}
	// At most the live keys plus as many as a shard held at its last sweep
	// (see the package doc); without sweeping all 2n would still be there.
	if got := m.entries(); got > n+n/2 {
		t.Fatalf("%d entries for %d live keys", got, n)
	}
	c.Advance(2 * time.Hour)
	// One short-lived key at a time: once each shard has seen as many new
	// keys as it held, the expired ones are gone and its map rebuilt small.
	for i := range n {
		take(t, m, fmt.Sprint("tiny", i), time.Second)
		c.Advance(2 * time.Second)
	}
	if got := m.entries(); got > numShards*minSweep {
		t.Fatalf("%d entries left with at most one live key", got)
	}
	for i := range m.shards {
		if p := m.shards[i].peak; p >= shrinkMin {
			t.Fatalf("shard %d map still sized for %d keys", i, p)
		}
	}
}

func TestLease_Lost(t *testing.T) {
	m, c := newFake(t)
	ctx := context.Background()

	expiring := take(t, m, "a", time.Second)
	lost := expiring.Lost()
	c.Advance(500 * time.Millisecond)
	select {
	case <-lost:
		t.Fatal("Lost closed before the TTL passed")
	default:
	}
	c.Advance(time.Second) // nobody touches the key: the watch timer must notice
	select {
	case <-lost:
	default:
		t.Fatal("Lost not closed after the TTL passed")
	}
	if m.entries() != 0 {
		t.Fatal("the expired entry was not removed")
	}

	late := take(t, m, "a2", time.Second)
	c.Advance(2 * time.Second)
	select {
	case <-late.Lost(): // expired before Lost was first called
	default:
		t.Fatal("Lost of an already expired lease not closed")
	}

	released := take(t, m, "b", time.Second)
	rl := released.Lost()
	_ = released.Release(ctx)
	c.Advance(time.Hour)
	select {
	case <-rl:
		t.Fatal("Lost closed by the lease's own Release")
	default:
	}

	open := take(t, m, "c", time.Hour)
	ol := open.Lost()
	_ = m.Close()
	select {
	case <-ol:
	default:
		t.Fatal("Lost not closed by Close")
	}
	if !errors.Is(open.Refresh(ctx, time.Second), lock.ErrClosed) ||
		!errors.Is(open.Release(ctx), lock.ErrClosed) {
		t.Fatal("lease of a closed manager: want ErrClosed from Refresh and Release")
	}
}

func TestLease_Token(t *testing.T) {
	m, _ := newFake(t)
	l := take(t, m, "k", time.Second)
	var wg sync.WaitGroup
	toks := make([]lock.Token, 8)
	for i := range toks {
		wg.Add(1)
		go func() { defer wg.Done(); toks[i] = l.Token() }()
	}
	wg.Wait()
	for _, tok := range toks {
		if tok != toks[0] || len(tok) != lock.TokenLen {
			t.Fatalf("tokens %q: want one 22-character token", toks)
		}
	}
	_ = l.Release(context.Background())
	if next := take(t, m, "k", time.Second); next.Token() == toks[0] {
		t.Fatal("a new acquisition got the same token")
	}
}

func TestNilReceivers(t *testing.T) {
	var m *Manager
	if !errors.Is(m.Close(), lock.ErrClosed) {
		t.Fatal("nil Manager Close: want ErrClosed")
	}
	var l *Lease
	if l.Key() != "" || l.Fence() != 0 || l.Token() != "" || l.Release(context.Background()) != nil ||
		!errors.Is(l.Refresh(context.Background(), time.Second), lock.ErrNotHeld) {
		t.Fatal("nil Lease: want zero values, Release nil, Refresh ErrNotHeld")
	}
	select {
	case <-l.Lost():
	default:
		t.Fatal("nil Lease: Lost should be closed")
	}
}

// nowOnly is a Clock without AfterFunc: lockmem falls back to real timers.
type nowOnly struct{}

func (nowOnly) Now() time.Time { return time.Now() }

func TestAcquire_plainClockUsesRealTimers(t *testing.T) {
	m := New(Options{Clock: nowOnly{}})
	defer m.Close()
	ctx := context.Background()
	take(t, m, "k", 30*time.Millisecond)
	c, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := m.Acquire(c, "k", time.Second); err != nil {
		t.Fatalf("Acquire after the holder's TTL = %v", err)
	}
}

func TestFakeClock(t *testing.T) {
	c := NewFakeClock(t0)
	var mu sync.Mutex
	var got []string
	rec := func(name string) func() {
		return func() {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, fmt.Sprintf("%s@%v", name, c.Now().Sub(t0)))
		}
	}
	c.AfterFunc(3*time.Second, rec("c"))
	c.AfterFunc(time.Second, rec("a"))
	stopB := c.AfterFunc(2*time.Second, rec("b"))
	c.AfterFunc(time.Second, rec("a2"))
	if !stopB() || stopB() {
		t.Fatal("stop: want true once, then false")
	}
	c.Advance(2 * time.Second)
	if want := []string{"a@1s", "a2@1s"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ran %v, want %v", got, want)
	}
	if c.Now() != t0.Add(2*time.Second) {
		t.Fatalf("Now = %v", c.Now())
	}
	c.Advance(-time.Hour)
	c.Advance(time.Second)
	if want := []string{"a@1s", "a2@1s", "c@3s"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ran %v, want %v", got, want)
	}
}
