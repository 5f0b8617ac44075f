package locktest

import (
	"context"
	"errors"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauthed/lock"
)

// testExclusionTryAcquire: while a lease is live, no TryAcquire on any
// manager of the store gets the key.
func (s *suite) testExclusionTryAcquire(t *testing.T) {
	m := s.b.New(t)
	p := s.b.Peer(t, m)
	k := key(t)
	l := mustTake(t, m, k, s.long())
	mustBeHeld(t, m, k)
	mustBeHeld(t, p, k)
	release(t, l)
	mustBeFree(t, p, k)
}

// testExclusionGoroutines: goroutines on two managers take turns with
// Acquire; a lost update of a load-then-store counter or two holders inside
// at once means exclusion failed. Only atomics are used, so that -race does
// not flag accesses whose ordering comes from the backend's store (a socket
// to Redis) rather than from Go synchronisation.
func (s *suite) testExclusionGoroutines(t *testing.T) {
	const goroutines = 16
	iterations := 25
	if s.b.Slow {
		iterations = 5
	}
	m := s.b.New(t)
	p := s.b.Peer(t, m)
	k := key(t)
	var (
		inside    atomic.Int32
		counter   atomic.Int64
		lastFence atomic.Uint64
		overlaps  atomic.Int32 // times a holder found another inside
		backwards atomic.Int32 // times a fence was not above the previous one
		failed    atomic.Bool  // Acquire or Release failed
		wg        sync.WaitGroup
	)
	c := ctx(t)
	for g := range goroutines {
		mgr := m
		if g%2 == 1 {
			mgr = p
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range iterations {
				l, err := mgr.Acquire(c, k, s.long())
				if err != nil {
					t.Errorf("Acquire: %v", err)
					failed.Store(true)
					return
				}
				if inside.Add(1) != 1 {
					overlaps.Add(1)
				}
				if l.Fence() <= lastFence.Load() {
					backwards.Add(1)
				}
				lastFence.Store(l.Fence())
				v := counter.Load()
				runtime.Gosched()
				counter.Store(v + 1)
				inside.Add(-1)
				if err := l.Release(c); err != nil {
					t.Errorf("Release: %v", err)
					failed.Store(true)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := overlaps.Load(); n > 0 {
		t.Errorf("%d times a holder found another holder inside", n)
	}
	if n := backwards.Load(); n > 0 {
		t.Errorf("%d times a lease's fence was not above the previous holder's", n)
	}
	if !failed.Load() && counter.Load() != int64(goroutines*iterations) {
		t.Errorf("counter = %d, want %d: updates were lost, so two goroutines held the key at once",
			counter.Load(), goroutines*iterations)
	}
	if t.Failed() {
		return
	}
	mustBeFree(t, m, k)
}

func (s *suite) testFenceAcrossRelease(t *testing.T) {
	m := s.b.New(t)
	s.fencesRise(t, key(t), "after a release", m, m, m, m, m)
}

func (s *suite) testFenceAcrossExpiry(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	first := mustTake(t, m, k, s.b.Unit)
	s.expire(t, m)
	second := mustTake(t, m, k, s.long())
	fenceAfter(t, first.Fence(), second.Fence(), "after the previous holder expired")
	release(t, second)
	third := mustTake(t, m, k, s.long())
	fenceAfter(t, second.Fence(), third.Fence(), "after expiry and release")
	release(t, third)
}

func (s *suite) testFenceAcrossPeers(t *testing.T) {
	m := s.b.New(t)
	p := s.b.Peer(t, m)
	s.fencesRise(t, key(t), "after another manager's release", m, p, m, p)
}

// fencesRise takes and releases k through each of managers in turn and
// fails unless each fence is larger than the one before; after says when.
func (s *suite) fencesRise(t *testing.T, k, after string, managers ...lock.Manager) {
	t.Helper()
	var prev uint64
	for i, m := range managers {
		l := mustTake(t, m, k, s.long())
		if i > 0 {
			fenceAfter(t, prev, l.Fence(), after)
		}
		prev = l.Fence()
		release(t, l)
	}
}

// testKeyAndToken: a lease reports its key, and tokens are 22 URL-safe
// characters, stable per lease and different per acquisition.
func (s *suite) testKeyAndToken(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	seen := map[lock.Token]bool{}
	for range 3 {
		l := mustTake(t, m, k, s.long())
		tok := l.Token()
		if len(tok) != lock.TokenLen {
			t.Fatalf("Token() = %q, want %d characters", tok, lock.TokenLen)
		}
		for _, c := range tok {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
				c == '-' || c == '_') {
				t.Fatalf("Token() = %q, has %q outside unpadded URL-safe base64", tok, c)
			}
		}
		if l.Token() != tok {
			t.Fatalf("Token() changed from %q to %q", tok, l.Token())
		}
		if seen[tok] {
			t.Fatalf("Token() = %q again for a new acquisition", tok)
		}
		seen[tok] = true
		release(t, l)
	}
}

func (s *suite) testExpiry(t *testing.T) {
	m := s.b.New(t)
	p := s.b.Peer(t, m)
	k := key(t)
	mustTake(t, m, k, s.b.Unit)
	mustBeHeld(t, p, k)
	s.expire(t, m)
	mustBeFree(t, p, k)
	mustBeFree(t, m, k)
}

func (s *suite) testRefreshExtends(t *testing.T) {
	m := s.b.New(t)
	p := s.b.Peer(t, m)
	k := key(t)
	l := mustTake(t, m, k, s.b.Unit)
	if err := l.Refresh(ctx(t), 4*s.b.Unit); err != nil {
		t.Fatalf("Refresh = %v, want nil", err)
	}
	s.expire(t, m) // past the first TTL, well within the refreshed one
	mustBeHeld(t, p, k)
	if err := l.Refresh(ctx(t), s.long()); err != nil {
		t.Fatalf("second Refresh = %v, want nil", err)
	}
	release(t, l)
	mustBeFree(t, p, k)
}

func (s *suite) testRefreshAfterExpiry(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	l := mustTake(t, m, k, s.b.Unit)
	s.expire(t, m)
	if err := l.Refresh(ctx(t), s.long()); !isErr(err, lock.ErrNotHeld) {
		t.Fatalf("Refresh after expiry = %v, want ErrNotHeld", err)
	}
	mustBeFree(t, m, k) // the refresh did not bring the lease back
}

func (s *suite) testRefreshAfterAnotherTook(t *testing.T) {
	m, p, k, old := s.expiredHolder(t)
	cur := mustTake(t, p, k, s.long())
	if err := old.Refresh(ctx(t), s.long()); !isErr(err, lock.ErrNotHeld) {
		t.Fatalf("stale Refresh = %v, want ErrNotHeld", err)
	}
	mustBeHeld(t, m, k)
	if err := cur.Refresh(ctx(t), s.long()); err != nil {
		t.Fatalf("current holder's Refresh after a stale one = %v, want nil", err)
	}
	release(t, cur)
	mustBeFree(t, m, k)
}

func (s *suite) testRefreshBadTTL(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	l := mustTake(t, m, k, s.long())
	for _, ttl := range []time.Duration{
		0, -time.Second, time.Millisecond - time.Microsecond, s.b.MaxTTL + time.Millisecond,
	} {
		if err := l.Refresh(ctx(t), ttl); !isErr(err, lock.ErrInvalidTTL) {
			t.Fatalf("Refresh(%v) = %v, want ErrInvalidTTL", ttl, err)
		}
	}
	mustBeHeld(t, m, k)
	if err := l.Refresh(ctx(t), s.long()); err != nil {
		t.Fatalf("Refresh after bad ones = %v, want nil", err)
	}
	release(t, l)
}

// expiredHolder returns a Manager, a peer of it and a fresh key, with the
// lease old taken on the key through the Manager and already expired.
func (s *suite) expiredHolder(t *testing.T) (m, p lock.Manager, k string, old lock.Lease) {
	t.Helper()
	m = s.b.New(t)
	p = s.b.Peer(t, m)
	k = key(t)
	old = mustTake(t, m, k, s.b.Unit)
	s.expire(t, m)
	return m, p, k, old
}

// testStaleRelease: a holder that expired cannot free the next holder's key.
func (s *suite) testStaleRelease(t *testing.T) {
	m, p, k, old := s.expiredHolder(t)
	cur := mustTake(t, p, k, s.long())
	if err := old.Release(ctx(t)); err != nil {
		t.Fatalf("stale Release = %v, want nil", err)
	}
	mustBeHeld(t, m, k)
	mustBeHeld(t, p, k)
	if err := cur.Refresh(ctx(t), s.long()); err != nil {
		t.Fatalf("current holder's Refresh after a stale Release = %v, want nil", err)
	}
	release(t, cur)
}

// testStaleRefresh: a holder that expired cannot extend the next holder's
// lease: the next lease still ends at its own TTL.
func (s *suite) testStaleRefresh(t *testing.T) {
	m, p, k, old := s.expiredHolder(t)
	mustTake(t, p, k, s.b.Unit)
	if err := old.Refresh(ctx(t), s.long()); !isErr(err, lock.ErrNotHeld) {
		t.Fatalf("stale Refresh = %v, want ErrNotHeld", err)
	}
	s.expire(t, m)
	mustBeFree(t, m, k) // the current lease ended at its own TTL
}

func (s *suite) testWakeOnRelease(t *testing.T) {
	m := s.b.New(t)
	s.wakeOnRelease(t, m, m)
}

func (s *suite) testWakeOnPeerRelease(t *testing.T) {
	m := s.b.New(t)
	s.wakeOnRelease(t, m, s.b.Peer(t, m))
}

func (s *suite) wakeOnRelease(t *testing.T, holderM, waiterM lock.Manager) {
	t.Helper()
	k := key(t)
	h := mustTake(t, holderM, k, s.long())
	ch := acquireAsync(t, ctx(t), waiterM, k, s.long())
	settle()
	select {
	case r := <-ch:
		t.Fatalf("Acquire on a held key returned %v, %v before the release", r.lease, r.err)
	default:
	}
	release(t, h)
	r := await(t, ch, "after Release")
	if r.err != nil {
		t.Fatalf("Acquire after Release = %v", r.err)
	}
	fenceAfter(t, h.Fence(), r.lease.Fence(), "of the woken waiter")
	mustBeHeld(t, holderM, k)
	release(t, r.lease)
}

func (s *suite) testWakeOnExpiry(t *testing.T) {
	m := s.b.New(t)
	p := s.b.Peer(t, m)
	k := key(t)
	h := mustTake(t, m, k, s.b.Unit)
	ch := acquireAsync(t, ctx(t), p, k, s.long())
	settle()
	s.expire(t, m)
	r := await(t, ch, "after the holder expired")
	if r.err != nil {
		t.Fatalf("Acquire after expiry = %v", r.err)
	}
	fenceAfter(t, h.Fence(), r.lease.Fence(), "of the woken waiter")
	if err := h.Release(ctx(t)); err != nil {
		t.Fatalf("expired holder's Release = %v, want nil", err)
	}
	mustBeHeld(t, m, k)
	release(t, r.lease)
}

// testFIFOAcrossManagers: waiters on several Managers of one store (as
// several processes would have them) that started waiting one after another,
// each well after the one before, get the key in that order, each exactly
// once. The tolerance is zero places: a backend with a line (lockmem's
// queue, lockredis's line in Redis) serves arrivals in order.
func (s *suite) testFIFOAcrossManagers(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	const n = 4
	h := mustTake(t, m, k, s.long())
	order := make(chan int, n)
	var chs []<-chan result
	for i := range n {
		p := s.b.Peer(t, m)
		i := i
		c, cancel := context.WithCancel(ctx(t))
		ch := make(chan result, 1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			l, err := p.Acquire(c, k, s.long())
			if err == nil {
				order <- i
				time.Sleep(time.Millisecond)
				err = l.Release(context.Background())
			}
			ch <- result{l, err}
		}()
		t.Cleanup(func() { cancel(); <-done })
		chs = append(chs, ch)
		settle() // the next waiter arrives well after this one
	}
	release(t, h)
	for i, ch := range chs {
		if r := await(t, ch, "waiter "+string(rune('0'+i))); r.err != nil {
			t.Fatalf("waiter %d: %v", i, r.err)
		}
	}
	close(order)
	var got []int
	for i := range order {
		got = append(got, i)
	}
	for i := range got {
		if got[i] != i {
			t.Fatalf("waiters on %d Managers got the key in order %v; want arrival order 0..%d", n, got, n-1)
		}
	}
	mustBeFree(t, m, k)
}

// testNoStarvation: a waiter is not overtaken by Managers that arrive after
// it and keep taking the key in a loop: it is the first to get the key after
// the holder's release, and gets it promptly.
func (s *suite) testNoStarvation(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	h := mustTake(t, m, k, s.long())
	w := s.b.Peer(t, m)
	ch := acquireAsync(t, ctx(t), w, k, s.long())
	settle()
	var mu sync.Mutex
	var seq []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 3 {
		p := s.b.Peer(t, m)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, cancel := context.WithTimeout(ctx(t), prompt)
				l, err := p.Acquire(c, k, s.long())
				cancel()
				if err != nil {
					continue
				}
				mu.Lock()
				seq = append(seq, "hammer"+string(rune('0'+i)))
				mu.Unlock()
				_ = l.Release(context.Background())
			}
		}()
	}
	settle()
	release(t, h)
	r := await(t, ch, "the first waiter, with later arrivals taking the key in a loop")
	mu.Lock()
	seq = append(seq, "waiter")
	first := seq[0]
	mu.Unlock()
	if r.err != nil {
		t.Fatalf("first waiter's Acquire = %v", r.err)
	}
	release(t, r.lease)
	close(stop)
	wg.Wait()
	if first != "waiter" {
		t.Fatalf("after the release the key went first to %s, "+
			"which arrived after the waiter (order %v)", first, seq)
	}
}

// testTryAcquireNoJump: while a waiter waits for a key, a TryAcquire from
// another Manager right after the holder's release does not take the key
// from the waiter.
func (s *suite) testTryAcquireNoJump(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	h := mustTake(t, m, k, s.long())
	ch := acquireAsync(t, ctx(t), s.b.Peer(t, m), k, s.long())
	settle()
	p := s.b.Peer(t, m)
	release(t, h)
	if l, ok, err := p.TryAcquire(ctx(t), k, s.long()); err != nil || ok {
		if ok {
			release(t, l)
		}
		t.Fatalf("TryAcquire right after the release, with a waiter in line = %v, %v; "+
			"want false", ok, err)
	}
	r := await(t, ch, "the waiter in line")
	if r.err != nil {
		t.Fatalf("waiter = %v", r.err)
	}
	release(t, r.lease)
}

func (s *suite) testContextDeadline(t *testing.T) {
	m := s.b.New(t)
	p := s.b.Peer(t, m)
	k := key(t)
	h := mustTake(t, m, k, s.long())
	c, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	l, err := p.Acquire(c, k, s.long())
	if l != nil || !isErr(err, lock.ErrNotAcquired) || !isErr(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire past its deadline = %v, %v; "+
			"want nil and an error wrapping ErrNotAcquired and DeadlineExceeded", l, err)
	}
	release(t, h)
	mustBeFreeSoon(t, m, k) // the failed Acquire left nothing behind
}

func (s *suite) testContextCanceled(t *testing.T) {
	m := s.b.New(t)
	p := s.b.Peer(t, m)
	k := key(t)
	h := mustTake(t, m, k, s.long())
	c, cancel := context.WithCancel(context.Background())
	ch := acquireAsync(t, c, p, k, s.long())
	settle()
	cancel()
	r := await(t, ch, "after cancel")
	if r.lease != nil || !isErr(r.err, lock.ErrNotAcquired) || !isErr(r.err, context.Canceled) {
		t.Fatalf("cancelled Acquire = %v, %v; "+
			"want nil and an error wrapping ErrNotAcquired and Canceled", r.lease, r.err)
	}
	release(t, h)
	mustBeFreeSoon(t, m, k)
}

func (s *suite) testContextAlreadyDone(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	h := mustTake(t, m, k, s.long())
	c, cancel := context.WithCancel(context.Background())
	cancel()
	l, err := m.Acquire(c, k, s.long())
	if l != nil || !isErr(err, lock.ErrNotAcquired) || !isErr(err, context.Canceled) {
		t.Fatalf("Acquire with a done context on a held key = %v, %v; "+
			"want nil, ErrNotAcquired and Canceled", l, err)
	}
	release(t, h)
	mustBeFree(t, m, k)
}

func (s *suite) testReleaseTwice(t *testing.T) {
	m := s.b.New(t)
	p := s.b.Peer(t, m)
	k := key(t)
	l := mustTake(t, m, k, s.long())
	release(t, l)
	if err := l.Release(ctx(t)); err != nil {
		t.Fatalf("second Release = %v, want nil", err)
	}
	next := mustTake(t, p, k, s.long())
	if err := l.Release(ctx(t)); err != nil {
		t.Fatalf("third Release, with another holder = %v, want nil", err)
	}
	mustBeHeld(t, m, k)
	if err := l.Refresh(ctx(t), s.long()); !isErr(err, lock.ErrNotHeld) {
		t.Fatalf("Refresh after Release = %v, want ErrNotHeld", err)
	}
	release(t, next)
}

func (s *suite) testReleaseAfterExpiry(t *testing.T) {
	m, p, k, old := s.expiredHolder(t)
	if err := old.Release(ctx(t)); err != nil {
		t.Fatalf("Release after expiry = %v, want nil", err)
	}
	next := mustTake(t, p, k, s.long())
	if err := old.Release(ctx(t)); err != nil {
		t.Fatalf("Release after expiry, with another holder = %v, want nil", err)
	}
	mustBeHeld(t, m, k)
	release(t, next)
	mustBeFree(t, m, k)
}

func (s *suite) testBadKey(t *testing.T) {
	m := s.b.New(t)
	tooLong := key(t) + string(make([]byte, lock.MaxKeyLen))
	for _, k := range []string{"", tooLong} {
		l, ok, err := m.TryAcquire(ctx(t), k, s.long())
		if l != nil || ok || !isErr(err, lock.ErrInvalidKey) {
			t.Fatalf("TryAcquire(key of %d bytes) = %v, %v, %v; want ErrInvalidKey", len(k), l, ok, err)
		}
		if l, err := m.Acquire(ctx(t), k, s.long()); l != nil || !isErr(err, lock.ErrInvalidKey) {
			t.Fatalf("Acquire(key of %d bytes) = %v, %v; want ErrInvalidKey", len(k), l, err)
		}
	}
}

func (s *suite) testBadTTL(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	for _, ttl := range []time.Duration{
		0, -time.Second, time.Millisecond - time.Microsecond, s.b.MaxTTL + time.Millisecond,
	} {
		if l, ok, err := m.TryAcquire(ctx(t), k, ttl); l != nil || ok || !isErr(err, lock.ErrInvalidTTL) {
			t.Fatalf("TryAcquire(ttl %v) = %v, %v, %v; want ErrInvalidTTL", ttl, l, ok, err)
		}
		if l, err := m.Acquire(ctx(t), k, ttl); l != nil || !isErr(err, lock.ErrInvalidTTL) {
			t.Fatalf("Acquire(ttl %v) = %v, %v; want ErrInvalidTTL", ttl, l, err)
		}
		mustBeFree(t, m, k) // nothing was written
	}
	// A bad call on a held key changes nothing either.
	h := mustTake(t, m, k, s.long())
	if _, _, err := m.TryAcquire(ctx(t), k, 0); !isErr(err, lock.ErrInvalidTTL) {
		t.Fatalf("TryAcquire(ttl 0) on a held key = %v, want ErrInvalidTTL", err)
	}
	mustBeHeld(t, m, k)
	if err := h.Refresh(ctx(t), s.long()); err != nil {
		t.Fatalf("holder's Refresh after a bad TryAcquire = %v", err)
	}
	release(t, h)
}

// testTTLLimits: exactly lock.MinTTL and exactly MaxTTL are accepted.
func (s *suite) testTTLLimits(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	for _, ttl := range []time.Duration{s.b.MaxTTL, lock.MinTTL} {
		l, ok, err := m.TryAcquire(ctx(t), k, ttl)
		if err != nil || !ok {
			t.Fatalf("TryAcquire(ttl %v) = %v, %v, %v; want a lease", ttl, l, ok, err)
		}
		release(t, l)
	}
}

func (s *suite) testNilManager(t *testing.T) {
	m := s.b.Nil
	k := key(t)
	if l, ok, err := m.TryAcquire(ctx(t), k, s.long()); l != nil || ok || !isErr(err, lock.ErrClosed) {
		t.Fatalf("nil manager TryAcquire = %v, %v, %v; want ErrClosed", l, ok, err)
	}
	if l, err := m.Acquire(ctx(t), k, s.long()); l != nil || !isErr(err, lock.ErrClosed) {
		t.Fatalf("nil manager Acquire = %v, %v; want ErrClosed", l, err)
	}
}

// testNilContext: a nil context is bad input, reported with
// ErrInvalidArgument by every call that takes one, never a panic, and it
// leaves the key as it was.
func (s *suite) testNilContext(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	var nilCtx context.Context
	call := func(what string, f func() error) {
		t.Helper()
		var err error
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("%s with a nil context panicked: %v", what, r)
				}
			}()
			err = f()
		}()
		if !isErr(err, lock.ErrInvalidArgument) {
			t.Fatalf("%s with a nil context = %v, want ErrInvalidArgument", what, err)
		}
	}
	call("TryAcquire", func() error {
		l, ok, err := m.TryAcquire(nilCtx, k, s.long())
		if l != nil || ok {
			t.Errorf("TryAcquire with a nil context returned a lease")
		}
		return err
	})
	call("Acquire", func() error {
		l, err := m.Acquire(nilCtx, k, s.long())
		if l != nil {
			t.Errorf("Acquire with a nil context returned a lease")
		}
		return err
	})
	call("Run", func() error {
		return lock.Run(nilCtx, m, k, lock.RunOptions{},
			func(context.Context, lock.Lease) error { return nil })
	})
	call("Run with a nil fn", func() error {
		return lock.Run(ctx(t), m, k, lock.RunOptions{}, nil)
	})
	mustBeFree(t, m, k)
	l := mustTake(t, m, k, s.long())
	call("Refresh", func() error { return l.Refresh(nilCtx, s.long()) })
	call("Release", func() error { return l.Release(nilCtx) })
	mustBeHeld(t, m, k)
	release(t, l)
	mustBeFree(t, m, k)
}

// testNilLease: a nil lease of the backend's type holds nothing. Its Key is
// "", Fence 0, Refresh reports ErrNotHeld, Release is a no-op, and, if the
// backend's leases implement lock.Watcher, Lost returns a closed channel (a
// nil lease is lost from the start), so a select on it does not block.
func (s *suite) testNilLease(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	l := mustTake(t, m, k, s.long())
	defer release(t, l)
	nl, ok := reflect.Zero(reflect.TypeOf(l)).Interface().(lock.Lease)
	if !ok || reflect.TypeOf(l).Kind() != reflect.Pointer {
		t.Skipf("the backend's lease type %T is not a pointer; a nil lease cannot be made", l)
	}
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("calling a nil %T panicked: %v", l, r)
			}
		}()
		if nl.Key() != "" || nl.Fence() != 0 || nl.Token() != "" {
			t.Errorf("nil lease: Key %q, Fence %d, Token %q; want zero values",
				nl.Key(), nl.Fence(), nl.Token())
		}
		if err := nl.Refresh(ctx(t), s.long()); !isErr(err, lock.ErrNotHeld) {
			t.Errorf("nil lease Refresh = %v, want ErrNotHeld", err)
		}
		if err := nl.Release(ctx(t)); err != nil {
			t.Errorf("nil lease Release = %v, want nil", err)
		}
		if w, ok := nl.(lock.Watcher); ok {
			select {
			case <-w.Lost():
			default:
				t.Errorf("nil lease Lost() is not closed; the contract wants a closed channel")
			}
		}
	}()
	mustBeHeld(t, m, k)
}

func (s *suite) testClosedManager(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	l := mustTake(t, m, k, s.long())
	if err := s.b.Close(m); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := s.b.Close(m); err != nil {
		t.Fatalf("second Close = %v, want nil", err)
	}
	got, ok, err := m.TryAcquire(ctx(t), k+"2", s.long())
	if got != nil || ok || !isErr(err, lock.ErrClosed) {
		t.Fatalf("closed manager TryAcquire = %v, %v, %v; want ErrClosed", got, ok, err)
	}
	if got, err := m.Acquire(ctx(t), k+"2", s.long()); got != nil || !isErr(err, lock.ErrClosed) {
		t.Fatalf("closed manager Acquire = %v, %v; want ErrClosed", got, err)
	}
	if err := l.Refresh(ctx(t), s.long()); err == nil {
		t.Fatal("Refresh of a closed manager's lease = nil, want an error")
	}
	// Release may return nil or ErrClosed; it must not panic or hang.
	if err := l.Release(ctx(t)); err != nil && !isErr(err, lock.ErrClosed) {
		t.Fatalf("Release of a closed manager's lease = %v, want nil or ErrClosed", err)
	}
}

func (s *suite) testCloseWakesWaiters(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	mustTake(t, m, k, s.long())
	ch := acquireAsync(t, ctx(t), m, k, s.long())
	settle()
	if err := s.b.Close(m); err != nil {
		t.Fatalf("Close = %v", err)
	}
	r := await(t, ch, "after Close")
	if r.lease != nil || !isErr(r.err, lock.ErrClosed) {
		t.Fatalf("Acquire waiting across Close = %v, %v; want ErrClosed", r.lease, r.err)
	}
}

// testOddKeys: keys with braces, non-ASCII, invalid UTF-8, NUL bytes and
// 4 KiB length can be locked, and keys that differ only in those bytes are
// independent locks.
func (s *suite) testOddKeys(t *testing.T) {
	m := s.b.New(t)
	p := s.b.Peer(t, m)
	prefix := key(t)
	for _, pair := range oddKeyPairs(prefix) {
		a, b := pair[0], pair[1]
		la := mustTake(t, m, a, s.long())
		mustBeHeld(t, p, a)
		lb := mustTake(t, p, b, s.long()) // independent of a
		mustBeHeld(t, m, b)
		release(t, la)
		mustBeHeld(t, m, b) // releasing a did not free b
		mustBeFree(t, p, a)
		release(t, lb)
		mustBeFree(t, m, b)
	}
}

func (s *suite) testRunHolds(t *testing.T) {
	m := s.b.New(t)
	p := s.b.Peer(t, m)
	k := key(t)
	called := false
	opts := lock.RunOptions{TTL: 20 * s.b.Unit}
	err := lock.Run(ctx(t), m, k, opts, func(c context.Context, l lock.Lease) error {
		called = true
		if l.Key() != k {
			t.Errorf("lease.Key() = %q, want %q", l.Key(), k)
		}
		// No t.Fatal inside fn: it would skip Run's cleanup.
		if other, ok, err := p.TryAcquire(c, k, s.long()); err != nil || ok {
			t.Errorf("peer TryAcquire while Run holds the key = %v, %v, %v; "+
				"want nil, false, nil", other, ok, err)
			if ok {
				_ = other.Release(c)
			}
		}
		return c.Err()
	})
	if err != nil || !called {
		t.Fatalf("Run = %v (fn called: %v), want nil", err, called)
	}
	mustBeFree(t, p, k) // released after fn
}

func (s *suite) testRunFnError(t *testing.T) {
	m := s.b.New(t)
	k := key(t)
	boom := errors.New("boom")
	opts := lock.RunOptions{TTL: 20 * s.b.Unit}
	err := lock.Run(ctx(t), m, k, opts, func(context.Context, lock.Lease) error {
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want fn's error", err)
	}
	mustBeFree(t, m, k)
}

// testRunCancelsWhenLost: once another holder has the key, fn's context is
// cancelled with a cause wrapping ErrNotHeld, Run reports the loss, and its
// final Release leaves the new holder alone.
//
// The watchdog refreshes on real time, so a backend whose Advance sleeps
// would keep the lease alive through any Advance. Instead fn shortens its
// own lease to one Unit, advances past it and has a peer take the key,
// trying again should a watchdog refresh land in between. RefreshEvery is
// several Units, so that is rare.
func (s *suite) testRunCancelsWhenLost(t *testing.T) {
	m := s.b.New(t)
	p := s.b.Peer(t, m)
	k := key(t)
	opts := lock.RunOptions{TTL: 20 * s.b.Unit, RefreshEvery: 5 * s.b.Unit}
	wait := opts.RefreshEvery + 5*time.Second // the watchdog notices at its next refresh at the latest
	var taken lock.Lease
	err := lock.Run(ctx(t), m, k, opts, func(c context.Context, l lock.Lease) error {
		for range 10 {
			if err := l.Refresh(c, s.b.Unit); err != nil {
				t.Errorf("shortening Refresh = %v", err)
				return nil
			}
			s.expire(t, m)
			if nl, ok, err := p.TryAcquire(ctx(t), k, s.long()); err != nil {
				t.Errorf("peer TryAcquire = %v", err)
				return nil
			} else if ok {
				taken = nl
				break
			}
		}
		if taken == nil {
			t.Error("the peer never got the key after the lease was shortened and expired")
			return nil
		}
		select {
		case <-c.Done():
		case <-time.After(wait):
			t.Errorf("fn's context not cancelled within %v of losing the lease", wait)
			return nil
		}
		if cause := context.Cause(c); !errors.Is(cause, lock.ErrNotHeld) {
			t.Errorf("context.Cause = %v, want ErrNotHeld", cause)
		}
		return nil
	})
	if taken == nil {
		return
	}
	defer release(t, taken)
	if !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Run after losing the lease = %v, want ErrNotHeld", err)
	}
	mustBeHeld(t, m, k) // Run's final Release did not free the new holder
	if err := taken.Refresh(ctx(t), s.long()); err != nil {
		t.Fatalf("new holder's Refresh after Run = %v", err)
	}
}
