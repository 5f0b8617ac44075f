package lockmongo

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/klauthed/lock"
)

// Lease is one acquisition of a key on a Manager, returned as lock.Lease by
// TryAcquire and Acquire. Its methods are safe for concurrent use. A nil
// *Lease holds nothing: Key and Token return "", Fence 0, Refresh
// lock.ErrNotHeld and Release nil.
//
// Lease does not implement lock.Watcher: without change streams a loss is
// found by the next Refresh (lock.Run refreshes every TTL/3).
type Lease struct {
	m     *Manager
	key   string
	token lock.Token
	ttl   time.Duration
	fence uint64
	sent  time.Time // when the request that won the lease was sent

	released atomic.Bool // a Release got the server's reply: later calls do no I/O
}

var (
	_ lock.Lease   = (*Lease)(nil)
	_ lock.Stamped = (*Lease)(nil)
)

// Key returns the key as passed to the Manager.
func (l *Lease) Key() string {
	if l == nil {
		return ""
	}
	return l.key
}

// Token returns the random token of this acquisition, the value of the
// document's tok field while the lease holds the key.
func (l *Lease) Token() lock.Token {
	if l == nil {
		return ""
	}
	return l.token
}

// Fence returns the fencing number of this acquisition (see lock.Lease):
// the document's base plus n, as the acquisition left them.
func (l *Lease) Fence() uint64 {
	if l == nil {
		return 0
	}
	return l.fence
}

// Sent returns the local time the request that won this lease was sent: the
// lease's TTL on the server started no earlier (lock.Stamped).
func (l *Lease) Sent() time.Time {
	if l == nil {
		return time.Time{}
	}
	return l.sent
}

// Refresh sets the lease's remaining time to ttl (truncated to whole
// milliseconds), counted on the server's clock from when it handles the
// call: one update that matches the token and an expiry still ahead.
//
// On success the lease is held for ttl more. When the lease no longer holds
// its key (released, expired, taken by another, or its document deleted)
// it returns an error wrapping lock.ErrNotHeld and changes nothing. A nil
// ctx returns an error wrapping lock.ErrInvalidArgument and bad ttl one
// wrapping lock.ErrInvalidTTL, before any I/O; a closed Manager
// lock.ErrClosed; a server error is returned wrapped, with the key, and
// leaves the lease as it was.
func (l *Lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if l == nil {
		return fmt.Errorf("%w: nil lease", lock.ErrNotHeld)
	}
	if err := lock.ValidateContext(ctx); err != nil {
		return fmt.Errorf("lockmongo: refresh %q: %w", l.key, err)
	}
	if err := lock.ValidateTTL(ttl, lock.MaxTTL); err != nil {
		return err
	}
	if l.released.Load() {
		return fmt.Errorf("%w: key %q: released", lock.ErrNotHeld, l.key)
	}
	m := l.m
	if m.closed.Load() {
		return lock.ErrClosed
	}
	start := time.Now()
	ok, err := m.refreshOnce(ctx, l.key, string(l.token), ttl)
	if err != nil {
		return m.wrapErr("refresh", l.key, err)
	}
	if !ok {
		return fmt.Errorf("%w: key %q", lock.ErrNotHeld, l.key)
	}
	s := m.shard(l.key)
	s.mu.Lock()
	if ks := s.keys[l.key]; ks != nil && ks.holder == l {
		ks.holderUntil = start.Add(ttl)
	}
	s.mu.Unlock()
	return nil
}

// Release gives the key up if this lease still holds it: one update that
// matches the token, clears tok and sets exp to the server's time. When a
// waiter of the same Manager is asleep on the key, the same single update
// hands the key to it instead (tok becomes the waiter's, n grows), so the
// waiter holds the key when Release returns.
//
// It is idempotent: once a Release got the server's reply, later calls
// return nil without I/O, and releasing a lease that expired or was taken
// returns nil and frees nobody else's lease. A nil ctx returns an error
// wrapping lock.ErrInvalidArgument and changes nothing. On a server error
// it returns the error wrapped, with the key, and the lease ends at its TTL
// at the latest (Release may be called again). On a closed Manager it
// returns lock.ErrClosed.
func (l *Lease) Release(ctx context.Context) error {
	if l == nil {
		return nil
	}
	if err := lock.ValidateContext(ctx); err != nil {
		return fmt.Errorf("lockmongo: release %q: %w", l.key, err)
	}
	if l.released.Load() {
		return nil
	}
	m := l.m
	if m.closed.Load() {
		return lock.ErrClosed
	}
	var err error
	if next := m.takeForHandoff(l); next != nil {
		sent := time.Now()
		var fence uint64
		fence, err = m.handoffOnce(ctx, l.key, string(l.token), string(next.l.token), next.l.ttl)
		m.finishHandoff(next, fence, sent)
	} else {
		err = m.releaseOnce(ctx, l.key, string(l.token))
	}
	if err != nil {
		return m.wrapErr("release", l.key, err)
	}
	l.released.Store(true)
	return nil
}
