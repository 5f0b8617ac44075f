package lockredis_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
)

// rawRelease is the raw floor's compare-and-delete.
var rawRelease = rueidis.NewLuaScript(
	`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

// BenchmarkUncontended: acquire+release pairs, 50 goroutines on 2 procs
// (SetParallelism(25) at GOMAXPROCS 2), each on keys of its own. "raw" is
// the floor: one SET NX PX and one compare-and-delete EVALSHA on a rueidis
// client built the same way as lockredis's (same options, same
// invalidation hook installed, so the same connection mode).
func BenchmarkUncontended(b *testing.B) {
	s := redistest.Start(b)
	m := newManager(b, []string{s.Addr}, lockredis.Options{})
	ctx := context.Background()
	var ids atomic.Int64

	b.Run("raw", func(b *testing.B) {
		c := m.Client() // the same kind of client: lockredis built it
		b.ReportAllocs()
		b.SetParallelism(25)
		b.RunParallel(func(pb *testing.PB) {
			key := "raw:" + strconv.FormatInt(ids.Add(1), 10)
			for pb.Next() {
				token := string(lock.NewToken())
				set := c.B().Set().Key(key).Value(token).Nx().PxMilliseconds(10000).Build()
				ok, err := c.Do(ctx, set).AsBool()
				if err != nil || !ok {
					b.Fatalf("SET NX = %v, %v", ok, err)
				}
				n, err := rawRelease.Exec(ctx, c, []string{key}, []string{token}).AsInt64()
				if err != nil || n != 1 {
					b.Fatalf("release = %v, %v", n, err)
				}
			}
		})
	})
	b.Run("lockredis", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(25)
		b.RunParallel(func(pb *testing.PB) {
			key := "lr:" + strconv.FormatInt(ids.Add(1), 10)
			for pb.Next() {
				l, ok, err := m.TryAcquire(ctx, key, 10*time.Second)
				if err != nil || !ok {
					b.Fatalf("TryAcquire = %v, %v", ok, err)
				}
				if err := l.Release(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("lockredis-Acquire", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(25)
		b.RunParallel(func(pb *testing.PB) {
			key := "lra:" + strconv.FormatInt(ids.Add(1), 10)
			for pb.Next() {
				l, err := m.Acquire(ctx, key, 10*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				if err := l.Release(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// BenchmarkContended: 8 goroutines of one Manager on one key, holding it
// for a few microseconds each time. ns/op is per acquisition; cmds/acq is
// the commands clients sent per acquisition (MONITOR-free: read from INFO
// commandstats as script calls plus the cache wrapper's commands); gap-us
// is the median time from a Release returning to the next Acquire
// returning (the hand-off), when the next holder was already waiting.
func BenchmarkContended(b *testing.B) {
	s := redistest.Start(b)
	m := newManager(b, []string{s.Addr}, lockredis.Options{})
	ctx := context.Background()
	if err := take(b, m, "warm", time.Minute).Release(ctx); err != nil {
		b.Fatal(err)
	}
	s.Cli(b, "CONFIG", "RESETSTAT")
	const goroutines = 8
	var (
		n        atomic.Int64
		mu       sync.Mutex
		released time.Time // when the last Release returned
		gaps     []time.Duration
	)
	b.ResetTimer()
	var wg sync.WaitGroup
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n.Add(1) <= int64(b.N) {
				l, err := m.Acquire(ctx, "contended", 10*time.Second)
				if err != nil {
					b.Error(err)
					return
				}
				now := time.Now()
				mu.Lock()
				if !released.IsZero() {
					gaps = append(gaps, now.Sub(released))
				}
				mu.Unlock()
				busy(2 * time.Microsecond)
				err = l.Release(ctx)
				mu.Lock()
				released = time.Now()
				mu.Unlock()
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	stats := commandStats(b, s)
	sent := stats["evalsha"] + stats["evalsha_ro"] + stats["eval"] + stats["eval_ro"] +
		// one top-level PTTL per MULTI:
		stats["multi"] + stats["exec"] + stats["client|caching"] + stats["multi"]
	b.ReportMetric(float64(sent)/float64(b.N), "cmds/acq")
	if len(gaps) > 0 {
		sortDurations(gaps)
		b.ReportMetric(float64(gaps[len(gaps)/2].Nanoseconds())/1e3, "gap-us")
	}
}

func busy(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
	}
}
