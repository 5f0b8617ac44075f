package lockmem_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockmem"
)

// BenchmarkTryAcquireRelease measures one uncontended TryAcquire+Release on
// the system clock: one key, then one key per goroutine in parallel (keys
// spread over the shards, so this shows how it scales across cores).
func BenchmarkTryAcquireRelease(b *testing.B) {
	ctx := context.Background()
	b.Run("single", func(b *testing.B) {
		m := lockmem.New(lockmem.Options{})
		defer m.Close()
		b.ReportAllocs()
		for b.Loop() {
			benchCycle(b, ctx, m, "bench-key")
		}
	})
	b.Run("parallel", func(b *testing.B) {
		m := lockmem.New(lockmem.Options{})
		defer m.Close()
		var next atomic.Int64
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			key := "bench-key-" + strconv.FormatInt(next.Add(1), 10)
			for pb.Next() {
				benchCycle(b, ctx, m, key)
			}
		})
	})
	b.Run("floor", func(b *testing.B) {
		// Not lockmem: the least any design of this shape pays per cycle on
		// this machine (a clock read, one 80-byte allocation, a mutex-guarded
		// map lookup, insert and delete), to read the figures above against.
		var mu sync.Mutex
		keys := map[string]*floorLease{}
		epoch := time.Now()
		key := "bench-key"
		b.ReportAllocs()
		for b.Loop() {
			mu.Lock()
			if keys[key] == nil {
				keys[key] = &floorLease{key: key, expires: int64(time.Since(epoch) + time.Minute)}
			}
			mu.Unlock()
			mu.Lock()
			delete(keys, key)
			mu.Unlock()
		}
	})
	b.Run("parallel_same_key", func(b *testing.B) {
		// Contended: TryAcquire mostly fails; shows the cost of one hot
		// shard, not a use anyone should copy.
		m := lockmem.New(lockmem.Options{})
		defer m.Close()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l, ok, err := m.TryAcquire(ctx, "hot", time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				if ok {
					_ = l.Release(ctx)
				}
			}
		})
	})
}

// floorLease has the size and pointer count of a *Lease.
type floorLease struct {
	key     string
	expires int64
	_       [7]*int
}

func benchCycle(b *testing.B, ctx context.Context, m lock.Manager, key string) {
	l, ok, err := m.TryAcquire(ctx, key, time.Minute)
	if err != nil || !ok {
		b.Fatalf("TryAcquire = %v, %v", ok, err)
	}
	if err := l.Release(ctx); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkAcquireHandOff measures a contended hand-off: two goroutines
// take turns on one key with Acquire, each release waking the other.
func BenchmarkAcquireHandOff(b *testing.B) {
	ctx := context.Background()
	m := lockmem.New(lockmem.Options{})
	defer m.Close()
	b.ReportAllocs()
	b.SetParallelism(1)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l, err := m.Acquire(ctx, "handoff", time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			_ = l.Release(ctx)
		}
	})
}

// BenchmarkToken measures the first Token call on a lease, which reads
// crypto/rand; lockmem defers this cost until a token is asked for.
func BenchmarkToken(b *testing.B) {
	ctx := context.Background()
	m := lockmem.New(lockmem.Options{})
	defer m.Close()
	b.ReportAllocs()
	for b.Loop() {
		l, _, _ := m.TryAcquire(ctx, "tok", time.Minute)
		_ = l.Token()
		_ = l.Release(ctx)
	}
}
