package lockredis

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/gen"
)

// Lease is one acquisition of a key on a Manager, returned as lock.Lease by
// TryAcquire and Acquire. Its methods are safe for concurrent use. It also
// implements lock.Watcher and lock.Stamped. A nil *Lease holds nothing: Key
// and Token return "", Fence 0, Refresh lock.ErrNotHeld, Release nil, and
// Lost a closed channel.
type Lease struct {
	m     *Manager
	key   string
	k     gen.AcquireKeys // its five Redis names
	token lock.Token
	fence uint64
	sent  time.Time // no later than when the lease's TTL started on the server

	// readMu orders the watch's reads before Release: a read sent after
	// the release would register tracking of a key nobody watches.
	readMu    sync.RWMutex
	releasing atomic.Bool // a Release is in flight: its own write is no loss
	released  atomic.Bool // a Release got its reply: later calls do no I/O
	notHeld   atomic.Bool // a Refresh found the lease gone
	watch     atomic.Pointer[watch]

	waiter waiter // Acquire's state while it waits; see acquire.go
}

var (
	_ lock.Lease   = (*Lease)(nil)
	_ lock.Watcher = (*Lease)(nil)
	_ lock.Stamped = (*Lease)(nil)
)

// Sent returns a local time no later than when the lease's TTL started on
// the server: when the winning acquire was sent, or, for a key handed over
// by a release, when this waiter's last attempt or the handing release (if
// it was this Manager's) was sent (lock.Stamped).
func (l *Lease) Sent() time.Time {
	if l == nil {
		return time.Time{}
	}
	return l.sent
}

// Key returns the key as passed to the Manager.
func (l *Lease) Key() string {
	if l == nil {
		return ""
	}
	return l.key
}

// Token returns the random token of this acquisition, the value of the lock
// key in Redis while the lease holds it.
func (l *Lease) Token() lock.Token {
	if l == nil {
		return ""
	}
	return l.token
}

// Fence returns the fencing number of this acquisition (see lock.Lease).
func (l *Lease) Fence() uint64 {
	if l == nil {
		return 0
	}
	return l.fence
}

// Refresh sets the lease's remaining time to ttl (truncated to whole
// milliseconds), counted from when Redis runs the refresh script.
//
// On success the lease is held for ttl more. When the lease no longer holds
// its key (released, expired, taken by another, deleted, or lost with a
// restarted Redis) it returns an error wrapping lock.ErrNotHeld and changes
// nothing; a watch started by Lost then reports the loss. Bad ttl returns
// an error wrapping lock.ErrInvalidTTL, a nil ctx lock.ErrInvalidArgument,
// before any I/O; a closed Manager lock.ErrClosed; other backend failures
// leave the lease as it was.
//
// With Options.WaitReplicas set, a refresh that the primary applied but
// fewer replicas acknowledged returns an error wrapping ErrNotReplicated;
// the lease stays held and extended on the primary.
func (l *Lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if err := lock.ValidateContext(ctx); err != nil {
		return err
	}
	if l == nil {
		return fmt.Errorf("lockredis: nil lease: %w", lock.ErrNotHeld)
	}
	if err := lock.ValidateTTL(ttl, lock.MaxTTL); err != nil {
		return err
	}
	if l.released.Load() {
		return fmt.Errorf("lockredis: key %q: released: %w", l.key, lock.ErrNotHeld)
	}
	m := l.m
	if m.closed.Load() {
		return lock.ErrClosed
	}
	var res gen.RefreshResult
	var err error
	if m.waitN > 0 {
		res, err = m.refreshReplicated(ctx, l, ttl)
	} else {
		res, err = gen.Refresh(ctx, m.client, l.k.LockKey, string(l.token), ttl)
	}
	if err != nil && !res.Refreshed {
		return fmt.Errorf("lockredis: refresh %q: %w", l.key, m.mapErr(err))
	}
	if !res.Refreshed {
		l.notHeld.Store(true)
		if w := l.watch.Load(); w != nil {
			w.markLost()
		}
		return fmt.Errorf("lockredis: key %q: %w", l.key, lock.ErrNotHeld)
	}
	if err != nil {
		// Extended on the primary, not acknowledged by enough replicas.
		return fmt.Errorf("lockredis: refresh %q: %w", l.key, m.mapErr(err))
	}
	return nil
}

// Release gives the key up if this lease still holds it (compare-and-delete
// on the token), handing it to the head of the key's line, if anyone waits:
// in one script, so the next holder holds the key when Release returns. It
// stops a watch started by Lost without reporting a loss. When the next
// holder is a waiter of this Manager, Release wakes it and yields the
// processor to it (runtime.Gosched) before returning, as sync.Mutex does in
// starvation mode: the new holder runs at once, and the caller resumes
// after it, which in a program with every processor busy can take a
// scheduling round.
//
// It is idempotent: once a Release got Redis's reply, later calls return
// nil without I/O, and releasing a lease that expired or was taken returns
// nil and frees nobody else's lease. On backend failure it returns the
// error and the lease ends at its TTL at the latest (Release may be called
// again). A nil ctx gives lock.ErrInvalidArgument; a closed Manager
// lock.ErrClosed.
func (l *Lease) Release(ctx context.Context) error {
	if err := lock.ValidateContext(ctx); err != nil {
		return err
	}
	if l == nil || l.released.Load() {
		return nil
	}
	m := l.m
	if m.closed.Load() {
		return lock.ErrClosed
	}
	l.readMu.Lock() // waits for a watch read in flight, if any
	l.releasing.Store(true)
	l.readMu.Unlock()
	_, err := m.release(ctx, l)
	if err != nil {
		l.releasing.Store(false)
		if w := l.watch.Load(); w != nil {
			w.poke() // it may have skipped a change while we released
		}
		return fmt.Errorf("lockredis: release %q: %w", l.key, m.mapErr(err))
	}
	l.released.Store(true)
	if w := l.watch.Load(); w != nil {
		w.stop()
	}
	return nil
}

// Lost returns a channel that is closed once the Manager has seen that this
// lease no longer holds its key; lock.Run uses it to cancel its function
// promptly.
//
// The first call starts a watch: a goroutine that reads the key through
// Redis client-side caching (one cached inspect), and again after every
// invalidation of the key (a change by anyone, its expiry, a reconnect). A
// cached reply may predate this lease, so a loss is decided only on a read
// sent after the lease was won, never on a cached one. The watch ends at
// Release, at loss, or at the Manager's Close; leases that never call Lost
// cost nothing. Without invalidations (see Options) no goroutine is started
// and the channel is closed only when Refresh finds the lease gone. The
// channel is not closed by the lease's own Release. A nil lease's Lost
// returns a closed channel.
func (l *Lease) Lost() <-chan struct{} {
	if l == nil {
		return closedChan
	}
	if w := l.watch.Load(); w != nil {
		return w.lost
	}
	w := &watch{l: l, lost: make(chan struct{}), ping: make(chan struct{}, 1)}
	m := l.m
	w.ctx, w.cancel = context.WithCancel(m.ctx)
	if !l.watch.CompareAndSwap(nil, w) {
		w.cancel()
		return l.watch.Load().lost
	}
	if l.notHeld.Load() {
		w.markLost()
	}
	if !m.notify || l.released.Load() || l.notHeld.Load() {
		w.cancel()
		return w.lost
	}
	s := m.shard(l.k.LockKey)
	s.mu.Lock()
	s.keys[l.k.LockKey] = append(s.keys[l.k.LockKey], w)
	s.mu.Unlock()
	if !m.goBackground(func() { m.watchLoop(w) }) {
		m.dropWatch(w)
		w.cancel()
	}
	return w.lost
}

var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// watch is the state of one lease's Lost channel.
type watch struct {
	l        *Lease
	lost     chan struct{}
	ping     chan struct{} // cap 1: the key may have changed
	ctx      context.Context
	cancel   context.CancelFunc
	lostOnce sync.Once
}

func (w *watch) poke() {
	select {
	case w.ping <- struct{}{}:
	default:
	}
}

func (w *watch) markLost() { w.lostOnce.Do(func() { close(w.lost) }) }

func (w *watch) stop() { w.cancel() }

// shard holds the lease watches of the lock keys that hash to it.
type shard struct {
	mu   sync.Mutex
	keys map[string][]*watch // by lock key
}

const numShards = 64

func (m *Manager) shard(lockKey string) *shard {
	return &m.shards[maphash.String(m.seed, lockKey)%numShards]
}

// pokeWatches wakes the watches of lockKey: it may have changed.
func (m *Manager) pokeWatches(lockKey string) {
	s := m.shard(lockKey)
	s.mu.Lock()
	for _, w := range s.keys[lockKey] {
		w.poke()
	}
	s.mu.Unlock()
}

// pokeAllWatches wakes every watch: the connection was lost or the server
// flushed its tracking table, so no registration can be trusted.
func (m *Manager) pokeAllWatches() {
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		for _, ws := range s.keys {
			for _, w := range ws {
				w.poke()
			}
		}
		s.mu.Unlock()
	}
}

func (m *Manager) dropWatch(w *watch) {
	k := w.l.k.LockKey
	s := m.shard(k)
	s.mu.Lock()
	ws := s.keys[k]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(s.keys, k)
	} else {
		s.keys[k] = ws
	}
	s.mu.Unlock()
}

// watchLoop reads the key after every invalidation until the lease is seen
// lost or the watch is stopped. It sends no read while the lease's own
// Release is in flight or done: such a read would register tracking of a
// key nobody watches, and its cached reply could be served to a later lease
// of the same key.
func (m *Manager) watchLoop(w *watch) {
	l := w.l
	defer func() {
		m.dropWatch(w)
		w.cancel()
	}()
	var retry *time.Timer
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	backoff := time.Duration(0)
	for {
		var retryC <-chan time.Time
		if w.ctx.Err() != nil {
			return
		}
		// The read is sent on the Manager's context, not the watch's:
		// stopping a watch (at Release) must not cancel a request in flight
		// on the shared connection, which rueidis may answer by dropping it.
		var lost bool
		var err error
		l.readMu.RLock()
		releasing := l.releasing.Load()
		if !releasing {
			lost, err = m.seemsLost(l)
		}
		l.readMu.RUnlock()
		if w.ctx.Err() != nil {
			return
		}
		switch {
		case releasing || l.releasing.Load():
			// Our own Release is under way: its write is no loss. If it
			// fails, it pokes the watch to look again.
		case err == nil && lost:
			w.markLost()
			return
		case err == nil:
			backoff = 0
		case !retryable(err):
			// Redis will not answer this read (NOPERM for the script, an
			// unknown command): asking again helps nobody. Refresh still
			// finds a loss.
			return
		default:
			// Redis unreachable for now (restarting, reconnecting): look
			// again soon; a reconnect also pokes.
			backoff = min(max(2*backoff, m.minBO), m.maxBO)
			if retry == nil {
				retry = time.NewTimer(backoff)
			} else {
				retry.Reset(backoff)
			}
			retryC = retry.C
		}
		// Stopped meanwhile? Then stop, even if a ping is pending too.
		select {
		case <-w.ctx.Done():
			return
		default:
		}
		select {
		case <-w.ping:
		case <-retryC:
		case <-w.ctx.Done():
			return
		}
	}
}

// seemsLost reads l's key through the client-side cache, which also keeps
// the key tracked. A cached reply saying another token (or none) holds the
// key may be older than l itself (cached before l's own acquire, whose
// invalidation is still on its way), so that answer is checked with an
// uncached read, sent after l was won and so ordered after it.
func (m *Manager) seemsLost(l *Lease) (bool, error) {
	ins, err := gen.InspectCache(m.ctx, m.client, l.k.LockKey, inspectCacheTTL)
	if err != nil {
		return false, err
	}
	if ins.Held && ins.Token == string(l.token) {
		return false, nil
	}
	ins, err = gen.Inspect(m.ctx, m.client, l.k.LockKey)
	if err != nil {
		return false, err
	}
	return !ins.Held || ins.Token != string(l.token), nil
}
