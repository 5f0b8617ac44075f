package lockredis_test

import (
	"context"
	"fmt"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
)

// Example takes a lock on a local redis-server (started by exampleManager
// the way the tests start one), shows that a second attempt meets contention
// rather than an error, and that the next holder gets a larger fence.
func Example() {
	m, stop, err := exampleManager()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	ctx := context.Background()

	first, ok, err := m.TryAcquire(ctx, "orders:42", 10*time.Second)
	fmt.Println("first:", ok, err, first.Fence())

	_, ok, err = m.TryAcquire(ctx, "orders:42", 10*time.Second)
	fmt.Println("second while held:", ok, err)

	if err := first.Release(ctx); err != nil {
		fmt.Println(err)
		return
	}
	next, err := m.Acquire(ctx, "orders:42", 10*time.Second)
	fmt.Println("next:", err, next.Fence())
	fmt.Println("release twice:", next.Release(ctx), next.Release(ctx))
	// Output:
	// first: true <nil> 1
	// second while held: false <nil>
	// next: <nil> 2
	// release twice: <nil> <nil>
}

// Example_run holds a lock while a function runs, with the lease refreshed
// in the background and the function's context cancelled if it is lost.
func Example_run() {
	m, stop, err := exampleManager()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()

	opts := lock.RunOptions{TTL: 5 * time.Second}
	err = lock.Run(context.Background(), m, "reports:daily", opts,
		func(ctx context.Context, l lock.Lease) error {
			fmt.Println("holding", l.Key(), "with fence", l.Fence())
			return nil
		})
	fmt.Println("done:", err)
	// Output:
	// holding reports:daily with fence 1
	// done: <nil>
}

// exampleManager starts a local redis-server the way the tests do and
// returns a Manager on it and a stop function that closes the Manager, then
// the server. On error nothing is left running.
func exampleManager() (m *lockredis.Manager, stop func(), err error) {
	srv, err := redistest.StartServer()
	if err != nil {
		return nil, nil, err
	}
	m, err = lockredis.New(lockredis.Options{
		ClientOption: rueidis.ClientOption{InitAddress: []string{srv.Addr}},
	})
	if err != nil {
		srv.Close()
		return nil, nil, err
	}
	return m, func() { m.Close(); srv.Close() }, nil
}
