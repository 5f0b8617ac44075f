// Package lockredis is the Redis backend of package lock: a Manager that
// hands out TTL-bounded leases on string keys, stored in Redis or Redis
// Cluster by the Lua scripts in scripts/ through the typed wrappers in gen/.
//
// For user key k and prefix p (default "klauthed:") the lease lives in the
// Redis string p+"{"+k+"}" (its value is the lease's token, its PTTL the
// lease's remaining time) and the fence counter in p+"{"+k+"}:fence". Both
// names share a hash tag, so the same code works on one Redis and on Redis
// Cluster. One exception: a key starting with "}" would make the tag empty,
// which Redis Cluster ignores, so its names are p+"}{~}"+k+"}" and that plus
// ":fence" (tag "~"); see LockKey. The prefix must not contain braces. The fence counter has no TTL: every distinct key ever locked
// leaves one small integer key (about 60 bytes plus the key name) behind.
//
// # Waiting
//
// Acquire on a held key does not poll. The waiters of one Manager on one key
// form a FIFO queue, and at most one of them talks to Redis at a time; the
// others are woken one by one. The one in front wakes on the first of:
//
//   - a local hand-off, when a lease of the same Manager on the key is
//     released: the release sends the front waiter's acquire right behind
//     its compare-and-delete, in one round trip on one connection, so the
//     waiter holds the key when Release returns (it waits on if another
//     process's request got in between);
//   - a Redis client-side caching invalidation of the key (its release,
//     expiry, or any other change by another process), which the Manager
//     subscribes to with a cached read-only inspect of the key whenever the
//     holder is not one of its own leases;
//   - a timer at the holder's remaining TTL (the acquire script replies it),
//     which covers holders that never release.
//
// When client-side caching is unavailable (ClientOption.DisableCache, a
// managed Redis that forbids CLIENT TRACKING, miniredis, or NewWithClient
// without forwarded invalidations), releases by other processes are found
// by polling with exponential backoff from MinBackoff to MaxBackoff, never
// sleeping past the holder's remaining TTL; local hand-offs stay immediate.
//
// Under contention inside one process an acquisition costs two Redis
// commands (acquire and release); a waiter that loses to another process
// spends one failed acquire and, at most, one cached inspect more.
//
// # Replication and failover
//
// Redis replicates asynchronously: a replica promoted after its primary
// failed may lack the latest locks and fence increments, so a second
// holder may be admitted and fences may repeat. Options.WaitReplicas sends
// WAIT with each acquisition and refresh and fails them with
// ErrNotReplicated when too few replicas acknowledged; this narrows the
// window but, as the Redis documentation of WAIT says, does not make Redis
// strongly consistent (see Options.WaitReplicas).
package lockredis

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/gen"
	"github.com/redis/rueidis"
)

// DefaultPrefix is the key prefix used when Options.Prefix is empty.
const DefaultPrefix = "klauthed:"

const (
	// DefaultMinBackoff and DefaultMaxBackoff bound the polling interval of
	// waiters when invalidations are unavailable.
	DefaultMinBackoff = time.Millisecond
	DefaultMaxBackoff = 50 * time.Millisecond

	// DefaultCleanupTimeout bounds the release sent after an Acquire or
	// TryAcquire whose context ended while its request was in flight.
	DefaultCleanupTimeout = time.Second

	// inspectCacheTTL bounds how long rueidis may serve a cached inspect
	// reply from memory; the entry is dropped earlier by any invalidation.
	inspectCacheTTL = time.Minute

	// unknownTTLWait is how long a waiter sleeps, when invalidations are
	// available, for a holder whose key has no expiry (set by someone other
	// than these scripts).
	unknownTTLWait = time.Second
)

// Options configures a Manager. The zero value of every field means its
// documented default. Options is copied by New; later changes have no
// effect.
type Options struct {
	// ClientOption configures the rueidis client that New builds. Pass
	// several InitAddress entries (or one node of a cluster) for Redis
	// Cluster. New installs its own OnInvalidations hook and calls the
	// caller's hook, if any, after it. Set DisableCache for servers without
	// client-side caching (RESP2-only, some managed offerings, miniredis):
	// waiting then polls with backoff. Ignored by NewWithClient.
	//
	// A context that ends while its call is in flight can make rueidis, in
	// its default mode, drop the shared connection (when that call was the
	// only one in flight) so that concurrent callers reconnect, and a
	// caller waiting on a dial started by a cancelled call may fail with
	// it. Set AlwaysPipelining to keep the connection through such
	// cancellations; it cost about 8% in sequential acquire+release latency
	// here and nothing measurable under concurrency.
	ClientOption rueidis.ClientOption

	// Prefix is put before every key name. Empty means DefaultPrefix. All
	// processes (and other languages) sharing locks must use the same prefix.
	Prefix string

	// MinBackoff and MaxBackoff bound the polling interval of a waiter
	// whose holder is in another process when invalidations are
	// unavailable: it starts at MinBackoff and doubles up to MaxBackoff,
	// never sleeping past the holder's remaining TTL. Zero means
	// DefaultMinBackoff and DefaultMaxBackoff. MinBackoff must not exceed
	// MaxBackoff.
	MinBackoff, MaxBackoff time.Duration

	// CleanupTimeout bounds the release that Acquire and TryAcquire send,
	// on a context of their own, when the caller's context ended while the
	// acquire request was in flight (the lock may have been taken for a
	// caller who is no longer there). Zero means DefaultCleanupTimeout;
	// negative disables the release, leaving such a lock to its TTL.
	CleanupTimeout time.Duration

	// InvalidationsForwarded, for NewWithClient only, says that the
	// client has client-side caching enabled and that its
	// ClientOption.OnInvalidations calls the Manager's HandleInvalidations.
	// Without it a Manager from NewWithClient polls as if DisableCache
	// were set.
	InvalidationsForwarded bool

	// WaitReplicas, when positive, makes every acquisition (TryAcquire, and
	// each winning attempt of Acquire) and every Refresh wait until at
	// least this many replicas of the primary holding the key acknowledged
	// the write: the script and WAIT WaitReplicas WaitTimeout are sent
	// together in one batch, which rueidis runs on one dedicated
	// connection (WAIT is a blocking command), so WAIT covers the script's
	// write. Zero (the default) sends no WAIT; negative is invalid.
	//
	// An acquisition that fewer replicas acknowledged within WaitTimeout is
	// undone (the lock is deleted if it still holds the new token, best
	// effort, bounded by CleanupTimeout, else it ends at its TTL) and
	// returns an error wrapping ErrNotReplicated with the counts; Acquire
	// stops waiting then. Such a Refresh returns the error too but leaves
	// the lease extended on the primary: the caller may retry, carry on, or
	// Release.
	//
	// What it buys: a lock (and its fence) that a replica acknowledged is
	// on that replica when the call returns, so a failover that promotes
	// that replica keeps the lock and the fence sequence. What it does not:
	// the Redis documentation of WAIT says that it "does not make Redis a
	// strongly consistent store"; Sentinel and Cluster promote the best
	// replica they can reach, best effort, so a failover may still promote
	// one that did not acknowledge, and the lock and the last fence are
	// then lost (fences given out later may repeat). A replica
	// acknowledges having received the write, not having persisted it.
	//
	// The cost: each acquisition and refresh waits for the replicas (one
	// replication round trip on top of the script's) and takes a
	// connection from rueidis's blocking pool (ClientOption.BlockingPoolSize)
	// for that time. A failed attempt on a held key also carries the WAIT;
	// it returns at once while enough replicas are connected and have
	// acknowledged this connection's earlier writes, else after
	// WaitTimeout (so does the EVALSHA that met NOSCRIPT before the EVAL
	// retry). The Redis user needs the WAIT command (ACL +wait).
	// On Redis Cluster WAIT goes to the node that ran the script; a MOVED
	// redirect of the script during a slot migration is not covered.
	WaitReplicas int

	// WaitTimeout bounds how long WAIT waits for the replicas, rounded up
	// to whole milliseconds. Zero means DefaultWaitTimeout; negative is
	// invalid. Ignored when WaitReplicas is zero. The caller's context
	// still bounds the whole call.
	WaitTimeout time.Duration
}

// Manager is a lock.Manager on Redis. It is safe for concurrent use; it must
// not be copied. Make one with New or NewWithClient and Close it when done.
// A nil *Manager returns lock.ErrClosed from every call.
type Manager struct {
	client    rueidis.Client
	ownClient bool
	prefix    string
	notify    bool // invalidations arrive for keys this Manager inspects
	minBO     time.Duration
	maxBO     time.Duration
	cleanup   time.Duration
	waitN     int64 // Options.WaitReplicas
	waitMS    int64 // Options.WaitTimeout in whole milliseconds

	seed   maphash.Seed
	shards [numShards]shard

	closed  atomic.Bool
	closeMu sync.RWMutex // orders wg.Add against Close
	done    chan struct{}
	ctx     context.Context // cancelled by Close; parent of watch contexts
	cancel  context.CancelFunc
	wg      sync.WaitGroup // watch goroutines
}

var _ lock.Manager = (*Manager)(nil)

// New builds a rueidis client from opts.ClientOption and returns a Manager
// that owns it (Close closes it).
//
// It installs the Manager's invalidation hook as
// opts.ClientOption.OnInvalidations (calling the caller's hook after it).
// On failure (bad options, Redis unreachable, or a server without RESP3
// while DisableCache is false) it returns the error and nothing to close.
func New(opts Options) (*Manager, error) {
	m, err := newManager(opts)
	if err != nil {
		return nil, err
	}
	co := opts.ClientOption
	userHook := co.OnInvalidations
	co.OnInvalidations = func(msgs []rueidis.RedisMessage) {
		m.HandleInvalidations(msgs)
		if userHook != nil {
			userHook(msgs)
		}
	}
	c, err := rueidis.NewClient(co)
	if err != nil {
		m.cancel()
		return nil, fmt.Errorf("lockredis: new client: %w", err)
	}
	m.client = c
	m.ownClient = true
	m.notify = !co.DisableCache
	return m, nil
}

// NewWithClient returns a Manager on a client the caller built and keeps
// owning: Close does not close c.
//
// The cost: the Manager cannot install an invalidation hook on a client that
// already exists, so unless opts.InvalidationsForwarded is set (c has
// client-side caching on and its OnInvalidations calls HandleInvalidations),
// waiters for locks held by other processes poll with backoff (see Options)
// instead of waking on the release. Hand-offs between leases of the same
// Manager stay immediate. opts.ClientOption is ignored.
func NewWithClient(c rueidis.Client, opts Options) (*Manager, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: nil client", lock.ErrInvalidOptions)
	}
	m, err := newManager(opts)
	if err != nil {
		return nil, err
	}
	m.client = c
	m.notify = opts.InvalidationsForwarded
	return m, nil
}

func newManager(opts Options) (*Manager, error) {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(opts.Prefix, "{}") {
		return nil, fmt.Errorf("%w: Prefix %q contains a brace, which would change the keys' hash tag", lock.ErrInvalidOptions, opts.Prefix)
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	if opts.MinBackoff < 0 || opts.MaxBackoff < opts.MinBackoff {
		return nil, fmt.Errorf("%w: want 0 < MinBackoff (%v) <= MaxBackoff (%v)", lock.ErrInvalidOptions, opts.MinBackoff, opts.MaxBackoff)
	}
	if opts.CleanupTimeout == 0 {
		opts.CleanupTimeout = DefaultCleanupTimeout
	}
	if opts.WaitReplicas < 0 || opts.WaitTimeout < 0 {
		return nil, fmt.Errorf("%w: want WaitReplicas (%d) and WaitTimeout (%v) >= 0", lock.ErrInvalidOptions, opts.WaitReplicas, opts.WaitTimeout)
	}
	if opts.WaitTimeout == 0 {
		opts.WaitTimeout = DefaultWaitTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		waitN:   int64(opts.WaitReplicas),
		waitMS:  int64((opts.WaitTimeout + time.Millisecond - 1) / time.Millisecond),
		prefix:  opts.Prefix,
		minBO:   opts.MinBackoff,
		maxBO:   opts.MaxBackoff,
		cleanup: opts.CleanupTimeout,
		seed:    maphash.MakeSeed(),
		done:    make(chan struct{}),
		ctx:     ctx,
		cancel:  cancel,
	}
	for i := range m.shards {
		m.shards[i].keys = make(map[string]*keyState)
	}
	return m, nil
}

// Client returns the rueidis client the Manager uses.
func (m *Manager) Client() rueidis.Client {
	if m == nil {
		return nil
	}
	return m.client
}

// Close stops the Manager: waiting Acquire calls return lock.ErrClosed,
// lease watches stop, and, for a Manager from New, the rueidis client is
// closed, so calls in flight return lock.ErrClosed too. Leases still held
// are not released; they end at their TTL. Close is idempotent and returns
// nil; on a nil Manager it returns lock.ErrClosed.
func (m *Manager) Close() error {
	if m == nil {
		return lock.ErrClosed
	}
	m.closeMu.Lock()
	if m.closed.Load() {
		m.closeMu.Unlock()
		return nil
	}
	m.closed.Store(true)
	close(m.done)
	m.closeMu.Unlock()
	m.cancel()
	m.wg.Wait()
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		for _, ks := range s.keys {
			if ks.timer != nil {
				ks.timer.Stop()
			}
		}
		s.mu.Unlock()
	}
	if m.ownClient {
		m.client.Close()
	}
	return nil
}

// HandleInvalidations wakes the waiters and lease watches of the keys in
// msgs, the argument of rueidis's ClientOption.OnInvalidations; nil means
// every key (a reconnect or FLUSHALL). New installs it itself; call it only
// from the hook of a client passed to NewWithClient. It does no I/O and
// returns at once.
func (m *Manager) HandleInvalidations(msgs []rueidis.RedisMessage) {
	if m == nil {
		return
	}
	if msgs == nil {
		m.eventAll()
		return
	}
	for i := range msgs {
		k, err := msgs[i].ToString()
		if err != nil || !strings.HasPrefix(k, m.prefix) {
			continue
		}
		m.keyEvent(k, nil, true)
	}
}

// keys returns the lock key and the fence key of key in one allocation:
// prefix+"{"+key+"}" and that plus ":fence". A key starting with "}" would
// give an empty hash tag "{}", which Redis Cluster ignores (it then hashes
// the whole name, putting the two names in different slots); such a key
// gets prefix+"}{~}"+key+"}" instead, whose tag is "~". No other key can
// produce that name (every other lock key continues the prefix with "{").
func (m *Manager) keys(key string) (lockKey, fenceKey string) {
	open := "{"
	if key[0] == '}' {
		open = emptyTagOpen
	}
	var b strings.Builder
	b.Grow(len(m.prefix) + len(open) + len(key) + len("}:fence"))
	b.WriteString(m.prefix)
	b.WriteString(open)
	b.WriteString(key)
	b.WriteString("}:fence")
	fenceKey = b.String()
	return fenceKey[:len(fenceKey)-len(":fence")], fenceKey
}

// emptyTagOpen starts the names of keys that begin with "}"; see keys.
const emptyTagOpen = "}{~}"

// LockKey returns the Redis name of key's lock for prefix: prefix+"{"+key+"}",
// or prefix+"}{~}"+key+"}" when key starts with "}" (see the package
// documentation). The fence counter is LockKey(prefix, key)+":fence". It
// does not validate its arguments.
func LockKey(prefix, key string) string {
	if key != "" && key[0] == '}' {
		return prefix + emptyTagOpen + key + "}"
	}
	return prefix + "{" + key + "}"
}

// newLease validates key and ttl and makes the lease an acquire would
// return, before any I/O.
func (m *Manager) newLease(key string, ttl time.Duration) (*Lease, error) {
	if m == nil || m.closed.Load() {
		return nil, lock.ErrClosed
	}
	if err := lock.ValidateKey(key); err != nil {
		return nil, err
	}
	if err := lock.ValidateTTL(ttl, lock.MaxTTL); err != nil {
		return nil, err
	}
	l := &Lease{m: m, key: key, token: lock.NewToken()}
	l.lockKey, l.fenceKey = m.keys(key)
	return l, nil
}

// TryAcquire makes one attempt to take key for ttl (truncated to whole
// milliseconds): one EVALSHA of the acquire script.
//
// On success it returns a *Lease (as lock.Lease) and true. When another live
// holder owns key it returns (nil, false, nil) and changes nothing; it does
// not queue behind this Manager's waiters. Bad input returns an error
// wrapping lock.ErrInvalidKey or lock.ErrInvalidTTL before any I/O; a closed
// or nil Manager returns lock.ErrClosed. On backend failure it returns the
// error; if ctx ended while the request was in flight, the lock it may have
// taken is released (bounded by Options.CleanupTimeout), otherwise such a
// lock ends at its TTL. With Options.WaitReplicas set, a win that too few
// replicas acknowledged is undone and returns an error wrapping
// ErrNotReplicated (see Options.WaitReplicas).
func (m *Manager) TryAcquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, bool, error) {
	l, err := m.newLease(key, ttl)
	if err != nil {
		return nil, false, err
	}
	res, err := m.attempt(ctx, l, ttl)
	if err != nil {
		return nil, false, fmt.Errorf("lockredis: acquire %q: %w", key, err)
	}
	if !res.Acquired {
		return nil, false, nil
	}
	l.fence = res.Fence
	m.noteHolder(l, ttl)
	return l, true, nil
}

// Acquire waits until it holds key for ttl (truncated to whole
// milliseconds), or until ctx is done. Waiting does not poll; see the
// package documentation.
//
// On success it returns a *Lease (as lock.Lease). When ctx ends first, the
// error wraps both lock.ErrNotAcquired and ctx.Err(), and the caller holds
// nothing (a lock won by a request in flight at that moment is released,
// bounded by Options.CleanupTimeout). When the Manager is closed while
// waiting it returns lock.ErrClosed. Bad input and backend failures are
// returned as by TryAcquire; a backend failure ends the wait, and so does
// ErrNotReplicated (Options.WaitReplicas).
func (m *Manager) Acquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	l, err := m.newLease(key, ttl)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, notAcquired(key, err)
	}
	s := m.shard(l.lockKey)

	// Fast path: nobody of this Manager is waiting for key, so try at once
	// without registering anything.
	s.mu.Lock()
	ks := s.keys[l.lockKey]
	queued := ks != nil && (len(ks.q) > 0 || ks.active > 0)
	var w *waiter
	if queued {
		w = newWaiter(l, ttl)
		ks.q = append(ks.q, w)
	}
	s.mu.Unlock()
	if !queued {
		res, err := m.attempt(ctx, l, ttl)
		if err != nil {
			return nil, m.acquireErr(ctx, key, err)
		}
		if res.Acquired {
			l.fence = res.Fence
			m.noteHolder(l, ttl)
			return l, nil
		}
		w = newWaiter(l, ttl)
		s.mu.Lock()
		ks = s.state(l.lockKey)
		var e0 uint64
		if len(ks.q) > 0 || ks.active > 0 {
			// Another waiter already handles the key: queue behind it.
			ks.q = append(ks.q, w)
			queued = true
		} else {
			// Events before this point were not counted for us; wait
			// covers that gap with its inspect, or with the local
			// holder's hand-off (a holder is recorded only in an entry
			// that has existed since it acquired).
			ks.active++
			e0 = ks.events
		}
		s.mu.Unlock()
		if !queued {
			return m.wait(ctx, l, ttl, w, false, e0, res.TTL, true)
		}
	}
	return m.wait(ctx, l, ttl, w, true, 0, 0, false)
}

// attempt runs the acquire script once for l. If ctx ended while the request
// was in flight it releases whatever the request may have taken before
// returning the error.
func (m *Manager) attempt(ctx context.Context, l *Lease, ttl time.Duration) (gen.AcquireResult, error) {
	var res gen.AcquireResult
	var err error
	// A lease won by this request has its TTL counted from no earlier
	// than now; a failed attempt's stamp is overwritten by the next one.
	l.sent = time.Now()
	if m.waitN > 0 {
		res, err = m.acquireReplicated(ctx, l, ttl)
	} else {
		res, err = gen.Acquire(ctx, m.client, l.lockKey, l.fenceKey, string(l.token), ttl)
	}
	if err == nil {
		return res, nil
	}
	if m.closed.Load() {
		return res, lock.ErrClosed
	}
	if (ctx.Err() != nil || isCtxErr(err)) && m.cleanup > 0 {
		m.cleanupAcquire(ctx, l, ttl)
	}
	return res, err
}

// cleanupAcquire releases, synchronously and on a context of its own, a lock
// that an acquire request abandoned in flight may have taken. The release
// script deletes the key only if it holds l's token, so it never frees
// another holder. If the release reaches Redis before the acquire (possible
// only with several connections per node) the lock ends at its TTL.
func (m *Manager) cleanupAcquire(ctx context.Context, l *Lease, ttl time.Duration) {
	d := min(m.cleanup, ttl)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d)
	defer cancel()
	_, _ = gen.Release(cctx, m.client, l.lockKey, string(l.token))
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

func isCtxErr(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

func notAcquired(key string, cerr error) error {
	return fmt.Errorf("%w: key %q: %w", lock.ErrNotAcquired, key, cerr)
}

// mapErr turns rueidis's "client closing" after Close into lock.ErrClosed.
func (m *Manager) mapErr(err error) error {
	if m.closed.Load() {
		return lock.ErrClosed
	}
	return err
}
