package lockmem_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockmem"
)

// The basic cycle: take a key, find it held, release it.
func Example() {
	ctx := context.Background()
	m := lockmem.New(lockmem.Options{})
	defer m.Close()

	lease, ok, err := m.TryAcquire(ctx, "invoice:42", 10*time.Second)
	fmt.Println("first:", ok, err)

	_, ok, err = m.TryAcquire(ctx, "invoice:42", 10*time.Second)
	fmt.Println("while held:", ok, err)

	fmt.Println("release:", lease.Release(ctx))
	_, ok, _ = m.TryAcquire(ctx, "invoice:42", 10*time.Second)
	fmt.Println("after release:", ok)
	// Output:
	// first: true <nil>
	// while held: false <nil>
	// release: <nil>
	// after release: true
}

// Acquire waits for the holder; on a FakeClock, advancing past the holder's
// TTL hands the key to the waiter, and the expired holder can neither refresh
// nor release the new holder's lease.
func ExampleManager_Acquire() {
	ctx := context.Background()
	clock := lockmem.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	m := lockmem.New(lockmem.Options{Clock: clock})
	defer m.Close()

	holder, _, _ := m.TryAcquire(ctx, "job", time.Minute)

	got := make(chan lock.Lease)
	go func() {
		lease, err := m.Acquire(ctx, "job", time.Minute)
		if err != nil {
			panic(err)
		}
		got <- lease
	}()

	time.Sleep(10 * time.Millisecond) // let the waiter queue up
	clock.Advance(time.Minute)        // the holder's TTL passes
	waiter := <-got
	fmt.Println("waiter fence > holder fence:", waiter.Fence() > holder.Fence())

	err := holder.Refresh(ctx, time.Minute)
	fmt.Println("stale refresh:", errors.Is(err, lock.ErrNotHeld))
	fmt.Println("stale release:", holder.Release(ctx))
	_, ok, _ := m.TryAcquire(ctx, "job", time.Minute)
	fmt.Println("still held by the waiter:", !ok)
	// Output:
	// waiter fence > holder fence: true
	// stale refresh: true
	// stale release: <nil>
	// still held by the waiter: true
}

// Fences only grow, across releases and expiries, so storage can reject a
// write from a holder that has been replaced.
func ExampleLease_Fence() {
	ctx := context.Background()
	clock := lockmem.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	m := lockmem.New(lockmem.Options{Clock: clock})
	defer m.Close()

	var fences []uint64
	a, _, _ := m.TryAcquire(ctx, "ledger", time.Second)
	fences = append(fences, a.Fence())
	_ = a.Release(ctx)

	b, _, _ := m.TryAcquire(ctx, "ledger", time.Second)
	fences = append(fences, b.Fence())
	clock.Advance(2 * time.Second) // b expires without a release

	c, _, _ := m.TryAcquire(ctx, "ledger", time.Second)
	fences = append(fences, c.Fence())

	fmt.Println(fences[0] < fences[1], fences[1] < fences[2])
	// Output: true true
}

// lock.Run holds the key while the function runs, refreshing it in the
// background, and releases it afterwards.
func ExampleManager_run() {
	ctx := context.Background()
	m := lockmem.New(lockmem.Options{})
	defer m.Close()

	err := lock.Run(ctx, m, "report", lock.RunOptions{TTL: 30 * time.Second},
		func(ctx context.Context, lease lock.Lease) error {
			_, ok, _ := m.TryAcquire(ctx, "report", time.Second)
			fmt.Println("held by Run:", !ok)
			return nil
		})
	fmt.Println("Run:", err)

	_, ok, _ := m.TryAcquire(ctx, "report", time.Second)
	fmt.Println("free afterwards:", ok)
	// Output:
	// held by Run: true
	// Run: <nil>
	// free afterwards: true
}
