package locktest_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockmem"
	"github.com/klauthed/lock/locktest"
)

// backend returns a lockmem backend on fake clocks whose managers are
// wrapped by wrap.
func backend(wrap func(*lockmem.Manager) lock.Manager) locktest.Backend {
	type entry struct {
		m     *lockmem.Manager
		clock *lockmem.FakeClock
	}
	var managers sync.Map // lock.Manager -> entry
	return locktest.Backend{
		New: func(t *testing.T) lock.Manager {
			clock := lockmem.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			m := lockmem.New(lockmem.Options{Clock: clock})
			w := wrap(m)
			managers.Store(w, entry{m, clock})
			t.Cleanup(func() { _ = m.Close() })
			return w
		},
		Advance: func(_ *testing.T, m lock.Manager, d time.Duration) {
			e, _ := managers.Load(m)
			e.(entry).clock.Advance(d)
		},
		Close: func(m lock.Manager) error {
			e, _ := managers.Load(m)
			return e.(entry).m.Close()
		},
		Nil:  (*lockmem.Manager)(nil),
		Unit: time.Second,
	}
}

// TestRun_lockmem runs the suite against the real thing: it must pass.
func TestRun_lockmem(t *testing.T) {
	locktest.Run(t, backend(func(m *lockmem.Manager) lock.Manager { return m }))
}

// broken are backends that each break one rule, with the cases that must
// catch them.
var broken = map[string]struct {
	wrap     func(*lockmem.Manager) lock.Manager
	mustFail []string
}{
	"NoExclusion": {
		wrap:     func(m *lockmem.Manager) lock.Manager { return &noExclusion{Manager: m} },
		mustFail: []string{"MutualExclusion/TryAcquire", "Expiry/KeyFreeAfterTTL", "OddKeys"},
	},
	"StaticFence": {
		wrap: func(m *lockmem.Manager) lock.Manager {
			return &wrapped{Manager: m, fence: func(uint64) uint64 { return 1 }}
		},
		mustFail: []string{
			"Fence/IncreasesAcrossRelease", "Fence/IncreasesAcrossExpiry",
			"Fence/IncreasesAcrossPeers", "MutualExclusion/Goroutines",
		},
	},
	"StaleReleaseFreesNext": {
		wrap:     func(m *lockmem.Manager) lock.Manager { return &wrapped{Manager: m, freeAny: true} },
		mustFail: []string{"StaleHolder/ReleaseDoesNotFreeNext", "Release/Twice", "Release/AfterExpiry"},
	},
}

// TestRun_catchesBrokenBackends runs the suite, in a child process, against
// backends that each break one rule, and checks that the cases meant to
// catch the break fail: the suite's cases are not hollow.
func TestRun_catchesBrokenBackends(t *testing.T) {
	for name, b := range broken {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenHelper$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), "LOCKTEST_BROKEN="+name)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed a backend with %s:\n%s", name, out)
			}
			for _, c := range b.mustFail {
				if !strings.Contains(string(out), "--- FAIL: TestBrokenHelper/"+c+" ") {
					t.Errorf("case %s did not fail on a backend with %s", c, name)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
		})
	}
}

// TestBrokenHelper runs the suite against the backend named by
// $LOCKTEST_BROKEN; it does nothing otherwise.
func TestBrokenHelper(t *testing.T) {
	name := os.Getenv("LOCKTEST_BROKEN")
	if name == "" {
		return
	}
	b, ok := broken[name]
	if !ok {
		t.Fatalf("no broken backend %q", name)
	}
	locktest.Run(t, backend(b.wrap))
}

// noExclusion hands out a lease even when the key is held, on a shadow key.
type noExclusion struct {
	*lockmem.Manager
	n atomic.Int64
}

func (m *noExclusion) TryAcquire(
	ctx context.Context, key string, ttl time.Duration,
) (lock.Lease, bool, error) {
	l, ok, err := m.Manager.TryAcquire(ctx, key, ttl)
	if err != nil || ok {
		return l, ok, err
	}
	l, ok, err = m.Manager.TryAcquire(ctx, fmt.Sprint(key, "\x00shadow", m.n.Add(1)), ttl)
	if !ok {
		return l, ok, err
	}
	return renamed{l, key}, true, nil
}

type renamed struct {
	lock.Lease
	key string
}

func (r renamed) Key() string { return r.key }

func (r renamed) Lost() <-chan struct{} { return r.Lease.(lock.Watcher).Lost() }

// wrapped changes fences, or lets a stale lease's Release free the key's
// current holder (a release that does not compare tokens).
type wrapped struct {
	*lockmem.Manager
	fence   func(uint64) uint64
	freeAny bool
	mu      sync.Mutex
	cur     map[string]lock.Lease
}

func (m *wrapped) wrap(l lock.Lease) lock.Lease {
	if l == nil {
		return nil
	}
	w := &wrappedLease{Lease: l, m: m}
	m.mu.Lock()
	if m.cur == nil {
		m.cur = map[string]lock.Lease{}
	}
	m.cur[l.Key()] = l
	m.mu.Unlock()
	return w
}

func (m *wrapped) TryAcquire(
	ctx context.Context, key string, ttl time.Duration,
) (lock.Lease, bool, error) {
	l, ok, err := m.Manager.TryAcquire(ctx, key, ttl)
	return m.wrap(l), ok, err
}

func (m *wrapped) Acquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	l, err := m.Manager.Acquire(ctx, key, ttl)
	return m.wrap(l), err
}

type wrappedLease struct {
	lock.Lease
	m *wrapped
}

func (l *wrappedLease) Fence() uint64 {
	if l.m.fence != nil {
		return l.m.fence(l.Lease.Fence())
	}
	return l.Lease.Fence()
}

// Lost passes lock.Watcher through, so Run notices a lost lease at once.
func (l *wrappedLease) Lost() <-chan struct{} { return l.Lease.(lock.Watcher).Lost() }

func (l *wrappedLease) Release(ctx context.Context) error {
	err := l.Lease.Release(ctx)
	if l.m.freeAny {
		l.m.mu.Lock()
		cur := l.m.cur[l.Key()]
		l.m.mu.Unlock()
		if cur != nil {
			_ = cur.Release(ctx)
		}
	}
	return err
}
