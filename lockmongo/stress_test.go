package lockmongo_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockmongo"
	"github.com/klauthed/lock/lockmongo/internal/ferrettest"
)

// TestStress_fourManagers_oneKey_noOverlapAndFencesGrow: four Managers, each
// with a client of its own (four processes), and several goroutines on each
// take one key in turns with Acquire and TryAcquire for a few seconds. A
// shared count of holders must never exceed one, and each holder's fence
// must be above the one before it (they are recorded in holding order,
// under the lock). Short TTLs make some leases expire while held, so that
// takeovers after expiry race with refreshes and releases too. A holder
// that left after its lease's local end is not held to exclusion: the
// overlaps must not outnumber such holders (and are zero in practice).
func TestStress_fourManagers_oneKey_noOverlapAndFencesGrow(t *testing.T) {
	const managers, goroutines = 4, 4
	run := 3 * time.Second
	if testing.Short() {
		run = time.Second
	}
	srv := ferrettest.Start(t)
	name := collName()
	var ms []*lockmongo.Manager
	for range managers {
		ms = append(ms, newManager(t, srv.Client(t).Database("lockmongo_test").Collection(name),
			gcOpts))
	}
	const key = "stress"
	var (
		inside    atomic.Int32
		overlaps  atomic.Int32
		backwards atomic.Int32
		lastFence atomic.Uint64
		acquired  atomic.Int64
		expired   atomic.Int64
		overstays atomic.Int32
		wg        sync.WaitGroup
	)
	stop := time.Now().Add(run)
	for i, m := range ms {
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(stop) {
					ttl := 200 * time.Millisecond
					if g == 0 {
						ttl = 5 * time.Millisecond // expires while held, sometimes
					}
					var l lock.Lease
					if (i+g)%3 == 0 {
						var ok bool
						var err error
						l, ok, err = m.TryAcquire(ctxT(t), key, ttl)
						if err != nil {
							t.Errorf("TryAcquire = %v", err)
							return
						}
						if !ok {
							time.Sleep(time.Millisecond)
							continue
						}
					} else {
						c, cancel := context.WithTimeout(ctxT(t), time.Second)
						var err error
						l, err = m.Acquire(c, key, ttl)
						cancel()
						if err != nil {
							continue // a deadline under contention is fine
						}
					}
					acquired.Add(1)
					if inside.Add(1) != 1 {
						overlaps.Add(1)
					}
					if f := l.Fence(); f <= lastFence.Load() {
						backwards.Add(1)
					} else {
						lastFence.Store(f)
					}
					time.Sleep(time.Millisecond)
					if g == 0 {
						// Races with takeovers once the short TTL is out.
						if err := l.Refresh(ctxT(t), ttl); errors.Is(err, lock.ErrNotHeld) {
							expired.Add(1)
						} else if err != nil {
							t.Errorf("Refresh = %v", err)
						}
					}
					inside.Add(-1)
					// A holder that left after its lease's end (the local
					// bound: the winning request's send time plus ttl) may
					// have met the next holder legitimately.
					if time.Since(l.(lock.Stamped).Sent()) >= ttl {
						overstays.Add(1)
					}
					if err := l.Release(context.Background()); err != nil {
						t.Errorf("Release = %v", err)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	t.Logf("%d acquisitions on %d Managers x %d goroutines in %v; %d refreshes found the "+
		"lease ended, %d holders stayed past their TTL, %d overlaps", acquired.Load(), managers,
		goroutines, run, expired.Load(), overstays.Load(), overlaps.Load())
	if n, o := overlaps.Load(), overstays.Load(); n > o {
		t.Errorf("%d times a holder found another holder inside; only %d stayed past their TTL", n, o)
	}
	if n := backwards.Load(); n > 0 {
		t.Errorf("%d times a fence was not above the previous holder's", n)
	}
	if acquired.Load() < 20 {
		t.Errorf("only %d acquisitions in %v", acquired.Load(), run)
	}
}

// TestStaleHolder_refreshAfterTakeover_doesNotExtend: a holder whose lease
// ended and was taken over gets ErrNotHeld from Refresh and the new
// holder's fence is above it; the old document is marked released.
func TestStaleHolder_refreshAfterTakeover_doesNotExtend(t *testing.T) {
	a, b, _ := twoManagers(t)
	const key = "takeover"
	old := mustTake(t, a, key, 50*time.Millisecond)
	time.Sleep(80 * time.Millisecond)
	cur := mustTake(t, b, key, time.Minute)
	if cur.Fence() <= old.Fence() {
		t.Fatalf("fence after takeover = %d, want > %d", cur.Fence(), old.Fence())
	}
	for range 2 {
		if err := old.Refresh(ctxT(t), time.Minute); !errors.Is(err, lock.ErrNotHeld) {
			t.Fatalf("stale Refresh = %v, want ErrNotHeld", err)
		}
	}
	mustBeHeld(t, a, key)
	if err := cur.Refresh(ctxT(t), time.Minute); err != nil {
		t.Fatalf("holder's Refresh = %v", err)
	}
	if err := cur.Release(ctxT(t)); err != nil {
		t.Fatalf("Release = %v", err)
	}
}

// TestLine_deadWaiter_lineMovesOnAfterLineTTL: a waiter whose Manager
// stopped (Close, as a dead process) without leaving the line holds it up
// for at most LineTTL; then a TryAcquire of another Manager gets the key.
func TestLine_deadWaiter_lineMovesOnAfterLineTTL(t *testing.T) {
	srv := ferrettest.Start(t)
	name := collName()
	opts := lockmongo.Options{LineTTL: 300 * time.Millisecond, CleanupTimeout: -1}
	mk := func() *lockmongo.Manager {
		return newManager(t, srv.Client(t).Database("lockmongo_test").Collection(name), opts)
	}
	a, dead, c := mk(), mk(), mk()
	const key = "line"
	h := mustTake(t, a, key, time.Minute)
	errc := make(chan error, 1)
	go func() {
		_, err := dead.Acquire(ctxT(t), key, time.Minute)
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond) // the waiter took its ticket
	if err := dead.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := <-errc; !errors.Is(err, lock.ErrClosed) {
		t.Fatalf("Acquire across Close = %v, want ErrClosed", err)
	}
	if err := h.Release(ctxT(t)); err != nil {
		t.Fatalf("Release = %v", err)
	}
	mustBeHeld(t, c, key) // the dead waiter's ticket is still alive
	time.Sleep(opts.LineTTL + 50*time.Millisecond)
	l := mustTake(t, c, key, time.Minute)
	if l.Fence() <= h.Fence() {
		t.Fatalf("fence = %d, want > %d", l.Fence(), h.Fence())
	}
	if err := l.Release(ctxT(t)); err != nil {
		t.Fatalf("Release = %v", err)
	}
}

// TestCollectGarbage_deletesOldAcquisitionsKeepsLatest: with FreeAfter 1s,
// a pass deletes the acquisitions whose successor is older than that and
// the served tickets, keeps the latest and the meta document, and fences
// keep growing from where they were, on every Manager.
func TestCollectGarbage_deletesOldAcquisitionsKeepsLatest(t *testing.T) {
	srv := ferrettest.Start(t)
	name := collName()
	opts := lockmongo.Options{FreeAfter: time.Second, GCInterval: -1}
	a := newManager(t, srv.Client(t).Database("lockmongo_test").Collection(name), opts)
	b := newManager(t, srv.Client(t).Database("lockmongo_test").Collection(name), opts)
	coll := srv.Client(t).Database("lockmongo_test").Collection(name)
	const key = "gc"
	var last uint64
	for i := range 10 {
		m := a
		if i%2 == 1 {
			m = b
		}
		l := mustTake(t, m, key, time.Minute)
		if l.Fence() <= last {
			t.Fatalf("fence %d, want > %d", l.Fence(), last)
		}
		last = l.Fence()
		if err := l.Release(ctxT(t)); err != nil {
			t.Fatalf("Release = %v", err)
		}
	}
	if n, err := a.CollectGarbage(ctxT(t)); err != nil || n != 0 {
		t.Fatalf("CollectGarbage right away = %d, %v; want 0, nil", n, err)
	}
	time.Sleep(1100 * time.Millisecond)
	n, err := a.CollectGarbage(ctxT(t))
	if err != nil || n != 9 {
		t.Fatalf("CollectGarbage = %d, %v; want 9 (all but the latest), nil", n, err)
	}
	docs := keyDocs(t, coll, key)
	if len(docs) != 2 {
		t.Fatalf("documents after GC: %v; want the meta document and the latest", docs)
	}
	// a remembers a number that is gone now, b too; both go on above it.
	for _, m := range []*lockmongo.Manager{b, a} {
		l := mustTake(t, m, key, time.Minute)
		if l.Fence() <= last {
			t.Fatalf("fence after GC %d, want > %d", l.Fence(), last)
		}
		last = l.Fence()
		if err := l.Release(ctxT(t)); err != nil {
			t.Fatalf("Release = %v", err)
		}
	}
	// A Manager that never saw the key starts from the meta document.
	c := newManager(t, srv.Client(t).Database("lockmongo_test").Collection(name), opts)
	l := mustTake(t, c, key, time.Minute)
	if l.Fence() <= last {
		t.Fatalf("fence on a new Manager %d, want > %d", l.Fence(), last)
	}
	if err := l.Release(ctxT(t)); err != nil {
		t.Fatalf("Release = %v", err)
	}
	var nilM *lockmongo.Manager
	if _, err := nilM.CollectGarbage(ctxT(t)); !errors.Is(err, lock.ErrClosed) {
		t.Fatalf("nil Manager CollectGarbage = %v, want ErrClosed", err)
	}
	var nilCtx context.Context
	if _, err := a.CollectGarbage(nilCtx); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Fatalf("CollectGarbage(nil ctx) = %v, want ErrInvalidArgument", err)
	}
}
