package lockredis

import (
	"context"
	"hash/maphash"
	"sync"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/gen"
)

const numShards = 64

// shard holds the state of the keys that hash to it. Only keys with waiters
// or watched leases have an entry; the uncontended path never writes here.
type shard struct {
	mu   sync.Mutex
	keys map[string]*keyState // by lock key
}

// keyState is what a Manager knows about one lock key. Guarded by its
// shard's mutex.
//
// Invariant (no lost wake-up): while q is not empty and active is 0, the
// waiter that queued last after a failed attempt armed timer at the holder's
// expiry (or its backoff) and either registered Redis tracking of the key
// after the attempt (so any change is an invalidation, hence an event), or
// saw a local holder (whose Release is an event), or polls. Events wake the
// front waiter only when no waiter is active; an active waiter instead sees
// that events moved and tries again.
type keyState struct {
	q           []*waiter // FIFO of sleeping Acquire calls
	active      int       // waiters awake and talking to Redis
	events      uint64    // count of changes seen: invalidations, local releases, timer
	holder      *Lease    // lease of this Manager believed to hold the key, or nil
	holderUntil time.Time // when holder's TTL ends on the local clock
	timer       *time.Timer
	backoff     time.Duration
	watches     []*watch
}

type waiter struct {
	wake chan struct{} // cap 1: a wake is never lost nor blocks the waker
	l    *Lease        // the lease this waiter's Acquire will return
	ttl  time.Duration

	// handoff is set, under the shard mutex, when a releasing lease of this
	// Manager took the waiter from the queue to run its acquire in the same
	// round trip as the release; pre is that acquire's outcome, written
	// before the wake is sent.
	handoff bool
	pre     *handoffResult
}

// handoffResult is the outcome of an acquire a releaser ran for a waiter.
type handoffResult struct {
	res  gen.AcquireResult
	err  error
	e0   uint64    // the key's event count when the releaser took the waiter
	sent time.Time // when the releaser sent the acquire
}

func newWaiter(l *Lease, ttl time.Duration) *waiter {
	return &waiter{wake: make(chan struct{}, 1), l: l, ttl: ttl}
}

func (m *Manager) shard(lockKey string) *shard {
	return &m.shards[maphash.String(m.seed, lockKey)%numShards]
}

// state returns lockKey's entry, creating it. Call with s.mu held.
func (s *shard) state(lockKey string) *keyState {
	ks := s.keys[lockKey]
	if ks == nil {
		ks = &keyState{}
		s.keys[lockKey] = ks
	}
	return ks
}

// maybeDelete drops an entry that no longer matters. Call with s.mu held.
func (s *shard) maybeDelete(lockKey string, ks *keyState) {
	if len(ks.q) == 0 && ks.active == 0 && len(ks.watches) == 0 {
		if ks.timer != nil {
			ks.timer.Stop()
		}
		delete(s.keys, lockKey)
	}
}

// wakeHead hands the turn to the front waiter. Call with s.mu held.
func (ks *keyState) wakeHead() {
	if ks.active > 0 || len(ks.q) == 0 {
		return
	}
	ks.popHead().wake <- struct{}{}
}

// popHead takes the front waiter out of the queue and makes it the key's
// active waiter. Call with s.mu held and the queue not empty.
func (ks *keyState) popHead() *waiter {
	w := ks.q[0]
	ks.q[0] = nil
	ks.q = ks.q[1:]
	ks.active++
	return w
}

func (ks *keyState) pushFront(w *waiter) {
	w.handoff = false
	ks.q = append(ks.q, nil)
	copy(ks.q[1:], ks.q)
	ks.q[0] = w
}

func (ks *keyState) remove(w *waiter) bool {
	for i, x := range ks.q {
		if x == w {
			copy(ks.q[i:], ks.q[i+1:])
			ks.q[len(ks.q)-1] = nil
			ks.q = ks.q[:len(ks.q)-1]
			return true
		}
	}
	return false
}

// arm sets the key's timer: when it fires, the front waiter tries again.
func (m *Manager) arm(ks *keyState, lockKey string, d time.Duration) {
	if ks.timer == nil {
		ks.timer = time.AfterFunc(d, func() { m.keyEvent(lockKey, nil, false) })
		return
	}
	ks.timer.Reset(d)
}

// keyEvent records that lockKey may have changed: from is the local lease
// that released it (nil for invalidations and timers); poke also wakes the
// lease watches of the key.
func (m *Manager) keyEvent(lockKey string, from *Lease, poke bool) {
	s := m.shard(lockKey)
	s.mu.Lock()
	ks := s.keys[lockKey]
	if ks == nil {
		s.mu.Unlock()
		return
	}
	ks.events++
	if from != nil && ks.holder == from {
		ks.holder = nil
	}
	ks.wakeHead()
	if poke {
		for _, wt := range ks.watches {
			if wt.l != from {
				wt.poke()
			}
		}
	}
	s.mu.Unlock()
}

// eventAll is keyEvent for every key: the connection was lost or the server
// flushed its tracking table, so no registration can be trusted.
func (m *Manager) eventAll() {
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		for _, ks := range s.keys {
			ks.events++
			ks.wakeHead()
			for _, wt := range ks.watches {
				wt.poke()
			}
		}
		s.mu.Unlock()
	}
}

// noteHolder records l as the key's local holder if the key has waiters or
// watches here; the uncontended path does not create entries.
func (m *Manager) noteHolder(l *Lease, ttl time.Duration) {
	s := m.shard(l.lockKey)
	s.mu.Lock()
	if ks := s.keys[l.lockKey]; ks != nil {
		ks.holder = l
		ks.holderUntil = time.Now().Add(ttl)
	}
	s.mu.Unlock()
}

// wait runs the slow path of Acquire for waiter w. If queued, w is in the
// key's queue; else w is active and e0 is the key's event count from before
// its last failed attempt, which saw the holder with holderTTL left.
func (m *Manager) wait(ctx context.Context, l *Lease, ttl time.Duration, w *waiter, queued bool, e0 uint64, holderTTL time.Duration, failed bool) (lock.Lease, error) {
	s := m.shard(l.lockKey)
	for {
		if queued {
			select {
			case <-w.wake:
			case <-ctx.Done():
				m.abandon(ctx, s, w)
				return nil, notAcquired(l.key, ctx.Err())
			case <-m.done:
				m.abandon(ctx, s, w)
				return nil, lock.ErrClosed
			}
			queued, failed = false, false
			if p := w.pre; p != nil {
				// A releaser of this Manager ran our acquire right after
				// its release, in the same round trip.
				w.pre = nil
				if p.err == nil {
					if p.res.Acquired {
						l.fence, l.sent = p.res.Fence, p.sent
						m.won(s, l, ttl)
						return l, nil
					}
					holderTTL, e0, failed = p.res.TTL, p.e0, true
				}
				// On error, try ourselves: a retried acquire with the same
				// token is idempotent if the first one did reach Redis.
			}
		}
		// Active: this waiter is the one of this Manager that talks to
		// Redis about the key.
		if !failed {
			if m.closed.Load() {
				m.leave(s, l.lockKey)
				return nil, lock.ErrClosed
			}
			s.mu.Lock()
			e0 = s.keys[l.lockKey].events
			s.mu.Unlock()
			res, err := m.attempt(ctx, l, ttl)
			if err != nil {
				m.leave(s, l.lockKey)
				return nil, m.acquireErr(ctx, l.key, err)
			}
			if res.Acquired {
				l.fence = res.Fence
				m.won(s, l, ttl)
				return l, nil
			}
			holderTTL = res.TTL
		}
		failed = false

		s.mu.Lock()
		ks := s.keys[l.lockKey]
		if ks.events != e0 {
			s.mu.Unlock()
			continue // the key changed while we asked: ask again
		}
		localHolder := ks.holder != nil && time.Now().Before(ks.holderUntil)
		s.mu.Unlock()

		if m.notify && !localHolder {
			// Register tracking of the key on our connection. Any change
			// after this read reaches us as an invalidation.
			ins, err := gen.InspectCache(ctx, m.client, l.lockKey, inspectCacheTTL)
			if err != nil {
				m.leave(s, l.lockKey)
				return nil, m.acquireErr(ctx, l.key, err)
			}
			if !ins.Held {
				continue // released in between: try at once
			}
		}

		s.mu.Lock()
		if ks.events != e0 {
			s.mu.Unlock()
			continue
		}
		ks.active--
		ks.pushFront(w)
		m.arm(ks, l.lockKey, m.sleepFor(ks, holderTTL, localHolder))
		s.mu.Unlock()
		queued = true
	}
}

// sleepFor is how long the front waiter may sleep before trying again
// without an event. Call with the shard's mutex held.
func (m *Manager) sleepFor(ks *keyState, holderTTL time.Duration, localHolder bool) time.Duration {
	expiry := holderTTL + time.Millisecond
	if m.notify || localHolder {
		ks.backoff = 0
		if holderTTL > 0 {
			return expiry
		}
		if m.notify {
			return unknownTTLWait
		}
	}
	if ks.backoff == 0 {
		ks.backoff = m.minBO
	} else {
		ks.backoff = min(2*ks.backoff, m.maxBO)
	}
	if holderTTL > 0 {
		return min(ks.backoff, expiry)
	}
	return ks.backoff
}

// won records that the active waiter took the key with lease l.
func (m *Manager) won(s *shard, l *Lease, ttl time.Duration) {
	s.mu.Lock()
	ks := s.keys[l.lockKey]
	ks.active--
	ks.holder = l
	ks.holderUntil = time.Now().Add(ttl)
	ks.backoff = 0
	if len(ks.q) > 0 {
		// Our Release hands off; this timer covers a lease left to expire.
		m.arm(ks, l.lockKey, ttl+time.Millisecond)
	}
	s.maybeDelete(l.lockKey, ks)
	s.mu.Unlock()
}

// leave is for an active waiter that gives up: the next one takes over.
func (m *Manager) leave(s *shard, lockKey string) {
	s.mu.Lock()
	ks := s.keys[lockKey]
	ks.active--
	ks.wakeHead()
	s.maybeDelete(lockKey, ks)
	s.mu.Unlock()
}

// abandon is for a queued waiter that gives up. If it was woken meanwhile,
// the wake passes to the next waiter, so that none is lost. If a releaser
// took it for a hand-off, abandon waits for that round trip to end and
// releases what it may have won for the waiter (bounded by CleanupTimeout).
func (m *Manager) abandon(ctx context.Context, s *shard, w *waiter) {
	lockKey := w.l.lockKey
	s.mu.Lock()
	ks := s.keys[lockKey]
	if ks.remove(w) {
		s.maybeDelete(lockKey, ks)
		s.mu.Unlock()
		return
	}
	handoff := w.handoff
	s.mu.Unlock()
	// Taken by wakeHead (its wake is already buffered: it sends under the
	// mutex) or by a releaser (it sends once its round trip is over).
	<-w.wake
	if p := w.pre; handoff && p != nil && (p.err != nil || p.res.Acquired) {
		w.pre = nil
		m.cleanupAcquire(ctx, w.l, w.ttl)
	}
	s.mu.Lock()
	ks.active--
	ks.wakeHead()
	s.maybeDelete(lockKey, ks)
	s.mu.Unlock()
}

// takeForHandoff takes the front waiter of l's key for a hand-off, if one
// is queued and none is awake, making it the key's active waiter.
func (m *Manager) takeForHandoff(l *Lease) (*waiter, uint64) {
	s := m.shard(l.lockKey)
	s.mu.Lock()
	defer s.mu.Unlock()
	ks := s.keys[l.lockKey]
	if ks == nil || ks.active > 0 || len(ks.q) == 0 {
		return nil, 0
	}
	w := ks.popHead()
	w.handoff = true
	return w, ks.events
}
