package lockmongo_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockmongo"
	"github.com/klauthed/lock/lockmongo/internal/ferrettest"
	"github.com/klauthed/lock/locktest"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// ctxT returns a context for one call that ends with the test.
func ctxT(tb testing.TB) context.Context {
	tb.Helper()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return c
}

// collName returns a collection name no other test uses.
func collName() string {
	var b [8]byte
	rand.Read(b[:])
	return "locks_" + hex.EncodeToString(b[:])
}

// newManager returns a Manager on coll, closed in tb.Cleanup.
func newManager(tb testing.TB, coll *mongo.Collection, opts lockmongo.Options) *lockmongo.Manager {
	tb.Helper()
	m, err := lockmongo.New(ctxT(tb), coll, opts)
	if err != nil {
		tb.Fatalf("lockmongo.New = %v", err)
	}
	tb.Cleanup(func() {
		if err := m.Close(); err != nil {
			tb.Errorf("Close = %v", err)
		}
	})
	return m
}

// gcOpts collect garbage often and with a short horizon, so that the
// suite also runs against concurrent garbage collection, and FerretDB's
// tables (which it scans for every request) stay small.
var gcOpts = lockmongo.Options{FreeAfter: 3 * time.Second, GCInterval: 500 * time.Millisecond}

// TestConformance_FerretDB runs the conformance suite against an embedded
// FerretDB (SQLite): the offset time path, polling waiters, and a real Peer:
// a second Manager with a client of its own, as another process would have
// it. FerretDB 1.x runs findAndModify and update as a read and then a write
// by _id; lockmongo relies only on the duplicate-key error of an insert.
func TestConformance_FerretDB(t *testing.T) {
	srv := ferrettest.Start(t)
	colls := map[lock.Manager]string{}
	var mu sync.Mutex
	newOn := func(t *testing.T, name string) lock.Manager {
		m := newManager(t, srv.Client(t).Database("lockmongo_test").Collection(name), gcOpts)
		mu.Lock()
		colls[m] = name
		mu.Unlock()
		return m
	}
	locktest.Run(t, locktest.Backend{
		New: func(t *testing.T) lock.Manager { return newOn(t, collName()) },
		Peer: func(t *testing.T, m lock.Manager) lock.Manager {
			mu.Lock()
			name := colls[m]
			mu.Unlock()
			return newOn(t, name)
		},
		Advance: func(_ *testing.T, _ lock.Manager, d time.Duration) { time.Sleep(d) },
		Close:   func(m lock.Manager) error { return m.(*lockmongo.Manager).Close() },
		Nil:     (*lockmongo.Manager)(nil),
		MaxTTL:  lock.MaxTTL,
		Unit:    100 * time.Millisecond,
		Slow:    true, // FerretDB scans its table on every request, in this process
	})
}
