package lockmongo

import (
	"context"
	"hash/maphash"
	"sync"
	"time"

	"github.com/klauthed/lock"
)

const numShards = 64

var shardSeed = maphash.MakeSeed()

// shard holds the state of the keys that hash to it. Only keys with waiters
// have an entry; the uncontended path never writes here.
type shard struct {
	mu   sync.Mutex
	keys map[string]*keyState
}

// keyState is what a Manager knows about one key with waiters. Guarded by
// its shard's mutex.
type keyState struct {
	// q is the FIFO of waiting Acquire calls; q[0], the head, is the only
	// one that talks to the server about the key.
	q []*waiter
	// holder is the lease of this Manager believed to hold the key, or nil;
	// holderUntil is when its TTL ends on the local clock.
	holder      *Lease
	holderUntil time.Time
	// trying counts acquire requests in flight (0 or 1): the head's, or a
	// TryAcquire's while nobody waits.
	trying int
}

// waiter is one waiting Acquire call.
type waiter struct {
	l    *Lease
	wake chan struct{} // cap 1: a wake is never lost nor blocks the waker
}

func (w *waiter) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (m *Manager) shard(key string) *shard {
	return &m.shards[maphash.String(shardSeed, key)%numShards]
}

// state returns key's entry, creating it. Call with s.mu held.
func (s *shard) state(key string) *keyState {
	ks := s.keys[key]
	if ks == nil {
		ks = &keyState{}
		s.keys[key] = ks
	}
	return ks
}

// remove takes w out of key's queue, wakes the new head if w was the head,
// and drops the entry once nobody waits. Call with s.mu held.
func (s *shard) remove(key string, w *waiter) {
	ks := s.keys[key]
	if ks == nil {
		return
	}
	for i, x := range ks.q {
		if x == w {
			copy(ks.q[i:], ks.q[i+1:])
			ks.q[len(ks.q)-1] = nil
			ks.q = ks.q[:len(ks.q)-1]
			if i == 0 && len(ks.q) > 0 {
				ks.q[0].poke()
			}
			break
		}
	}
	s.maybeDelete(key, ks)
}

// maybeDelete drops key's entry once nobody waits or tries. Call with s.mu
// held.
func (s *shard) maybeDelete(key string, ks *keyState) {
	if len(ks.q) == 0 && ks.trying == 0 {
		delete(s.keys, key)
	}
}

// beginTry registers a TryAcquire of key, unless this Manager already waits
// for or tries key: then it reports false, and the key counts as held.
func (m *Manager) beginTry(key string) bool {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if ks := s.keys[key]; ks != nil {
		return false
	}
	s.state(key).trying++
	return true
}

// endTry ends what beginTry began, recording l as the holder when it won.
func (m *Manager) endTry(key string, l *Lease) {
	s := m.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	ks := s.keys[key]
	ks.trying--
	if l != nil {
		ks.holder, ks.holderUntil = l, l.sent.Add(l.ttl)
	}
	if len(ks.q) > 0 {
		ks.q[0].poke()
	}
	s.maybeDelete(key, ks)
}

// Acquire waits until it holds key for ttl (truncated to whole
// milliseconds), or until ctx is done; see the package documentation for
// how it waits.
//
// On success it returns a *Lease (as lock.Lease). When ctx ends first, the
// error wraps both lock.ErrNotAcquired and ctx.Err() and the caller holds
// nothing: Acquire returns as soon as the driver gives back the request in
// flight at that moment (the driver stops it at the deadline), and a lock
// that request may have taken is released in the background, bounded by
// Options.CleanupTimeout. When the Manager is closed while waiting it
// returns lock.ErrClosed. A nil ctx, bad input and server errors are
// returned as by TryAcquire; a server error ends the wait.
func (m *Manager) Acquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	l, err := m.newLease(ctx, key, ttl)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, notAcquired(key, err)
	}
	// Every Acquire queues, so that one request per key and Manager is in
	// flight at a time; an uncontended one is at the head at once.
	w := &waiter{l: l, wake: make(chan struct{}, 1)}
	s := m.shard(key)
	s.mu.Lock()
	ks := s.state(key)
	ks.q = append(ks.q, w)
	s.mu.Unlock()
	return m.wait(ctx, s, w)
}

// wait runs Acquire for w, which is in its key's queue. Only the head of
// the queue talks to the server; after its first attempt fails it holds a
// ticket in the key's line, kept alive every LineTTL/3.
func (m *Manager) wait(ctx context.Context, s *shard, w *waiter) (lock.Lease, error) {
	l := w.l
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var (
		backoff time.Duration
		seen    int64     // the latest acquisition number the last attempt saw
		seq     int64     // our ticket, 0 for none
		keepAt  time.Time // when to extend it next (local clock)
	)
	leave := func(err error) (lock.Lease, error) {
		m.leaveLine(l, seq, false)
		return nil, m.leave(s, w, err)
	}
	for {
		s.mu.Lock()
		ks := s.keys[l.key]
		sleep := time.Duration(-1) // no timer: wait to be woken
		localLeft := time.Duration(0)
		if ks.holder != nil {
			localLeft = time.Until(ks.holderUntil)
		}
		switch {
		case ks.q[0] != w || ks.trying > 0:
			// Not our turn to talk to the server: wait to be woken.
		case localLeft > 0 && seq > 0:
			// Our own lease holds the key: its Release wakes us; the
			// timer covers a lease left to expire.
			sleep = localLeft + time.Millisecond
		default:
			ks.trying++
			s.mu.Unlock()
			res, err := m.attempt(ctx, l, seq)
			if err == nil && !res.acquired && (seq == 0 || res.rejoin) {
				// Take a place in the key's line (again, when passed over).
				m.leaveLine(l, seq, false)
				seq, _, err = m.joinLine(ctx, l, res.srv)
				keepAt = time.Now().Add(m.lineTTL / 3)
			}
			s.mu.Lock()
			ks.trying--
			if err != nil || res.acquired {
				if err == nil {
					l.fence, l.n, l.exp = res.fence, res.n, res.exp
					ks.holder, ks.holderUntil = l, l.sent.Add(l.ttl)
				}
				s.remove(l.key, w)
				s.mu.Unlock()
				if err != nil {
					if ctx.Err() != nil || isCtxErr(err) {
						m.cleanupAcquire(l)
					}
					m.leaveLine(l, seq, false)
					return nil, m.acquireErr(ctx, l.key, err)
				}
				m.leaveLine(l, seq, true)
				return l, nil
			}
			if res.latest != seen && seen != 0 {
				// The key changed hands since we last looked: it is
				// moving, so look again sooner.
				backoff = min(backoff, 4*m.minBO)
			}
			seen = res.latest
			sleep, backoff = m.sleepFor(ks, res, backoff)
		}
		s.mu.Unlock()
		if seq > 0 {
			if d := time.Until(keepAt); d <= 0 {
				_, err := m.keepTicket(ctx, l, seq)
				if err != nil {
					if ctx.Err() != nil {
						return leave(notAcquired(l.key, ctx.Err()))
					}
					return leave(m.acquireErr(ctx, l.key, err))
				}
				keepAt = time.Now().Add(m.lineTTL / 3)
				continue
			} else if sleep < 0 || sleep > d {
				sleep = d
			}
		}
		var timerC <-chan time.Time
		if sleep >= 0 {
			timer.Reset(sleep)
			timerC = timer.C
		}
		select {
		case <-w.wake:
		case <-timerC:
		case <-ctx.Done():
			return leave(notAcquired(l.key, ctx.Err()))
		case <-m.done:
			return leave(lock.ErrClosed)
		}
		if !timer.Stop() && timerC != nil {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// sleepFor is how long the head may sleep after the failed attempt res
// before trying again, and the next backoff. Call with the shard's mutex
// held.
func (m *Manager) sleepFor(ks *keyState, res attemptResult, backoff time.Duration,
) (time.Duration, time.Duration) {
	if ks.holder != nil {
		if left := time.Until(ks.holderUntil); left > 0 {
			// Our own lease holds the key: its Release wakes us; this
			// timer covers a lease left to expire.
			return left + time.Millisecond, 0
		}
	}
	backoff = min(max(2*backoff, m.minBO), m.maxBO)
	if res.remaining <= 0 {
		return 0, backoff // the key changed under us: try again at once
	}
	return min(backoff, res.remaining+time.Millisecond), backoff
}

// leave takes w, whose Acquire returns err without the key, out of its
// key's queue.
func (m *Manager) leave(s *shard, w *waiter, err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.remove(w.l.key, w)
	return err
}

func (m *Manager) acquireErr(ctx context.Context, key string, err error) error {
	if m.closed.Load() {
		return lock.ErrClosed
	}
	if cerr := ctx.Err(); cerr != nil {
		return notAcquired(key, cerr)
	}
	if isCtxErr(err) {
		return notAcquired(key, err)
	}
	return m.wrapErr("acquire", key, err)
}

// released forgets l as its key's local holder and wakes the key's head
// waiter, so that it tries at once.
func (m *Manager) released(l *Lease) {
	s := m.shard(l.key)
	s.mu.Lock()
	defer s.mu.Unlock()
	ks := s.keys[l.key]
	if ks == nil {
		return
	}
	if ks.holder == l {
		ks.holder = nil
	}
	if len(ks.q) > 0 {
		ks.q[0].poke()
	}
}
