// Package harness is the lock benchmark shared by cmd/lockbench and the
// bench module's `go test -bench` benchmarks: the backends (this project's
// lockredis and lockmem, a raw rueidis floor, and the peers redsync,
// bsm/redislock and rueidislock), the two scenarios (uncontended and
// contended), and the report (table, JSON, plot).
package harness

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Backend is one lock implementation under test, set up for one key space on
// one Redis (or in process). Its methods are called from many goroutines at
// once.
type Backend interface {
	// TryAcquire makes one attempt on key; (nil, false, nil) means held by
	// someone else.
	TryAcquire(ctx context.Context, key string, ttl time.Duration) (Held, bool, error)
	// Acquire waits for key in the way the library documents for waiting,
	// until it holds key or ctx ends (then it returns a non-nil error).
	Acquire(ctx context.Context, key string, ttl time.Duration) (Held, error)
	// Close releases the backend's clients and connections.
	Close() error
}

// Held is one acquisition.
type Held interface {
	// Release gives the key up.
	Release(ctx context.Context) error
}

// Config is what a backend constructor gets.
type Config struct {
	Target *Target
	// Requests, when set, counts every request the backend's clients send:
	// backends build their clients with Config.RueidisOption and
	// Config.GoRedisOptions, which wrap each connection with it.
	Requests *RequestCounter
	// TTL is the lease time the scenarios pass to every acquire. Backends
	// whose TTL is fixed per client (rueidislock's KeyValidity) use it at
	// construction.
	TTL time.Duration
	// MongoURI is the MongoDB for lockmongo; empty means an embedded
	// FerretDB started for the backend.
	MongoURI string
}

// BackendInfo describes a registered backend.
type BackendInfo struct {
	Name string
	// Note says how the backend is configured and how it waits, for the
	// report's footnotes.
	Note string
	// NeedsRedis is false for in-process backends (lockmem).
	NeedsRedis bool
	// Optional backends run only when named in -backends: they are not in
	// Backends(), the default set.
	Optional bool
	New      func(Config) (Backend, error)
}

var registry = map[string]BackendInfo{}

// order is the default order of backends in a run.
var order = []string{"lockredis", "lockmem", "raw", "rueidislock", "redislock", "redsync"}

func register(b BackendInfo) { registry[b.Name] = b }

// Backends returns the names of the registered backends that are not
// Optional, in report order: the default set of a run.
func Backends() []string { return backends(false) }

// AllBackends is Backends with the Optional backends at the end.
func AllBackends() []string { return backends(true) }

func backends(optional bool) []string {
	var out []string
	seen := map[string]bool{}
	for n, b := range registry {
		if b.Optional && !optional {
			seen[n] = true
		}
	}
	for _, n := range order {
		if _, ok := registry[n]; ok && !seen[n] {
			out = append(out, n)
			seen[n] = true
		}
	}
	var rest []string
	for n := range registry {
		if !seen[n] {
			rest = append(rest, n)
		}
	}
	sort.Strings(rest)
	return append(out, rest...)
}

// Lookup returns the registered backend called name.
func Lookup(name string) (BackendInfo, error) {
	b, ok := registry[name]
	if !ok {
		return BackendInfo{}, fmt.Errorf("unknown backend %q (have %s)", name,
			strings.Join(AllBackends(), ", "))
	}
	return b, nil
}
