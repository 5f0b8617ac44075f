package lockredis_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
)

// TestLost_stoppingAWatchDoesNotFailOtherCalls: lock.Run starts a lease
// watch (Lost) and its Release stops it while the watch's first inspect may
// still be in flight. Stopping must not cancel that request: rueidis can
// answer a cancelled request by dropping the shared connection or by failing
// the dial that the next caller waits on, which made the next TryAcquire on
// the same Manager fail with "context canceled" (seen in the conformance
// suite, about 1 in 40 fresh Managers).
func TestLost_stoppingAWatchDoesNotFailOtherCalls(t *testing.T) {
	s := redistest.Start(t)
	boom := errors.New("boom")
	for i := range 200 {
		m, err := lockredis.New(lockredis.Options{
			ClientOption: rueidis.ClientOption{InitAddress: []string{s.Addr}},
		})
		if err != nil {
			t.Fatal(err)
		}
		k := fmt.Sprintf("watch-stop-%d", i)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		fn := func(context.Context, lock.Lease) error { return boom }
		err = lock.Run(ctx, m, k, lock.RunOptions{TTL: 2 * time.Second}, fn)
		if !errors.Is(err, boom) {
			t.Errorf("round %d: Run = %v, want fn's error", i, err)
		}
		l, ok, err := m.TryAcquire(ctx, k, time.Second)
		if err != nil || !ok {
			t.Errorf("round %d: TryAcquire right after Run = %v, %v; want a lease", i, ok, err)
		} else if err := l.Release(ctx); err != nil {
			t.Errorf("round %d: Release = %v", i, err)
		}
		cancel()
		m.Close()
	}
}
