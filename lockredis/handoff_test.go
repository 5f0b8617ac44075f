package lockredis_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/gen"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
)

// TestHandoff_waiterHoldsWhenReleaseReturns: a Release with a waiter of the
// same Manager sends that waiter's acquire in the same round trip, so the
// waiter holds the key (with the next fence) by the time Release returns,
// without a round trip of its own.
func TestHandoff_waiterHoldsWhenReleaseReturns(t *testing.T) {
	s := redistest.Start(t)
	m := newManager(t, []string{s.Addr}, lockredis.Options{})
	c := ctxT(t)
	const key = "handoff"
	// Load the scripts first: on a fresh server the first EVALSHA of the
	// release meets NOSCRIPT, and the hand-off then falls back to a wake.
	if err := take(t, m, "warm-up", time.Minute).Release(c); err != nil {
		t.Fatal(err)
	}
	h := take(t, m, key, time.Minute)
	got := make(chan lock.Lease, 1)
	go func() {
		l, err := m.Acquire(c, key, time.Minute)
		if err != nil {
			t.Errorf("waiter Acquire = %v", err)
		}
		got <- l
	}()
	time.Sleep(100 * time.Millisecond) // the waiter has queued by now
	if err := h.Release(c); err != nil {
		t.Fatalf("Release = %v", err)
	}
	// The waiter's acquire already ran on the server: Redis shows its token
	// right after Release returned, before the waiter's goroutine had any
	// chance to send a request of its own.
	in, err := gen.Inspect(c, m.Client(), lockredis.LockKey(lockredis.DefaultPrefix, key))
	if err != nil || !in.Held {
		t.Fatalf("right after Release, Inspect = %+v, %v; want held by the waiter", in, err)
	}
	var l lock.Lease
	select {
	case l = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("waiter not done within 5s of the release")
	}
	if l == nil {
		t.FailNow()
	}
	if in.Token != string(l.Token()) {
		t.Fatalf("holder right after Release = %q, want the waiter's token %q", in.Token, l.Token())
	}
	for name, x := range map[string]lock.Lease{"TryAcquire": h, "hand-off": l} {
		if sent := x.(lock.Stamped).Sent(); sent.IsZero() || sent.After(time.Now()) {
			t.Errorf("%s lease: Sent() = %v, want the time its acquire was sent", name, sent)
		}
	}
	if l.Fence() != h.Fence()+1 {
		t.Errorf("waiter's fence = %d, want %d", l.Fence(), h.Fence()+1)
	}
	if err := l.Release(c); err != nil {
		t.Fatal(err)
	}
}

// TestHandoff_waiterCancelledDuringHandoff: a waiter whose context ends
// while a releaser is running its acquire in a hand-off gets
// ErrNotAcquired, and the lock the hand-off won for it is released, not
// left to its TTL. Redis is stopped (SIGSTOP) while the hand-off is in
// flight, so the cancellation lands in the middle of it.
func TestHandoff_waiterCancelledDuringHandoff(t *testing.T) {
	s := redistest.Start(t)
	m := newManager(t, []string{s.Addr}, lockredis.Options{})
	c := ctxT(t)
	const key = "handoff-cancel"
	if err := take(t, m, "warm-up", time.Minute).Release(c); err != nil {
		t.Fatal(err) // loads the scripts; see TestHandoff_waiterHoldsWhenReleaseReturns
	}
	h := take(t, m, key, time.Minute)

	wctx, cancel := context.WithCancel(c)
	defer cancel()
	got := make(chan error, 1)
	go func() {
		l, err := m.Acquire(wctx, key, time.Minute)
		if err == nil {
			err = errors.New("waiter acquired")
			_ = l.Release(c)
		}
		got <- err
	}()
	time.Sleep(100 * time.Millisecond) // queued

	resume := pause(t, s)
	released := make(chan error, 1)
	go func() { released <- h.Release(c) }()
	time.Sleep(100 * time.Millisecond) // the hand-off is in flight
	cancel()
	time.Sleep(100 * time.Millisecond) // the waiter is in abandon, waiting for it
	resume()

	select {
	case err := <-released:
		if err != nil {
			t.Fatalf("Release = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Release did not return within 5s of Redis resuming")
	}
	select {
	case err := <-got:
		if !errors.Is(err, lock.ErrNotAcquired) || !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled waiter's Acquire = %v, want ErrNotAcquired and context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled waiter did not return within 5s")
	}
	in, err := gen.Inspect(c, m.Client(), lockredis.LockKey(lockredis.DefaultPrefix, key))
	if err != nil || in.Held {
		t.Fatalf("after the cancelled hand-off, Inspect = %+v, %v; want the key free", in, err)
	}
}
