package lockredis

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/gen"
	"github.com/redis/rueidis"
)

// This file follows one Acquire from its first attempt to the moment it
// holds the key: the attempt joins the key's line in Redis (scripts/README.md,
// "The line"), the waiter sleeps until a release hands it the key (a push on
// the Manager's channel, or the reply of a release by this Manager), and
// wakes by itself only to keep its place alive or when the holder's TTL ends.

// TryAcquire makes one attempt to take key for ttl (truncated to whole
// milliseconds): one EVALSHA of the acquire script, which never joins the
// key's line.
//
// On success it returns a *Lease (as lock.Lease) and true. When another live
// holder owns key, or others wait for it in line, it returns (nil, false,
// nil) and takes nothing. Bad input returns an error wrapping
// lock.ErrInvalidKey, lock.ErrInvalidTTL or lock.ErrInvalidArgument (nil
// ctx) before any I/O; a closed or nil Manager returns lock.ErrClosed. On
// backend failure it returns the error; if ctx ended while the request was
// in flight, the lock it may have taken is released in the background
// (bounded by Options.CleanupTimeout), otherwise such a lock ends at its
// TTL. With Options.WaitReplicas set, a win that too few replicas
// acknowledged is undone and returns an error wrapping ErrNotReplicated.
func (m *Manager) TryAcquire(ctx context.Context, key string, ttl time.Duration) (
	lock.Lease, bool, error) {
	l, err := m.newLease(ctx, key, ttl)
	if err != nil {
		return nil, false, err
	}
	sent := time.Now()
	res, err := m.attempt(ctx, l, ttl, 0)
	if err != nil {
		if ctx.Err() != nil || isCtxErr(err) {
			m.releaseLater(l, ttl)
		}
		return nil, false, fmt.Errorf("lockredis: acquire %q: %w", key, m.mapErr(err))
	}
	if !res.Acquired {
		return nil, false, nil
	}
	l.fence, l.sent = res.Fence, sent
	return l, true, nil
}

// Acquire waits until it holds key for ttl (truncated to whole
// milliseconds), or until ctx is done. Waiting does not poll; see the
// package documentation.
//
// On success it returns a *Lease (as lock.Lease). When ctx ends first, the
// error wraps both lock.ErrNotAcquired and ctx.Err(), and Acquire returns
// at once, without waiting for Redis: its place in line is given up, and a
// key handed to it meanwhile released, in the background (bounded by
// Options.CleanupTimeout; else the place ends after LineTTL and the key at
// its TTL). When the Manager is closed while waiting it returns
// lock.ErrClosed. Bad input and backend failures are returned as by
// TryAcquire: a failure of the first attempt, an error reply from Redis, and
// ErrNotReplicated end the wait; once in line, a waiter rides out lost
// connections and a server that is loading, busy or failing over (retrying
// with backoff, MinBackoff to MaxBackoff) until ctx ends.
func (m *Manager) Acquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	l, err := m.newLease(ctx, key, ttl)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, notAcquired(key, err)
	}
	w := &l.waiter
	w.l, w.ttl = l, ttl
	// Registered before the first attempt: a release may hand the key to
	// this waiter before the attempt's reply arrives. Its wake channel is
	// made only once it waits (see awake).
	m.register(w)
	return m.wait(ctx, w)
}

// waiter is one Acquire call with a place in a key's line.
type waiter struct {
	l   *Lease
	ttl time.Duration
	// since is when the last attempt that left the waiter in line was sent:
	// a key handed to it later got its TTL no earlier.
	since time.Time
	// wake has room for one hand-off and one poke, both sent under the
	// waiter's shard mutex: a hand-off is never dropped, a poke is dropped
	// when one is pending already.
	wake chan wake
}

// wake is what wakes a sleeping waiter: a hand-off, or, when handed is
// false, a poke to try again now (Pub/Sub came or went).
type wake struct {
	handed bool
	grant  grant
}

// grant is a hand-off to a waiter: the key is set to its token with ttl.
type grant struct {
	fence uint64
	ttl   time.Duration
	sent  time.Time // when the handing release was sent, if it was ours
}

// wait is Acquire after registration: attempt, sleep, repeat.
func (m *Manager) wait(ctx context.Context, w *waiter) (lock.Lease, error) {
	l := w.l
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var backoff time.Duration
	for first := true; ; first = false {
		sent := time.Now()
		res, err := m.attempt(ctx, l, w.ttl, m.lineTTL)
		var d time.Duration
		switch {
		case err != nil && (first || !retryable(err) || ctx.Err() != nil || m.closed.Load()):
			m.giveUp(w)
			return nil, m.acquireErr(ctx, l.key, err)
		case err != nil:
			// In line already: ride out a lost connection (rueidis
			// reconnects) until ctx ends; the place lasts LineTTL.
			backoff = min(max(2*backoff, m.minBO), m.maxBO)
			d = backoff
		case res.Acquired:
			m.unregister(w)
			l.fence, l.sent = res.Fence, sent
			return l, nil
		default:
			w.since = sent
			d = m.sleepFor(res, &backoff)
			m.awake(w)
		}
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		var g grant
		select {
		case wk := <-w.wake:
			if !wk.handed {
				continue // a poke: try again now
			}
			g = wk.grant
		case <-timer.C:
			continue
		case <-ctx.Done():
			m.giveUp(w)
			return nil, notAcquired(l.key, ctx.Err())
		case <-m.done:
			m.unregister(w)
			return nil, lock.ErrClosed
		}
		// Handed the key by a release (deliver took w off the registry).
		// The lease's TTL started no earlier than l.sent.
		l.fence, l.sent = g.fence, w.since
		if g.sent.After(l.sent) {
			l.sent = g.sent
		}
		if m.waitN > 0 {
			// Replicas must acknowledge the hand-off too.
			if _, err := m.refreshReplicated(ctx, l, w.ttl); err != nil {
				m.giveUp(w)
				return nil, m.acquireErr(ctx, l.key, err)
			}
			return l, nil
		}
		if time.Since(l.sent) < g.ttl/2 {
			return l, nil
		}
		// Half the TTL or more may be gone (a long sleep before the
		// hand-off, a stall, a delayed push): too old to trust. The next
		// attempt, with the same token, finds the key held by it (and
		// restarts its TTL) or puts the waiter back in line.
		m.register(w)
	}
}

// retryable reports whether a call that failed with err may succeed if it
// is sent again: a lost connection, a deadline of the call's own, or the
// reply of a server that is loading, busy, failing over or resharding. Any
// other reply from Redis (NOPERM, WRONGTYPE, an unknown command) will not
// change, and a closed Manager stays closed. The wait, the background undo
// and the lease watch all decide with it.
func retryable(err error) bool {
	if errors.Is(err, lock.ErrClosed) {
		return false
	}
	re, ok := rueidis.IsRedisErr(err)
	if !ok {
		return true
	}
	if re.IsLoading() || re.IsTryAgain() || re.IsClusterDown() {
		return true
	}
	for _, p := range [...]string{"BUSY", "MASTERDOWN", "READONLY", "MOVED", "ASK"} {
		if strings.HasPrefix(re.Error(), p) {
			return true
		}
	}
	return false
}

// sleepFor is how long a waiter sleeps before it tries again unless a
// hand-off or a poke wakes it: until it must keep its place alive, or the
// holder's TTL ends (staggered by place in line, so the head goes first),
// or, without Pub/Sub, its next poll.
func (m *Manager) sleepFor(res gen.AcquireResult, backoff *time.Duration) time.Duration {
	d := m.lineTTL / 3
	if res.TTL > 0 {
		stagger := time.Duration(min(max(res.Position-1, 0), 50)) * time.Millisecond
		d = min(d, res.TTL+time.Millisecond+stagger)
	}
	if !m.pushed.Load() {
		*backoff = min(max(2**backoff, m.minBO), m.maxBO)
		d = min(d, *backoff)
	}
	return d
}

// attempt runs the acquire script once for l; lineTTL 0 never joins the
// line. With Options.WaitReplicas the script and WAIT go in one batch.
func (m *Manager) attempt(ctx context.Context, l *Lease, ttl, lineTTL time.Duration) (
	gen.AcquireResult, error) {
	if m.waitN > 0 {
		return m.acquireReplicated(ctx, l, ttl, lineTTL)
	}
	res, err := gen.Acquire(ctx, m.client, l.k, m.acquireArgs(l, ttl, lineTTL))
	if err != nil && m.closed.Load() {
		return res, lock.ErrClosed
	}
	return res, err
}

// acquireArgs is the acquire script's ARGV for l. The channel goes only with
// a line ttl (the script reads it only when it joins the line) and while
// the Manager is subscribed: without it, the waiter polls, and a release
// hands it the key without a push (its next attempt finds it). Every change
// of m.pushed pokes the waiters, whose next attempt updates their channel.
func (m *Manager) acquireArgs(l *Lease, ttl, lineTTL time.Duration) gen.AcquireArgs {
	a := gen.AcquireArgs{Token: string(l.token), TTL: ttl, LineTTL: lineTTL}
	if lineTTL > 0 && m.pushed.Load() {
		a.Channel = m.channel
	}
	return a
}

func (m *Manager) acquireErr(ctx context.Context, key string, err error) error {
	if errors.Is(err, lock.ErrClosed) || m.closed.Load() {
		return lock.ErrClosed
	}
	if cerr := ctx.Err(); cerr != nil {
		return notAcquired(key, cerr)
	}
	if isCtxErr(err) {
		// rueidis enforces the context's deadline itself and may report it
		// a moment before ctx.Err does.
		return notAcquired(key, err)
	}
	return fmt.Errorf("lockredis: acquire %q: %w", key, err)
}

// giveUp takes a waiter that stops waiting out of the Manager and out of
// the key's line: the release script, sent in the background, deletes its
// place or, if the key was handed to it meanwhile, releases the key to the
// next in line.
func (m *Manager) giveUp(w *waiter) {
	m.unregister(w)
	m.releaseLater(w.l, w.ttl)
}

// releaseLater is undo in the background, for a caller that has already
// returned. While Redis is unreachable it tries again, with backoff, until
// what it would free has lapsed anyway (the lease's ttl, the place's
// LineTTL) or the Manager is closed; Close waits for the try in flight. It
// does nothing when CleanupTimeout is negative.
//
// Once an undo succeeded it undoes again undoSettle later: the attempt that
// the caller's context cut off may still be on its way on another of
// rueidis's connections (rueidis spreads a key's calls over several) and
// reach Redis after the first undo, taking the key or a place in line.
func (m *Manager) releaseLater(l *Lease, ttl time.Duration) {
	if m.cleanup <= 0 {
		return
	}
	m.goBackground(func() {
		until := time.Now().Add(max(ttl, m.lineTTL))
		backoff := m.minBO
		for settled := false; ; {
			err := m.undo(l)
			if err == nil && !settled {
				settled = true
				if !m.sleep(undoSettle) {
					return
				}
				continue
			}
			if err == nil || !retryable(err) || time.Now().After(until) {
				return // done, or refused for good, or moot
			}
			if !m.sleep(backoff) {
				return
			}
			backoff = min(2*backoff, m.maxBO)
		}
	})
}

// undoSettle is how long after a successful undo releaseLater undoes
// again. An attempt sent before the undo reaches Redis within a few
// milliseconds of it once Redis answers again: it was written first.
const undoSettle = 100 * time.Millisecond

// undo runs the release script for l's token on a context of its own,
// bounded by CleanupTimeout (DefaultCleanupTimeout when that is disabled):
// it frees the key if l holds it (handing it to the line's head) and takes
// l out of the line if it waits there. It never frees another holder; on
// failure the key ends at its TTL and the place after LineTTL.
func (m *Manager) undo(l *Lease) error {
	d := m.cleanup
	if d <= 0 {
		d = DefaultCleanupTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, err := m.release(ctx, l)
	return err
}

// release runs the release script for l's token, and if the script handed
// the key to a waiter of this Manager (it publishes to everyone else),
// delivers the hand-off, stamped with when the release was sent.
func (m *Manager) release(ctx context.Context, l *Lease) (gen.ReleaseResult, error) {
	sent := time.Now()
	res, err := gen.Release(ctx, m.client, gen.ReleaseKeys(l.k), string(l.token), m.channel)
	if err == nil && res.Handed &&
		m.deliver(lock.Token(res.Next), grant{fence: res.Fence, ttl: res.TTL, sent: sent}) {
		// Let the new holder run before this goroutine goes on (as
		// sync.Mutex hands off in starvation mode): a caller that acquires
		// again at once would otherwise wake rueidis's writer, which takes
		// the processor's next slot ahead of the woken waiter.
		runtime.Gosched()
	}
	return res, err
}

// waiterShard holds the registered waiters whose tokens hash to it.
type waiterShard struct {
	mu sync.Mutex
	m  map[lock.Token]*waiter
}

func (m *Manager) waiterShard(t lock.Token) *waiterShard {
	return &m.waiting[maphash.String(m.seed, string(t))%numShards]
}

func (m *Manager) register(w *waiter) {
	s := m.waiterShard(w.l.token)
	s.mu.Lock()
	s.m[w.l.token] = w
	s.mu.Unlock()
}

// awake makes w's wake channel, under its shard's mutex, before w first
// sleeps; deliver and pokeWaiters make it too if they come first.
func (m *Manager) awake(w *waiter) {
	s := m.waiterShard(w.l.token)
	s.mu.Lock()
	w.makeWake()
	s.mu.Unlock()
}

// makeWake makes w's wake channel if it has none. Call with w's shard's
// mutex held.
func (w *waiter) makeWake() {
	if w.wake == nil {
		w.wake = make(chan wake, 2)
	}
}

func (m *Manager) unregister(w *waiter) {
	s := m.waiterShard(w.l.token)
	s.mu.Lock()
	delete(s.m, w.l.token)
	s.mu.Unlock()
}

// deliver hands a grant to the waiter with token t, if it is still
// registered here, and reports whether it was.
func (m *Manager) deliver(t lock.Token, g grant) bool {
	s := m.waiterShard(t)
	s.mu.Lock()
	w := s.m[t]
	if w != nil {
		w.makeWake()
		w.wake <- wake{handed: true, grant: g}
		delete(s.m, t) // one hand-off per place in line
	}
	s.mu.Unlock()
	return w != nil
}

// pokeWaiters makes every registered waiter try again at once: Pub/Sub
// came or went, so a hand-off may have been missed.
func (m *Manager) pokeWaiters() {
	for i := range m.waiting {
		s := &m.waiting[i]
		s.mu.Lock()
		for _, w := range s.m {
			w.makeWake()
			if len(w.wake) == 0 {
				w.wake <- wake{}
			}
		}
		s.mu.Unlock()
	}
}

// start subscribes the Manager to its hand-off channel in the background.
//
// On one server (not Redis Cluster) the channel is strict: it ends in "!",
// telling the scripts to skip, rather than hand the key to, a waiter of this
// Manager whose channel has no subscriber on the server (scripts/README.md,
// "Tokens and channels"). A process killed while it waits thus does not get
// the key: its connections close, and the release goes to the next waiter.
// Waiters send the channel only while the Manager is subscribed, so a
// Manager without Pub/Sub is never skipped. On Cluster a subscriber may sit
// on another node than the key, so the scripts cannot tell.
func (m *Manager) start() {
	if m.client.Mode() != rueidis.ClientModeCluster {
		m.channel += "!"
	}
	m.goBackground(m.subscribe)
}

// subscribe keeps the Manager subscribed to its channel until Close. While
// subscribed, and seen by the scripts (m.pushed), waiters sleep until a
// hand-off arrives; every change of that state pokes them, since a push may
// have been lost. A server or ACL that refuses SUBSCRIBE leaves the waiters
// polling.
//
// The pushes are read through PubSubHooks rather than Receive: rueidis calls
// the hooks on the goroutine that reads the connection, while Receive hands
// each message to a goroutine of its own first, one more wake-up on every
// hand-off.
func (m *Manager) subscribe() {
	backoff := m.minBO
	hooks := rueidis.PubSubHooks{OnMessage: m.onPush}
	for {
		// On a dedicated connection: a server that cannot mix Pub/Sub with
		// commands on one RESP3 connection (miniredis) then still works.
		dc, release := m.client.Dedicate()
		closed := dc.SetPubSubHooks(hooks)
		// Do returns once Redis confirmed the subscription.
		err := dc.Do(m.ctx, dc.B().Subscribe().Channel(m.channel).Build()).Error()
		if err == nil {
			if m.seenByScripts() && !m.pushed.Swap(true) {
				m.pokeWaiters()
			}
			select {
			case err = <-closed:
			case <-m.ctx.Done():
			}
		}
		dc.Close()
		release()
		if m.pushed.Swap(false) {
			m.pokeWaiters()
		}
		if m.ctx.Err() != nil {
			return
		}
		if _, ok := rueidis.IsRedisErr(err); ok {
			return // refused (NOPERM, unknown command): poll instead
		}
		if !m.sleep(backoff) {
			return
		}
		backoff = min(2*backoff, time.Second)
	}
}

// numsub is what the scripts ask before a hand-off to a strict channel.
var numsub = rueidis.NewLuaScript("return redis.call('PUBSUB', 'NUMSUB', ARGV[1])[2]")

// seenByScripts reports whether the scripts see the Manager's subscription
// to its strict channel, asking PUBSUB NUMSUB from a script as they do. A
// setup that hides it from them (a proxy that keeps subscriptions away from
// the servers running the scripts) would have every waiter of this Manager
// skipped; the Manager then stays unpushed, so its waiters poll and keep
// FIFO. A refusal (an ACL without pubsub|numsub) or a failure counts as
// seen: the scripts then count every waiter as hearing anyway. The check is
// bounded by DefaultCleanupTimeout.
func (m *Manager) seenByScripts() bool {
	if !strings.HasSuffix(m.channel, "!") {
		return true
	}
	ctx, cancel := context.WithTimeout(m.ctx, DefaultCleanupTimeout)
	defer cancel()
	n, err := numsub.Exec(ctx, m.client, nil, []string{m.channel}).AsInt64()
	return err != nil || n > 0
}

// sleep waits for d, or until the Manager is closed; it reports false if it
// was closed.
func (m *Manager) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-m.ctx.Done():
		return false
	}
}

// onPush delivers a hand-off published by a release script: "fence ttl
// token".
func (m *Manager) onPush(msg rueidis.PubSubMessage) {
	fence, rest, ok1 := strings.Cut(msg.Message, " ")
	ttl, token, ok2 := strings.Cut(rest, " ")
	f, err1 := strconv.ParseUint(fence, 10, 64)
	ms, err2 := strconv.ParseInt(ttl, 10, 64)
	if !ok1 || !ok2 || err1 != nil || err2 != nil || token == "" {
		return // not ours to understand; the waiter's timer covers it
	}
	m.deliver(lock.Token(token), grant{fence: f, ttl: time.Duration(ms) * time.Millisecond})
}
