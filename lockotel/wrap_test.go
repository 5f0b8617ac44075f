package lockotel_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockmem"
	"github.com/klauthed/lock/lockotel"
	"github.com/klauthed/lock/lockredis"
	"github.com/klauthed/lock/locktest"
	"go.opentelemetry.io/otel/attribute"
)

// Leases of a fake backend, one type per set of optional interfaces.
type (
	fakeLease      struct{ fence uint64 }
	fakeWatchLease struct {
		fakeLease
		lost chan struct{}
	}
	fakeStampLease struct {
		fakeLease
		sent time.Time
	}
	fakeBothLease struct {
		fakeWatchLease
		sent time.Time
	}
)

func (l *fakeLease) Key() string                                  { return "k" }
func (l *fakeLease) Token() lock.Token                            { return "t" }
func (l *fakeLease) Fence() uint64                                { return l.fence }
func (l *fakeLease) Refresh(context.Context, time.Duration) error { return nil }
func (l *fakeLease) Release(context.Context) error                { return nil }
func (l *fakeWatchLease) Lost() <-chan struct{}                   { return l.lost }
func (l *fakeStampLease) Sent() time.Time                         { return l.sent }
func (l *fakeBothLease) Sent() time.Time                          { return l.sent }

// fakeManager hands out lease() from both calls; it has no Close.
type fakeManager struct{ lease func() lock.Lease }

func (m fakeManager) TryAcquire(context.Context, string, time.Duration) (lock.Lease, bool, error) {
	l := m.lease()
	return l, l != nil, nil
}

func (m fakeManager) Acquire(context.Context, string, time.Duration) (lock.Lease, error) {
	return m.lease(), nil
}

// TestWrap_optionalInterfaces: the wrapped lease implements Watcher and
// Stamped exactly when the backend's lease does, and passes Lost and Sent
// through.
func TestWrap_optionalInterfaces(t *testing.T) {
	sent := time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)
	lost := make(chan struct{})
	for _, c := range []struct {
		name  string
		lease lock.Lease
	}{
		{"plain", &fakeLease{fence: 1}},
		{"watcher", &fakeWatchLease{fakeLease{2}, lost}},
		{"stamped", &fakeStampLease{fakeLease{3}, sent}},
		{"both", &fakeBothLease{fakeWatchLease{fakeLease{4}, lost}, sent}},
	} {
		t.Run(c.name, func(t *testing.T) {
			x := newTel(t)
			m := x.wrap(fakeManager{func() lock.Lease { return c.lease }}, lockotel.Options{})
			if _, ok := m.(io.Closer); ok {
				t.Errorf("wrapper of a Manager without Close implements io.Closer")
			}
			for _, acquire := range []func() (lock.Lease, error){
				func() (lock.Lease, error) { return m.Acquire(ctxT(t), "k", time.Second) },
				func() (lock.Lease, error) {
					l, _, err := m.TryAcquire(ctxT(t), "k", time.Second)
					return l, err
				},
			} {
				l, err := acquire()
				if err != nil || l == nil {
					t.Fatalf("acquire = %v, %v", l, err)
				}
				if l == c.lease {
					t.Fatalf("lease not wrapped")
				}
				if l.Fence() != c.lease.Fence() {
					t.Errorf("Fence = %d, want %d", l.Fence(), c.lease.Fence())
				}
				iw, iwOK := c.lease.(lock.Watcher)
				ww, wwOK := l.(lock.Watcher)
				if iwOK != wwOK {
					t.Errorf("wrapped lease is a Watcher: %v, inner: %v", wwOK, iwOK)
				} else if iwOK && ww.Lost() != iw.Lost() {
					t.Errorf("Lost() is not the inner lease's channel")
				}
				is, isOK := c.lease.(lock.Stamped)
				ws, wsOK := l.(lock.Stamped)
				if isOK != wsOK {
					t.Errorf("wrapped lease is Stamped: %v, inner: %v", wsOK, isOK)
				} else if isOK && !ws.Sent().Equal(is.Sent()) {
					t.Errorf("Sent() = %v, want %v", ws.Sent(), is.Sent())
				}
				if err := l.Release(ctxT(t)); err != nil {
					t.Errorf("Release = %v", err)
				}
			}
		})
	}
}

// TestWrap_nilLeaseStaysNil: a nil lease from the backend comes back as a
// nil interface, not as a wrapper around nil.
func TestWrap_nilLeaseStaysNil(t *testing.T) {
	x := newTel(t)
	m := x.wrap(fakeManager{func() lock.Lease { return nil }}, lockotel.Options{})
	if l, ok, err := m.TryAcquire(ctxT(t), "k", time.Second); l != nil || ok || err != nil {
		t.Errorf("TryAcquire = %v, %v, %v; want nil, false, nil", l, ok, err)
	}
	if l, err := m.Acquire(ctxT(t), "k", time.Second); l != nil || err != nil {
		t.Errorf("Acquire = %v, %v; want nil, nil", l, err)
	}
	if got := x.collect(t).sum(mHolders, uLease); got != 0 {
		t.Errorf("holders = %d, want 0", got)
	}
}

// TestWrap_close: the wrapper of a Manager with Close forwards Close.
func TestWrap_close(t *testing.T) {
	inner := lockmem.New(lockmem.Options{})
	m := lockotel.Wrap(inner, lockotel.Options{})
	c, ok := m.(io.Closer)
	if !ok {
		t.Fatalf("wrapper of lockmem does not implement io.Closer")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if _, _, err := inner.TryAcquire(ctxT(t), "k", time.Second); !errors.Is(err, lock.ErrClosed) {
		t.Errorf("inner TryAcquire after the wrapper's Close = %v, want ErrClosed", err)
	}
}

// TestWrap_nilManager: Wrap(nil) returns ErrClosed from every call.
func TestWrap_nilManager(t *testing.T) {
	m := lockotel.Wrap(nil, lockotel.Options{})
	if l, ok, err := m.TryAcquire(ctxT(t), "k", time.Second); l != nil || ok ||
		!errors.Is(err, lock.ErrClosed) {
		t.Errorf("TryAcquire = %v, %v, %v; want ErrClosed", l, ok, err)
	}
	if l, err := m.Acquire(ctxT(t), "k", time.Second); l != nil || !errors.Is(err, lock.ErrClosed) {
		t.Errorf("Acquire = %v, %v; want ErrClosed", l, err)
	}
}

// TestWrap_nilContext: a nil context is reported with ErrInvalidArgument
// before the backend or the tracer sees it, counted as an error, and leaves
// a lease held.
func TestWrap_nilContext(t *testing.T) {
	x := newTel(t)
	inner := lockmem.New(lockmem.Options{})
	defer inner.Close()
	m := x.wrap(inner, lockotel.Options{})
	var nilCtx context.Context
	if _, _, err := m.TryAcquire(nilCtx, "k", time.Second); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("TryAcquire(nil ctx) = %v, want ErrInvalidArgument", err)
	}
	if _, err := m.Acquire(nilCtx, "k", time.Second); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("Acquire(nil ctx) = %v, want ErrInvalidArgument", err)
	}
	l, err := m.Acquire(ctxT(t), "k", time.Minute)
	if err != nil {
		t.Fatalf("Acquire = %v", err)
	}
	if err := l.Refresh(nilCtx, time.Minute); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("Refresh(nil ctx) = %v, want ErrInvalidArgument", err)
	}
	if err := l.Release(nilCtx); !errors.Is(err, lock.ErrInvalidArgument) {
		t.Errorf("Release(nil ctx) = %v, want ErrInvalidArgument", err)
	}
	s := x.collect(t)
	for _, o := range []string{"acquire", "try_acquire"} {
		got := s.sum(mAcqs, uAcq, op(o), outcome("error"), errType("invalid_argument"))
		if got != 1 {
			t.Errorf("acquisitions %s/error/invalid_argument = %d, want 1", o, got)
		}
	}
	if got := s.sum(mHolders, uLease); got != 1 {
		t.Errorf("holders after nil-context Release = %d, want 1 (still held)", got)
	}
	if n := len(x.spans.Ended()); n != 1 {
		t.Errorf("%d spans ended, want 1 (the successful Acquire)", n)
	}
	if err := l.Release(ctxT(t)); err != nil {
		t.Fatalf("Release = %v", err)
	}
}

// TestWrap_keyGroup: with KeyGroup every metric point and span carries
// lock.key_group, and the key itself appears nowhere.
func TestWrap_keyGroup(t *testing.T) {
	x := newTel(t)
	inner := lockmem.New(lockmem.Options{})
	defer inner.Close()
	m := x.wrap(inner, lockotel.Options{KeyGroup: func(key string) string {
		if len(key) > 6 && key[:6] == "order:" {
			return "orders"
		}
		return "other"
	}})
	keys := []string{"order:17", "order:18", "user:4"}
	for _, k := range keys {
		l, err := m.Acquire(ctxT(t), k, time.Minute)
		if err != nil {
			t.Fatalf("Acquire(%q) = %v", k, err)
		}
		if err := l.Release(ctxT(t)); err != nil {
			t.Fatalf("Release = %v", err)
		}
	}
	s := x.collect(t)
	group := func(v string) attribute.KeyValue { return attribute.String("lock.key_group", v) }
	if got := s.sum(mAcqs, uAcq, group("orders")); got != 2 {
		t.Errorf("acquisitions of orders = %d, want 2", got)
	}
	if got := s.sum(mAcqs, uAcq, group("other")); got != 1 {
		t.Errorf("acquisitions of other = %d, want 1", got)
	}
	if n, _, _ := s.hist(mHoldDur, group("orders")); n != 2 {
		t.Errorf("hold.duration count of orders = %d, want 2", n)
	}
	for _, sp := range x.spans.Ended() {
		if _, ok := attr(sp, "lock.key_group"); !ok {
			t.Errorf("span %s has no lock.key_group", sp.Name())
		}
	}
	x.noKeyIn(t, keys...)
}

// TestConformance runs the conformance suite on wrapped lockmem (fake
// clock) and wrapped lockredis, with SDK providers recording: the wrapper
// keeps every rule of the contract.
func TestConformance(t *testing.T) {
	t.Run("lockmem", func(t *testing.T) {
		x := newTel(t)
		var clocks sync.Map // wrapper -> *lockmem.FakeClock
		locktest.Run(t, locktest.Backend{
			New: func(t *testing.T) lock.Manager {
				clock := lockmem.NewFakeClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
				m := x.wrap(lockmem.New(lockmem.Options{Clock: clock}), lockotel.Options{})
				clocks.Store(m, clock)
				t.Cleanup(func() { m.(io.Closer).Close() })
				return m
			},
			Advance: func(t *testing.T, m lock.Manager, d time.Duration) {
				c, ok := clocks.Load(m)
				if !ok {
					t.Fatalf("Advance: no clock for %p", m)
				}
				c.(*lockmem.FakeClock).Advance(d)
			},
			Close: func(m lock.Manager) error { return m.(io.Closer).Close() },
			Nil:   x.wrap((*lockmem.Manager)(nil), lockotel.Options{}),
			Unit:  time.Second,
		})
	})
	t.Run("lockredis", func(t *testing.T) {
		x := newTel(t)
		b := redisBackend(t)
		locktest.Run(t, locktest.Backend{
			New: func(t *testing.T) lock.Manager { return x.wrap(b.new(t), lockotel.Options{}) },
			Peer: func(t *testing.T, _ lock.Manager) lock.Manager {
				return x.wrap(b.new(t), lockotel.Options{})
			},
			Advance: func(_ *testing.T, _ lock.Manager, d time.Duration) { time.Sleep(d) },
			Close:   func(m lock.Manager) error { return m.(io.Closer).Close() },
			Nil:     x.wrap((*lockredis.Manager)(nil), lockotel.Options{}),
			Unit:    b.unit,
		})
	})
}
