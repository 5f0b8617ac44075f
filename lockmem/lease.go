package lockmem

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/klauthed/lock"
)

// Lease is one acquisition of a key from a Manager. It implements lock.Lease
// and lock.Watcher, and is safe for concurrent use. Leases are made only by
// a Manager; a nil *Lease holds nothing (Refresh returns lock.ErrNotHeld,
// Release nil).
type Lease struct {
	s     *shard
	key   string
	fence uint64
	tok   atomic.Pointer[lock.Token] // made on the first Token call

	// Guarded by s.mu.
	expires   int64         // on the Manager's clock, nanoseconds since its epoch
	q         *queue        // waiters for the key while this lease holds it
	gone      bool          // no longer the holder: released, expired, replaced or closed
	lostSeen  bool          // gone other than by its own Release
	lost      chan struct{} // made by Lost; closed once lostSeen
	watchStop func() bool   // stops the expiry timer Lost started
}

var (
	_ lock.Lease   = (*Lease)(nil)
	_ lock.Watcher = (*Lease)(nil)
)

// Key returns the key as it was passed to the Manager.
func (l *Lease) Key() string {
	if l == nil {
		return ""
	}
	return l.key
}

// Fence returns the lease's fencing number: greater than that of every
// earlier acquisition of the same key from the same Manager. Fences of one
// key are strictly increasing but not consecutive (see the package doc).
func (l *Lease) Fence() uint64 {
	if l == nil {
		return 0
	}
	return l.fence
}

// Token returns the lease's random token (lock.NewToken), made on the first
// call and the same on every later one. A nil *Lease has the empty token.
func (l *Lease) Token() lock.Token {
	if l == nil {
		return ""
	}
	if t := l.tok.Load(); t != nil {
		return *t
	}
	t := lock.NewToken()
	if l.tok.CompareAndSwap(nil, &t) {
		return t
	}
	return *l.tok.Load()
}

// Refresh sets the lease's remaining time to ttl (truncated to whole
// milliseconds), counted from now on the Manager's clock.
//
// On success the lease is held for ttl from now. When the lease no longer
// holds its key (released, expired, or the key was taken since) it returns
// an error wrapping lock.ErrNotHeld and changes nothing; a ttl outside
// [lock.MinTTL, lock.MaxTTL] gives lock.ErrInvalidTTL and leaves the lease
// as it was; after Close it returns lock.ErrClosed. ctx is not consulted,
// but a nil ctx gives lock.ErrInvalidArgument.
func (l *Lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.ValidateContext(ctx); err != nil {
		return err
	}
	if l == nil {
		return notHeld("")
	}
	if err := lock.ValidateTTL(ttl, lock.MaxTTL); err != nil {
		return err
	}
	s := l.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return lock.ErrClosed
	}
	if l.gone {
		return notHeld(l.key)
	}
	now := s.m.now()
	if l.expires <= now {
		s.vacate(l, now, false)
		return notHeld(l.key)
	}
	l.expires = now + int64(ttl.Truncate(time.Millisecond))
	return nil
}

// Release gives up the key if this lease still holds it, handing it to the
// first waiting Acquire if there is one.
//
// It is idempotent: on a lease that was already released, that expired, or
// whose key another lease holds now, it returns nil and changes nothing.
// After Close it returns lock.ErrClosed (Close already ended the lease).
// ctx is not consulted, but a nil ctx gives lock.ErrInvalidArgument.
func (l *Lease) Release(ctx context.Context) error {
	if err := lock.ValidateContext(ctx); err != nil {
		return err
	}
	if l == nil {
		return nil
	}
	s := l.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return lock.ErrClosed
	}
	if !l.gone {
		l.release()
	}
	return nil
}

// release ends l, the holder of its key. s.mu must be held.
func (l *Lease) release() {
	s := l.s
	if l.q == nil {
		// Fast path of vacate: no waiter, no watch timer.
		l.gone = true
		if l.watchStop != nil {
			l.watchStop()
			l.watchStop = nil
		}
		delete(s.keys, l.key)
	} else {
		s.vacate(l, s.m.now(), true) // the clock is read only for a hand-off
	}
	s.maybeShrink()
}

// closedChan is returned by Lost for leases lost before Lost was called.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// Lost returns a channel that is closed once the lease no longer holds its
// key for a reason other than its own Release: its TTL passed, the key
// was taken after that, or the Manager was closed. The first call arms a
// timer (on the Manager's clock) for the lease's expiry, so the channel
// closes when the TTL passes even if nobody touches the key; later calls
// return the same channel. After the lease's own Release the channel is
// never closed. lock.Run uses Lost to cancel its function's context early.
func (l *Lease) Lost() <-chan struct{} {
	if l == nil {
		return closedChan
	}
	s := l.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if l.lost != nil {
		return l.lost
	}
	if !l.gone && !s.closed {
		if now := s.m.now(); l.expires <= now {
			s.vacate(l, now, false) // expired already: lost now
			s.maybeShrink()
		} else {
			l.lost = make(chan struct{})
			l.armWatch(now)
			return l.lost
		}
	}
	if l.lostSeen {
		l.lost = closedChan
	} else {
		l.lost = make(chan struct{}) // released by its owner: never closed
	}
	return l.lost
}

// armWatch starts the timer that ends l once its TTL passes. s.mu must be
// held.
func (l *Lease) armWatch(now int64) {
	s := l.s
	l.watchStop = s.m.timers.AfterFunc(time.Duration(l.expires-now), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.closed || l.gone {
			return
		}
		now := s.m.now()
		if l.expires <= now {
			s.vacate(l, now, false)
			s.maybeShrink()
			return
		}
		l.armWatch(now) // refreshed since the timer was set
	})
}

// markLost records that l was lost and closes its Lost channel. s.mu must
// be held.
func (l *Lease) markLost() {
	if l.lostSeen {
		return
	}
	l.lostSeen = true
	if l.lost != nil {
		close(l.lost)
	}
	if l.watchStop != nil {
		l.watchStop()
		l.watchStop = nil
	}
}
