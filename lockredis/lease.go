package lockredis

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/gen"
	"github.com/redis/rueidis"
)

// Lease is one acquisition of a key on a Manager, returned as lock.Lease by
// TryAcquire and Acquire. Its methods are safe for concurrent use. It also
// implements lock.Watcher. A nil *Lease holds nothing: Key and Token return
// "", Fence 0, Refresh lock.ErrNotHeld and Release nil.
type Lease struct {
	m        *Manager
	key      string
	lockKey  string // shares its bytes with fenceKey
	fenceKey string
	token    lock.Token
	fence    uint64
	sent     time.Time // when the winning acquire request was sent

	released atomic.Bool // a Release got its reply: later calls do no I/O
	notHeld  atomic.Bool // a Refresh found the lease gone
	watch    atomic.Pointer[watch]
}

var (
	_ lock.Lease   = (*Lease)(nil)
	_ lock.Watcher = (*Lease)(nil)
	_ lock.Stamped = (*Lease)(nil)
)

// Sent returns the local time the acquire request that won this lease was
// sent: the lease's TTL on the server started no earlier (lock.Stamped).
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
// an error wrapping lock.ErrInvalidTTL before any I/O; a closed Manager
// lock.ErrClosed; other backend failures leave the lease as it was.
//
// With Options.WaitReplicas set, a refresh that the primary applied but
// fewer replicas acknowledged returns an error wrapping ErrNotReplicated;
// the lease stays held and extended on the primary (a failover to a replica
// that missed it would bring back the earlier expiry).
func (l *Lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if l == nil {
		return fmt.Errorf("%w: nil lease", lock.ErrNotHeld)
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
	var res gen.RefreshResult
	var err error
	if m.waitN > 0 {
		res, err = m.refreshReplicated(ctx, l, ttl)
	} else {
		res, err = gen.Refresh(ctx, m.client, l.lockKey, string(l.token), ttl)
	}
	if err != nil && !res.Refreshed {
		return fmt.Errorf("lockredis: refresh %q: %w", l.key, m.mapErr(err))
	}
	if !res.Refreshed {
		l.notHeld.Store(true)
		if w := l.watch.Load(); w != nil {
			w.markLost()
		}
		return fmt.Errorf("%w: key %q", lock.ErrNotHeld, l.key)
	}
	s := m.shard(l.lockKey)
	s.mu.Lock()
	if ks := s.keys[l.lockKey]; ks != nil && ks.holder == l {
		ks.holderUntil = start.Add(ttl)
	}
	s.mu.Unlock()
	if err != nil {
		// Extended on the primary, not acknowledged by enough replicas.
		return fmt.Errorf("lockredis: refresh %q: %w", l.key, m.mapErr(err))
	}
	return nil
}

// Release gives the key up if this lease still holds it (compare-and-delete
// on the token) and hands the key to the next waiter of the same Manager:
// that waiter's acquire is sent right behind the release, in the same round
// trip (not with Options.WaitReplicas, where the waiter is woken to try).
// It stops a watch started by Lost without reporting a loss.
//
// It is idempotent: once a Release got Redis's reply, later calls return
// nil without I/O, and releasing a lease that expired or was taken returns
// nil and frees nobody else's lease. On backend failure it returns the
// error and the lease ends at its TTL at the latest (Release may be called
// again). On a closed Manager it returns lock.ErrClosed.
func (l *Lease) Release(ctx context.Context) error {
	if l == nil || l.released.Load() {
		return nil
	}
	m := l.m
	if m.closed.Load() {
		return lock.ErrClosed
	}
	var next *waiter
	var e0 uint64
	if m.waitN == 0 {
		next, e0 = m.takeForHandoff(l)
	}
	var err error
	if next == nil {
		_, err = gen.Release(ctx, m.client, l.lockKey, string(l.token))
	} else {
		// Hand-off: the next waiter's acquire follows the release on the
		// same connection, in the same round trip, so the waiter holds the
		// key as soon as this call returns (unless another process's
		// request got in between, in which case the waiter waits on).
		c := m.client
		sent := time.Now()
		res := c.DoMulti(ctx,
			gen.ReleaseCmd(c, l.lockKey, string(l.token)),
			gen.AcquireCmd(c, next.l.lockKey, next.l.fenceKey, string(next.l.token), next.ttl))
		_, err = gen.ParseRelease(res[0])
		acq, aerr := gen.ParseAcquire(res[1])
		if rerr, ok := rueidis.IsRedisErr(err); ok && rerr.IsNoScript() {
			// The release script was not loaded, so the acquire behind it
			// met the old holder: release with the EVAL fallback and let
			// the waiter try on its own.
			_, err = gen.Release(ctx, c, l.lockKey, string(l.token))
			aerr = rerr
		}
		next.pre = &handoffResult{res: acq, err: aerr, e0: e0, sent: sent}
	}
	if err == nil {
		l.released.Store(true)
		if w := l.watch.Load(); w != nil {
			w.stop()
		}
	}
	// Even after a failure the key may be free now: let the next waiter look.
	m.keyEvent(l.lockKey, l, true)
	if next != nil {
		next.wake <- struct{}{}
	}
	if err != nil {
		return fmt.Errorf("lockredis: release %q: %w", l.key, m.mapErr(err))
	}
	return nil
}

// Lost returns a channel that is closed once the Manager has seen that this
// lease no longer holds its key; lock.Run uses it to cancel its function
// promptly.
//
// The first call starts a watch: a goroutine that reads the key through
// Redis client-side caching (one cached inspect), and again after every
// invalidation of the key (a change by anyone, its expiry, a reconnect),
// until the token in Redis is not this lease's. The watch ends at Release,
// at loss, or at the Manager's Close; leases that never call Lost cost
// nothing. Without invalidations (see Options) no goroutine is started and
// the channel is closed only when Refresh finds the lease gone. The channel
// is not closed by the lease's own Release.
func (l *Lease) Lost() <-chan struct{} {
	if l == nil {
		return nil
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
	m.closeMu.RLock()
	if !m.notify || m.closed.Load() || l.released.Load() || l.notHeld.Load() {
		m.closeMu.RUnlock()
		w.cancel()
		return w.lost
	}
	s := m.shard(l.lockKey)
	s.mu.Lock()
	ks := s.state(l.lockKey)
	ks.watches = append(ks.watches, w)
	s.mu.Unlock()
	m.wg.Add(1)
	m.closeMu.RUnlock()
	go m.watchLoop(w)
	return w.lost
}

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

// watchLoop inspects the key after every invalidation until the lease is
// seen lost or the watch is stopped.
func (m *Manager) watchLoop(w *watch) {
	defer m.wg.Done()
	l := w.l
	defer func() {
		s := m.shard(l.lockKey)
		s.mu.Lock()
		if ks := s.keys[l.lockKey]; ks != nil {
			for i, x := range ks.watches {
				if x == w {
					ks.watches = append(ks.watches[:i], ks.watches[i+1:]...)
					break
				}
			}
			s.maybeDelete(l.lockKey, ks)
		}
		s.mu.Unlock()
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
		// On the Manager's context, not the watch's: stopping a watch (at
		// Release) must not cancel a request in flight on the shared
		// connection, which rueidis may answer by dropping the connection or
		// by failing a dial that concurrent callers are waiting on.
		ins, err := gen.InspectCache(m.ctx, m.client, l.lockKey, inspectCacheTTL)
		if w.ctx.Err() != nil {
			return
		}
		var retryC <-chan time.Time
		switch {
		case err == nil && (!ins.Held || ins.Token != string(l.token)):
			w.markLost()
			return
		case err == nil:
			backoff = 0
		default:
			// Redis unreachable for now (restarting, reconnecting): look
			// again soon; a reconnect also arrives as an invalidation.
			backoff = min(max(2*backoff, m.minBO), m.maxBO)
			if retry == nil {
				retry = time.NewTimer(backoff)
			} else {
				retry.Reset(backoff)
			}
			retryC = retry.C
		}
		select {
		case <-w.ping:
		case <-retryC:
		case <-w.ctx.Done():
			return
		}
	}
}
