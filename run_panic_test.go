package lock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockmem"
	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
	"go.uber.org/goleak"
)

// panicValue is what the function passed to Run panics with; the caller
// must recover this very value.
type panicValue struct{ msg string }

// runPanicking calls lock.Run with an fn that records its lease and panics,
// and returns the value the caller recovers.
func runPanicking(ctx context.Context, m lock.Manager, key string, opts lock.RunOptions,
	want *panicValue, lease *lock.Lease) (recovered any) {
	defer func() { recovered = recover() }()
	err := lock.Run(ctx, m, key, opts, func(_ context.Context, l lock.Lease) error {
		*lease = l
		panic(want)
	})
	return err // not reached when fn panics through Run
}

// testRunPanic checks that when fn panics inside lock.Run, the panic reaches
// the caller unchanged, the lease is released before it does (other can take
// the key at once), the watchdog stops refreshing, and no goroutine of
// Run's is left. m and other must be warmed up (connections open, scripts
// loaded) so that the goroutine snapshot holds every long-lived goroutine.
// check, if set, inspects the backend right after the panic.
func testRunPanic(t *testing.T, m, other lock.Manager, key string,
	check func(t *testing.T, l lock.Lease)) {
	t.Helper()
	// Warm up with a run that does not panic: a lease watch, refreshes
	// and the final release have all been used once.
	opts := lock.RunOptions{TTL: time.Second, RefreshEvery: 50 * time.Millisecond}
	if err := lock.Run(context.Background(), m, key+"-warm", opts,
		func(context.Context, lock.Lease) error {
			time.Sleep(120 * time.Millisecond)
			return nil
		}); err != nil {
		t.Fatalf("warm-up Run = %v", err)
	}
	if l, ok, err := other.TryAcquire(context.Background(), key+"-warm", time.Second); err != nil ||
		!ok {
		t.Fatalf("warm-up TryAcquire on the other Manager = %v, %v", ok, err)
	} else if err := l.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	snapshot := goleak.IgnoreCurrent()

	// Cancelled in cleanup (before the Managers close): that stops a
	// watchdog left running by a Run that did not stop it.
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	want := &panicValue{"boom"}
	var lease lock.Lease
	got := runPanicking(ctx, m, key, opts, want, &lease)
	if got != want {
		t.Fatalf("recovered %#v from Run, want fn's panic value %#v", got, want)
	}
	if lease == nil {
		t.Fatal("fn was not called")
	}

	if check != nil {
		check(t, lease)
	}
	// The key is free at once: Run released it before the panic went on.
	l, ok, err := other.TryAcquire(context.Background(), key, time.Second)
	switch {
	case err != nil:
		t.Errorf("TryAcquire right after the panic = %v", err)
	case !ok:
		t.Errorf("TryAcquire right after the panic: key still held by the panicked run")
	default:
		if err := l.Release(context.Background()); err != nil {
			t.Errorf("Release = %v", err)
		}
	}
	// Still free after several refresh periods: nothing keeps refreshing it.
	time.Sleep(4 * opts.RefreshEvery)
	if err := lease.Refresh(context.Background(), time.Second); !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Refresh of the panicked run's lease = %v, want ErrNotHeld (released)", err)
	}
	// rueidis starts a connection's reader and writer lazily (the
	// Manager's Pub/Sub connection may come up during the test): they
	// belong to the client, which the test's cleanup closes, not to Run.
	goleak.VerifyNone(t, snapshot,
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*pipe)._background"),
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*pipe)._backgroundRead"),
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*pipe)._backgroundWrite"))
}

// TestRun_panicReleasesAndStops_lockredis: a panicking fn inside lock.Run on
// a Redis Manager, recovered by the caller, leaves no lock behind (GET and
// PTTL show the key gone) and no watchdog refreshing it. Before the fix the
// lock stayed held for as long as the process lived.
func TestRun_panicReleasesAndStops_lockredis(t *testing.T) {
	s := redistest.Start(t)
	newM := func() *lockredis.Manager {
		t.Helper()
		m, err := lockredis.New(lockredis.Options{
			ClientOption: rueidis.ClientOption{InitAddress: []string{s.Addr}},
		})
		if err != nil {
			t.Fatalf("lockredis.New = %v", err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	m, other := newM(), newM()
	const key = "regress-run-panic"
	testRunPanic(t, m, other, key, func(t *testing.T, l lock.Lease) {
		t.Helper()
		lk := lockredis.LockKey(lockredis.DefaultPrefix, key)
		if v := s.Cli(t, "GET", lk); v == string(l.Token()) {
			t.Errorf("GET %s = the panicked run's token %q, want the key gone", lk, v)
		}
		if pttl := s.Cli(t, "PTTL", lk); pttl != "-2" {
			t.Errorf("PTTL %s = %s right after the panic, want -2 (no key)", lk, pttl)
		}
	})
}

// TestRun_panicReleasesAndStops_lockmem: the same on the in-process backend;
// Run's duty to release on a panic does not depend on the backend.
func TestRun_panicReleasesAndStops_lockmem(t *testing.T) {
	m := lockmem.New(lockmem.Options{})
	t.Cleanup(func() { m.Close() })
	testRunPanic(t, m, m, "regress-run-panic", nil)
}
