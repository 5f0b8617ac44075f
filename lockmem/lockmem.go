// Package lockmem is the in-process backend of package lock: a Manager that
// keeps leases in memory, with the same rules as the Redis backend, for tests
// and single-process programs.
//
// Time comes from an injectable lock.Clock (Options.Clock). With a FakeClock,
// FakeClock.Advance expires leases and wakes the waiters of expired holders,
// so tests of lock-using code need no sleeps.
//
// # Rules, as lockmem keeps them
//
//   - Mutual exclusion: at most one live holder per key. A lease ends at
//     Release, when its TTL passes on the Manager's clock, or at Close.
//   - Release and Refresh identify the lease by the *Lease itself (pointer
//     identity), not by comparing token text: a lease that expired can never
//     free or extend the next holder's lease.
//   - Fences: every shard of the Manager (keys are spread over 64 shards by a
//     seeded hash) has one counter, bumped under the shard's mutex on every
//     acquisition. A key always lives in the same shard, so its fences
//     strictly increase across releases and expiries, even after its entry
//     was removed. They are not consecutive per key (other keys in the shard
//     take numbers too), which the contract does not promise. Unlike Redis,
//     which keeps a fence counter per distinct key forever, this costs 64
//     counters per Manager and nothing per key. Fences start over in a new
//     Manager.
//   - Same-token re-acquire (rule 4 of package lock) exists so that a Redis
//     acquire retried after a lost reply does not lock out its own owner. In
//     process a call cannot lose its reply, so lockmem has no acquire call
//     that takes a token and the rule holds trivially.
//   - Waiting: Acquire queues the caller behind the key, first come first
//     served. Release hands the key straight to the first waiter; the
//     holder's expiry does the same through one timer per contended key (the
//     clock's AfterFunc when the clock is a lock.TimerClock, else a real
//     timer). Nothing polls, and only one waiter is woken per hand-off.
//     TryAcquire never jumps the queue: while anyone waits it fails.
//
// # Memory
//
// A Manager keeps one entry (the *Lease) per held key, plus a small record
// per waiting Acquire that is freed when the call returns. Expired entries
// are removed when their key is next touched, when a waiter's or a Lost
// watch's timer fires, and by a sweep of the shard that runs once the shard
// has taken as many new keys as it held right after its previous sweep (at
// least 64). A sweep visits every entry of its shard, so its cost is
// amortised O(1) per acquisition. Right after a sweep every entry is live, so
// a shard never holds more than twice its largest number of live keys (or
// 128): memory is bounded by live keys, and the expired entries of a burst
// are gone after as many new keys again. A shard's map is rebuilt smaller
// once it holds under 1/8 of its peak size, as Go maps never give back the
// room of deleted entries.
//
// # Tokens
//
// Lease.Token is 128 bits from crypto/rand (lock.NewToken), but it is made
// on the first call to Token, not at acquisition: lockmem itself never
// compares tokens, and reading crypto/rand costs several times more than the
// rest of an acquisition. A token is still unique per acquisition and
// unguessable; it is only unknown until asked for.
package lockmem

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauthed/lock"
)

const (
	numShards = 64
	// minSweep is the fewest new keys a shard takes between two sweeps.
	minSweep = 64
	// shrinkMin is the smallest peak size at which a shard's map is rebuilt
	// smaller after most of its keys are gone.
	shrinkMin = 1024
)

// Options configures New. The zero value is ready to use.
type Options struct {
	// Clock is the time leases expire by. Nil means lock.SystemClock. When
	// it is a lock.TimerClock (FakeClock is one), its AfterFunc wakes waiters
	// when a holder expires, so advancing a fake clock wakes them; any other
	// Clock gets real timers for that, set from durations on the Clock.
	Clock lock.Clock
}

// Manager is an in-process lock.Manager. It is safe for concurrent use. The
// zero value is not usable: make one with New. A Manager must not be copied.
//
// Calls on a nil *Manager return lock.ErrClosed.
type Manager struct {
	clock  lock.Clock
	timers lock.TimerClock
	sys    bool // clock is lock.SystemClock: read time with time.Since(epoch)
	epoch  time.Time
	seed   maphash.Seed
	closed atomic.Bool
	shards [numShards]shard
}

var _ lock.Manager = (*Manager)(nil)

// shard is one part of the key space with its own mutex. Padded so that two
// shards never share a cache line.
type shard struct {
	mu      sync.Mutex
	m       *Manager
	keys    map[string]*Lease // the holder of each held key; nil once closed
	closed  bool
	fence   uint64 // last fence handed out in this shard
	inserts int    // new keys since the last sweep
	sweepAt int    // sweep when inserts reaches this
	peak    int    // largest len(keys) since the map was last rebuilt
	_       [64]byte
}

// New returns a Manager that keeps time by opts.Clock. It starts no
// goroutine; call Close to end every lease and waiter at once.
func New(opts Options) *Manager {
	m := &Manager{clock: opts.Clock, seed: maphash.MakeSeed()}
	if m.clock == nil {
		m.clock = lock.SystemClock
	}
	m.timers = lock.SystemClock
	if tc, ok := m.clock.(lock.TimerClock); ok {
		m.timers = tc
	}
	m.sys = m.clock == lock.SystemClock
	m.epoch = m.clock.Now()
	for i := range m.shards {
		s := &m.shards[i]
		s.m = m
		s.keys = make(map[string]*Lease)
		s.sweepAt = minSweep
	}
	return m
}

// now returns the Manager's time as nanoseconds since its epoch.
func (m *Manager) now() int64 {
	if m.sys {
		return int64(time.Since(m.epoch)) // monotonic, and cheaper than Now
	}
	return int64(m.clock.Now().Sub(m.epoch))
}

func (m *Manager) shard(key string) *shard {
	return &m.shards[maphash.String(m.seed, key)%numShards]
}

func validate(key string, ttl time.Duration) (time.Duration, error) {
	if err := lock.ValidateKey(key); err != nil {
		return 0, err
	}
	if err := lock.ValidateTTL(ttl, lock.MaxTTL); err != nil {
		return 0, err
	}
	return ttl.Truncate(time.Millisecond), nil
}

// TryAcquire makes one attempt to take key for ttl, and never blocks.
//
// On success it returns the new *Lease (as a lock.Lease) and true. When a
// live holder owns key, or other callers are already waiting for it in
// Acquire, it returns (nil, false, nil). An empty or too long key gives an
// error wrapping lock.ErrInvalidKey, a ttl outside [lock.MinTTL, lock.MaxTTL]
// lock.ErrInvalidTTL, a nil or closed Manager lock.ErrClosed; none of these
// changes any state. ttl is truncated to whole milliseconds. ctx is not
// consulted (the call does not wait), but a nil ctx gives an error wrapping
// lock.ErrInvalidArgument, as in every backend.
func (m *Manager) TryAcquire(
	ctx context.Context, key string, ttl time.Duration,
) (lock.Lease, bool, error) {
	if m == nil {
		return nil, false, lock.ErrClosed
	}
	if err := lock.ValidateContext(ctx); err != nil {
		return nil, false, err
	}
	ttl, err := validate(key, ttl)
	if err != nil {
		return nil, false, err
	}
	s := m.shard(key)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, false, lock.ErrClosed
	}
	now := m.now()
	if h := s.keys[key]; h != nil {
		if h.expires > now || s.vacate(h, now, false) != nil {
			s.mu.Unlock()
			return nil, false, nil
		}
	}
	l := s.insert(key, ttl, now)
	s.mu.Unlock()
	return l, true, nil
}

// Acquire waits until it holds key for ttl, or until ctx is done.
//
// On success it returns the new *Lease (as a lock.Lease). Waiters are served
// in the order they arrived; each is woken only when the key is handed to it,
// on the holder's Release or expiry. When ctx ends first (or was already
// done), the error wraps both lock.ErrNotAcquired and ctx.Err(), the caller
// holds nothing and has left the queue. When the Manager is closed while the
// caller waits, it returns lock.ErrClosed. Bad input is reported as by
// TryAcquire, without waiting.
func (m *Manager) Acquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	if m == nil {
		return nil, lock.ErrClosed
	}
	if err := lock.ValidateContext(ctx); err != nil {
		return nil, err
	}
	ttl, err := validate(key, ttl)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, notAcquired(key, err)
	}
	s := m.shard(key)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, lock.ErrClosed
	}
	now := m.now()
	h := s.keys[key]
	if h != nil && h.expires <= now {
		h = s.vacate(h, now, false)
	}
	if h == nil {
		l := s.insert(key, ttl, now)
		s.mu.Unlock()
		return l, nil
	}
	w := &waiter{ttl: ttl, ch: make(chan struct{})}
	if h.q == nil {
		h.q = &queue{}
		h.q.push(w)
		s.armKeyTimer(key, h.q, h.expires-now)
	} else {
		h.q.push(w)
	}
	s.mu.Unlock()

	select {
	case <-w.ch:
		if w.lease == nil {
			return nil, lock.ErrClosed
		}
		return w.lease, nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	closed := s.closed
	switch {
	case closed:
	case w.lease != nil:
		// Handed the key while ctx ended: give it to the next in line.
		if !w.lease.gone {
			w.lease.release()
		}
	case w.q != nil:
		q := w.q
		q.remove(w)
		if q.head == nil {
			q.stopTimer()
			if h := s.keys[key]; h != nil && h.q == q {
				h.q = nil
			}
		}
	}
	s.mu.Unlock()
	if closed {
		return nil, lock.ErrClosed
	}
	return nil, notAcquired(key, ctx.Err())
}

func notAcquired(key string, ctxErr error) error {
	return fmt.Errorf("lockmem: key %q: %w: %w", key, lock.ErrNotAcquired, ctxErr)
}

func notHeld(key string) error {
	return fmt.Errorf("lockmem: key %q: %w", key, lock.ErrNotHeld)
}

// Close ends every lease and wakes every waiter of m: waiting Acquire calls
// return lock.ErrClosed, the Lost channels of live leases close, and every
// later call on m or its leases returns lock.ErrClosed. Close is idempotent
// and returns nil; on a nil *Manager it returns lock.ErrClosed.
func (m *Manager) Close() error {
	if m == nil {
		return lock.ErrClosed
	}
	if !m.closed.CompareAndSwap(false, true) {
		return nil
	}
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		s.closed = true
		for _, h := range s.keys {
			h.gone = true
			h.markLost()
			if q := h.q; q != nil {
				q.stopTimer()
				for w := q.head; w != nil; w = w.next {
					close(w.ch)
				}
				h.q = nil
			}
		}
		s.keys = nil
		s.mu.Unlock()
	}
	return nil
}

// insert makes a lease for the free key and records it as the holder.
// s.mu must be held.
func (s *shard) insert(key string, ttl time.Duration, now int64) *Lease {
	s.fence++
	l := &Lease{s: s, key: key, fence: s.fence, expires: now + int64(ttl)}
	s.keys[key] = l
	if n := len(s.keys); n > s.peak {
		s.peak = n
	}
	s.inserts++
	if s.inserts >= s.sweepAt {
		s.sweep(now)
	}
	return l
}

// vacate ends h, the holder of its key, which was released (released) or
// found expired, and hands the key to the first waiter if there is one. It
// returns the key's new holder, or nil if the key is now free. s.mu must be
// held.
func (s *shard) vacate(h *Lease, now int64, released bool) *Lease {
	h.gone = true
	if !released {
		h.markLost()
	}
	if h.watchStop != nil {
		h.watchStop()
		h.watchStop = nil
	}
	q := h.q
	h.q = nil
	if q == nil {
		delete(s.keys, h.key)
		return nil
	}
	w := q.pop()
	s.fence++
	nl := &Lease{s: s, key: h.key, fence: s.fence, expires: now + int64(w.ttl)}
	s.keys[h.key] = nl
	w.lease = nl
	close(w.ch)
	if q.head != nil {
		nl.q = q
		s.armKeyTimer(nl.key, q, nl.expires-now)
	} else {
		q.stopTimer()
	}
	return nl
}

// sweep removes the expired holders of s. s.mu must be held.
func (s *shard) sweep(now int64) {
	for _, h := range s.keys {
		if h.expires <= now {
			s.vacate(h, now, false)
		}
	}
	s.inserts = 0
	s.sweepAt = max(minSweep, len(s.keys))
	s.maybeShrink()
}

// maybeShrink rebuilds s.keys when it holds under 1/8 of its peak size: Go
// maps never give back the room of deleted entries. s.mu must be held.
func (s *shard) maybeShrink() {
	if s.peak < shrinkMin || len(s.keys) > s.peak/8 {
		return
	}
	keys := make(map[string]*Lease, len(s.keys))
	for k, h := range s.keys {
		keys[k] = h
	}
	s.keys = keys
	s.peak = len(keys)
}

// armKeyTimer (re)starts q's timer to fire after d, when the key's holder
// will have expired unless refreshed. s.mu must be held.
func (s *shard) armKeyTimer(key string, q *queue, d int64) {
	q.stopTimer()
	q.gen++
	gen := q.gen
	q.stop = s.m.timers.AfterFunc(time.Duration(d), func() { s.keyTimer(key, q, gen) })
}

func (s *shard) keyTimer(key string, q *queue, gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || q.gen != gen {
		return
	}
	h := s.keys[key]
	if h == nil || h.q != q {
		return
	}
	now := s.m.now()
	if h.expires <= now {
		s.vacate(h, now, false)
		return
	}
	s.armKeyTimer(key, q, h.expires-now) // refreshed since the timer was set
}

// queue is the FIFO of Acquire calls waiting for one key. It hangs off the
// key's current holder and passes to the next one on hand-off.
type queue struct {
	head, tail *waiter
	gen        uint64      // identifies the current timer
	stop       func() bool // stops the current timer; nil if none
}

func (q *queue) push(w *waiter) {
	w.q = q
	w.prev = q.tail
	if q.tail == nil {
		q.head = w
	} else {
		q.tail.next = w
	}
	q.tail = w
}

func (q *queue) pop() *waiter {
	w := q.head
	q.remove(w)
	return w
}

func (q *queue) remove(w *waiter) {
	if w.prev == nil {
		q.head = w.next
	} else {
		w.prev.next = w.next
	}
	if w.next == nil {
		q.tail = w.prev
	} else {
		w.next.prev = w.prev
	}
	w.prev, w.next, w.q = nil, nil, nil
}

func (q *queue) stopTimer() {
	if q.stop != nil {
		q.stop()
		q.stop = nil
	}
}

// waiter is one Acquire call in a queue. ch is closed when the key was
// handed to it (lease set) or the Manager closed (lease nil).
type waiter struct {
	ttl        time.Duration
	ch         chan struct{}
	lease      *Lease
	q          *queue // nil once out of the queue
	prev, next *waiter
}
