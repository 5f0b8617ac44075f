package lockredis_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/klauthed/lock"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
	"github.com/klauthed/lock/locktest"
	"github.com/redis/rueidis"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(childWaiterEnv) != "" {
		childWaiter() // a waiting process for line_test.go; never returns
	}
	goleak.VerifyTestMain(m,
		// rueidis's cluster client closes connections to nodes dropped from
		// its slot map in a goroutine that sleeps 5s first and does not
		// watch Client.Close; it ends on its own and is not ours.
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*clusterClient)._refresh.func2"),
		// It also schedules a slot-map refresh when a connection closes
		// (Close included), in a goroutine that sleeps a random delay (up to
		// about a second) first; miniredis answers CLUSTER SLOTS, so rueidis
		// drives it as a cluster too. It ends on its own.
		goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"),
	)
}

// newManager returns a Manager on addrs, closed in t.Cleanup.
func newManager(tb testing.TB, addrs []string, opts lockredis.Options) *lockredis.Manager {
	tb.Helper()
	opts.ClientOption.InitAddress = addrs
	m, err := lockredis.New(opts)
	if err != nil {
		tb.Fatalf("lockredis.New(%v) = %v", addrs, err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// ctxT returns a context for one call that ends with the test.
func ctxT(tb testing.TB) context.Context {
	tb.Helper()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return c
}

func redisBackend(addrs []string, opts lockredis.Options) locktest.Backend {
	return locktest.Backend{
		New: func(t *testing.T) lock.Manager { return newManager(t, addrs, opts) },
		Peer: func(t *testing.T, _ lock.Manager) lock.Manager {
			return newManager(t, addrs, opts)
		},
		Advance: func(_ *testing.T, _ lock.Manager, d time.Duration) { time.Sleep(d) },
		Close:   func(m lock.Manager) error { return m.(*lockredis.Manager).Close() },
		Nil:     (*lockredis.Manager)(nil),
		MaxTTL:  lock.MaxTTL,
		Unit:    100 * time.Millisecond,
	}
}

func TestConformance_Redis(t *testing.T) {
	s := redistest.Start(t)
	locktest.Run(t, redisBackend([]string{s.Addr}, lockredis.Options{}))
}

// TestConformance_RedisNoCache runs the suite with client-side caching off,
// so waiting falls back to local hand-off plus bounded backoff.
func TestConformance_RedisNoCache(t *testing.T) {
	s := redistest.Start(t)
	locktest.Run(t, redisBackend([]string{s.Addr}, lockredis.Options{
		ClientOption: rueidis.ClientOption{DisableCache: true},
	}))
}

func TestConformance_Cluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	locktest.Run(t, redisBackend(c.Addrs, lockredis.Options{}))
}

func TestConformance_Miniredis(t *testing.T) {
	mr := miniredis.RunT(t)
	opts := lockredis.Options{ClientOption: rueidis.ClientOption{DisableCache: true}}
	b := redisBackend([]string{mr.Addr()}, opts)
	b.Advance = func(_ *testing.T, _ lock.Manager, d time.Duration) { mr.FastForward(d) }
	locktest.Run(t, b)
}
