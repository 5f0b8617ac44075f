package bench

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/klauthed/lock/bench/harness"
	"github.com/klauthed/lock/internal/redistest"
)

// BenchmarkLock runs every scenario for every backend, the same harness
// cmd/lockbench uses, one b.Run per scenario and backend, so benchstat can
// compare runs:
//
//	go test -run '^$' -bench . -count 6 | tee new.txt && benchstat old.txt new.txt
//
// ns/op is wall time per acquire+release pair (uncontended, 50 goroutines)
// or per acquisition (contended, 8 waiters, 100µs hold; contended-clients,
// the same with a backend per waiter, Redis backends only; contended-procs,
// which needs waiter processes, is lockbench's only). Extra metrics:
// p50-ns and p99-ns (pair latency or wait), handoff-p50-ns and
// handoff-p99-ns, jain, req/op (requests the clients sent, counted on the
// client side), srv-calls/op (INFO commandstats, calls inside scripts
// included), allocs/op and B/op over the measured phase only.
//
// It uses the Redis at LOCKBENCH_ADDR (host:port) or REDIS_URL when set,
// else starts redis-server from PATH (failing without one).
func BenchmarkLock(b *testing.B) {
	target := benchTarget(b)
	base := harness.Options{
		Target:     target,
		Goroutines: 50,
		Waiters:    8,
		Hold:       100 * time.Microsecond,
		TTL:        10 * time.Second,
		Warmup:     100 * time.Millisecond,
		KeyPrefix:  fmt.Sprintf("lockbench-test:%d", time.Now().UnixNano()),
	}
	for _, sc := range harness.Scenarios {
		for _, name := range harness.Backends() {
			info, err := harness.Lookup(name)
			if err != nil {
				b.Fatal(err)
			}
			if !harness.Applies(info, sc) {
				continue
			}
			b.Run(sc+"/"+name, func(b *testing.B) {
				b.ReportAllocs() // shows the B/op and allocs/op reported below
				o := base
				o.Ops = uint64(b.N)
				o.Measure = func(start bool) {
					if start {
						b.ResetTimer()
					} else {
						b.StopTimer()
					}
				}
				res, err := harness.Run(context.Background(), info, sc, o)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(res.Latency.P50), "p50-ns")
				b.ReportMetric(float64(res.Latency.P99), "p99-ns")
				if res.Handoff != nil {
					b.ReportMetric(float64(res.Handoff.P50), "handoff-p50-ns")
					b.ReportMetric(float64(res.Handoff.P99), "handoff-p99-ns")
					b.ReportMetric(res.Jain, "jain")
				}
				if res.ReqPerOp >= 0 {
					b.ReportMetric(res.ReqPerOp, "req/op")
				}
				if res.SrvCallsPerOp >= 0 {
					b.ReportMetric(res.SrvCallsPerOp, "srv-calls/op")
				}
				b.ReportMetric(res.AllocsPerOp, "allocs/op")
				b.ReportMetric(res.BytesPerOp, "B/op")
			})
		}
	}
}

func benchTarget(b *testing.B) *harness.Target {
	b.Helper()
	addr, url := os.Getenv("LOCKBENCH_ADDR"), os.Getenv("REDIS_URL")
	if addr == "" && url == "" {
		addr = redistest.Start(b).Addr
	}
	t, err := harness.Resolve(addr, url, os.Stderr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { t.Close() })
	return t
}
