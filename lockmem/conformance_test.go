package lockmem_test

import (
	"sync"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockmem"
	"github.com/klauthed/lock/locktest"
)

// TestConformance runs the conformance suite against lockmem on a fake
// clock: Advance moves the manager's FakeClock, so expiry cases take no real
// time.
func TestConformance(t *testing.T) {
	var clocks sync.Map // *lockmem.Manager -> *lockmem.FakeClock
	locktest.Run(t, locktest.Backend{
		New: func(t *testing.T) lock.Manager {
			clock := lockmem.NewFakeClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
			m := lockmem.New(lockmem.Options{Clock: clock})
			clocks.Store(m, clock)
			t.Cleanup(func() {
				if err := m.Close(); err != nil {
					t.Errorf("Close = %v", err)
				}
				clocks.Delete(m)
			})
			return m
		},
		Peer: func(_ *testing.T, m lock.Manager) lock.Manager { return m },
		Advance: func(t *testing.T, m lock.Manager, d time.Duration) {
			c, ok := clocks.Load(m.(*lockmem.Manager))
			if !ok {
				t.Fatalf("Advance: no clock for manager %p", m)
			}
			c.(*lockmem.FakeClock).Advance(d)
		},
		Close:  func(m lock.Manager) error { return m.(*lockmem.Manager).Close() },
		Nil:    (*lockmem.Manager)(nil),
		MaxTTL: lock.MaxTTL,
		Unit:   time.Second,
	})
}

// TestConformance_systemClock runs the suite on real time, with a short Unit,
// to cover the real-timer paths.
func TestConformance_systemClock(t *testing.T) {
	locktest.Run(t, locktest.Backend{
		New: func(t *testing.T) lock.Manager {
			m := lockmem.New(lockmem.Options{})
			t.Cleanup(func() { _ = m.Close() })
			return m
		},
		Advance: func(_ *testing.T, _ lock.Manager, d time.Duration) { time.Sleep(d) },
		Close:   func(m lock.Manager) error { return m.(*lockmem.Manager).Close() },
		Nil:     (*lockmem.Manager)(nil),
		Unit:    50 * time.Millisecond,
	})
}
