package lockmongo

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/klauthed/lock"
)

// Lease is one acquisition of a key on a Manager, returned as lock.Lease by
// TryAcquire and Acquire. Its methods are safe for concurrent use; Refresh
// and Release of one lease run one at a time, so its document has one
// writer. A nil *Lease holds nothing: Key and Token return "", Fence 0,
// Refresh lock.ErrNotHeld and Release nil.
//
// Lease does not implement lock.Watcher: without change streams a loss is
// found by the next Refresh (lock.Run refreshes every TTL/3).
type Lease struct {
	m     *Manager
	key   string
	token lock.Token
	ttl   time.Duration
	fence uint64
	n     int64     // the number of its acquisition document
	sent  time.Time // when the first request that could win the lease was sent

	tryN atomic.Int64 // the acquisition number of the insert in flight, for cleanup

	mu       sync.Mutex // serialises Refresh and Release: one writer per document
	exp      time.Time  // the end written in the document (server clock); guarded by mu
	released atomic.Bool
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
// the key's base plus the number of its acquisition document.
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

// sentOnce records t as the send time of the first request that could
// have won the lease: its TTL started no earlier.
func (l *Lease) sentOnce(t time.Time) {
	if l.sent.IsZero() {
		l.sent = t
	}
}

// Refresh sets the lease's remaining time to ttl (truncated to whole
// milliseconds), counted on the server's clock from when the request is
// sent: one update of the lease's document by _id.
//
// On success the lease is held for ttl more. When the lease no longer holds
// its key it returns an error wrapping lock.ErrNotHeld: it was released, or
// its end has passed or may have passed on the server's clock before the
// update landed (its reply came after the old end as far as this Manager
// can tell), or its document was collected; then the lease's document is
// marked released (another Manager may already hold a newer acquisition)
// and the lease holds nothing. A nil ctx returns an error wrapping
// lock.ErrInvalidArgument and bad ttl one wrapping lock.ErrInvalidTTL,
// before any I/O; a closed Manager lock.ErrClosed; a server error is
// returned wrapped, with the key, and leaves the lease as it was (its end
// is either the old one or the new one).
func (l *Lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if l == nil {
		return fmt.Errorf("lockmongo: nil lease: %w", lock.ErrNotHeld)
	}
	if err := lock.ValidateContext(ctx); err != nil {
		return fmt.Errorf("lockmongo: refresh %q: %w", l.key, err)
	}
	if err := lock.ValidateTTL(ttl, lock.MaxTTL); err != nil {
		return err
	}
	m := l.m
	if m.closed.Load() {
		return lock.ErrClosed
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released.Load() {
		return fmt.Errorf("lockmongo: key %q: released: %w", l.key, lock.ErrNotHeld)
	}
	start := time.Now()
	_, hi := m.bounds()
	if !l.exp.After(hi) {
		// It may have ended on the server: another Manager may hold the
		// key now. Give it up.
		m.releaseLocked(ctx, l)
		return fmt.Errorf("lockmongo: key %q: expired: %w", l.key, lock.ErrNotHeld)
	}
	exp := hi.Add(ttl)
	ok, err := m.setByID(ctx, leaseID(l.key, l.n), bson.D{{Key: fExp, Value: date(exp)}})
	if err != nil {
		return m.wrapErr("refresh", l.key, err)
	}
	if _, hi := m.bounds(); !ok || !l.exp.After(hi) {
		// The update may have landed after the lease ended, when another
		// Manager could already have taken the key: not held.
		m.releaseLocked(ctx, l)
		return fmt.Errorf("lockmongo: key %q: %w", l.key, lock.ErrNotHeld)
	}
	l.exp = exp
	s := m.shard(l.key)
	s.mu.Lock()
	if ks := s.keys[l.key]; ks != nil && ks.holder == l {
		ks.holderUntil = start.Add(ttl)
	}
	s.mu.Unlock()
	return nil
}

// Release gives the key up if this lease still holds it: one update of the
// lease's document by _id that marks it released. A waiter of the same
// Manager is woken at once to try.
//
// It is idempotent: once a Release got the server's reply, later calls
// return nil without I/O, and releasing a lease that expired or was taken
// returns nil and frees nobody else's lease (another acquisition has a
// document of its own). A nil ctx returns an error wrapping
// lock.ErrInvalidArgument and changes nothing. On a server error it returns
// the error wrapped, with the key, and the lease ends at its TTL at the
// latest (Release may be called again). On a closed Manager it returns
// lock.ErrClosed.
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
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released.Load() {
		return nil
	}
	_, err := m.setByID(ctx, leaseID(l.key, l.n), bson.D{{Key: fRel, Value: true}})
	if err != nil {
		return m.wrapErr("release", l.key, err)
	}
	l.released.Store(true)
	m.released(l)
	return nil
}

// releaseLocked marks l's document released, best effort, for a lease that
// is found lost. Call with l.mu held.
func (m *Manager) releaseLocked(ctx context.Context, l *Lease) {
	if _, err := m.setByID(ctx, leaseID(l.key, l.n), bson.D{{Key: fRel, Value: true}}); err == nil {
		l.released.Store(true)
		m.released(l)
	}
}
