package scripts_test

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/redis/rueidis"

	"github.com/klauthed/lock/internal/redistest"
)

// BenchmarkUncontendedPair runs an acquire and a release of a free key, 50
// goroutines on 2 procs each on keys of their own, with the scripts of
// each protocol on one redis-server, and reports beside ns/op srv-µs/pair:
// the time Redis spent running the pair (INFO commandstats, usec of every
// command, the scripts' inner commands included in their EVALSHA's). It is
// what the line (protocol 2) costs a lock nobody waits for: one look at the
// line in each script, three more keys and a longer reply.
func BenchmarkUncontendedPair(b *testing.B) {
	srv := redistest.Start(b)
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: []string{srv.Addr}, DisableCache: true,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	ctx := context.Background()
	var ids atomic.Int64
	type protocol struct {
		name             string
		acquire, release *rueidis.Lua
		keys             func(base string) (acquire, release []string)
		acquireArgs      func(token string) []string
		releaseArgs      func(token string) []string
	}
	five := func(base string) []string {
		return []string{base, base + ":fence", base + ":line",
			base + ":line:deadlines", base + ":line:args"}
	}
	protocols := []protocol{
		{
			name:    "protocol1",
			acquire: rueidis.NewLuaScript(source(b, "testdata/protocol1/acquire")),
			release: rueidis.NewLuaScript(source(b, "testdata/protocol1/release")),
			keys: func(base string) ([]string, []string) {
				return []string{base, base + ":fence"}, []string{base}
			},
			acquireArgs: func(token string) []string { return []string{token, "10000"} },
			releaseArgs: func(token string) []string { return []string{token} },
		},
		{
			name:    "protocol2",
			acquire: rueidis.NewLuaScript(source(b, "acquire")),
			release: rueidis.NewLuaScript(source(b, "release")),
			keys: func(base string) ([]string, []string) {
				return five(base), five(base)
			},
			// What lockredis's TryAcquire and Release send: no line, no
			// channel to compare with.
			acquireArgs: func(token string) []string { return []string{token, "10000", "0", ""} },
			releaseArgs: func(token string) []string { return []string{token, ""} },
		},
	}
	for _, p := range protocols {
		b.Run(p.name, func(b *testing.B) {
			srv.Cli(b, "CONFIG", "RESETSTAT")
			b.ReportAllocs()
			b.SetParallelism(25)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				base := "klauthed:{" + p.name + ":" + strconv.FormatInt(ids.Add(1), 10) + "}"
				ak, rk := p.keys(base)
				for i := 0; pb.Next(); i++ {
					token := "t" + strconv.Itoa(i)
					n, err := p.acquire.Exec(ctx, c, ak, p.acquireArgs(token)).ToArray()
					if err != nil || len(n) < 2 {
						b.Fatalf("acquire = %v, %v", n, err)
					}
					if ok, _ := n[0].AsInt64(); ok != 1 {
						b.Fatalf("acquire of a free key = %v", n)
					}
					if err := p.release.Exec(ctx, c, rk, p.releaseArgs(token)).Error(); err != nil {
						b.Fatalf("release = %v", err)
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(serverMicros(b, srv)/float64(b.N), "srv-µs/pair")
		})
	}
}

// serverMicros is the usec INFO commandstats counts over every command.
func serverMicros(b *testing.B, srv *redistest.Server) float64 {
	b.Helper()
	var total float64
	for _, line := range strings.Split(srv.Cli(b, "INFO", "commandstats"), "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || name == "cmdstat_config|resetstat" {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "usec="); ok {
				n, err := strconv.ParseFloat(v, 64)
				if err != nil {
					b.Fatalf("INFO commandstats line %q: %v", line, err)
				}
				total += n
			}
		}
	}
	return total
}
