// Package lockredis is the Redis backend of package lock: a Manager that
// hands out TTL-bounded leases on string keys, stored in Redis or Redis
// Cluster by the Lua scripts in scripts/ through the typed wrappers in gen/.
//
// For user key k and prefix p (default "klauthed:") the lease lives in the
// Redis string p+"{"+k+"}" (its value is the lease's token, its PTTL the
// lease's remaining time), the fence counter in p+"{"+k+"}:fence", and the
// key's waiting line in p+"{"+k+"}:line", ":line:deadlines" and
// ":line:args". All share a hash tag, so the same code works on one Redis
// and on Redis Cluster (see LockKey for keys that start with "}"). The prefix
// must not contain braces. The fence counter has no TTL: every distinct key
// ever locked leaves one small integer key (about 60 bytes plus the key name)
// behind; the line's keys vanish when the line is empty.
//
// # Waiting
//
// Acquire on a held key does not poll. Its failed attempt takes a place in
// the key's line in Redis, a FIFO shared by every process and language that
// speaks protocol 2 of scripts/README.md. When the holder releases, the
// release script hands the key to the line's head itself: it sets the lock to
// the head's token, allocates its fence, and publishes "fence ttl token" on
// the head's Manager's Pub/Sub channel, so the woken waiter holds the key
// when it wakes and only the head's process is woken. A waiter of the
// releasing Manager learns it from the release's reply instead. Waiters keep
// their place alive by repeating the acquire every Options.LineTTL/3; an
// entry not kept alive leaves the line after LineTTL. The head also tries
// again when the holder's TTL ends, which covers holders that never release.
// On one server (not Cluster) the Manager's channel is strict: a release
// skips a waiter whose channel nobody hears, such as one whose process was
// killed, and hands the key to the next (scripts/README.md, "Tokens and
// channels"); a key handed to a waiter that died anyway is free at its TTL.
// Where Pub/Sub is unavailable (a server or ACL without it), waiters poll
// with exponential backoff from MinBackoff to MaxBackoff, never sleeping past
// the holder's remaining TTL, and keep their place in line.
//
// Waiters are served in the order their first attempt reached Redis, across
// processes. TryAcquire never joins the line and does not take a key that the
// line is waiting for.
//
// # Replication and failover
//
// Redis replicates asynchronously: a replica promoted after its primary
// failed may lack the latest locks and fence increments, so a second
// holder may be admitted and fences may repeat. Options.WaitReplicas sends
// WAIT with each acquisition and refresh and fails them with
// ErrNotReplicated when too few replicas acknowledged; this narrows the
// window but does not make Redis strongly consistent (see the README's
// "Replication and failover" section).
package lockredis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
	// waiters when Pub/Sub is unavailable.
	DefaultMinBackoff = time.Millisecond
	DefaultMaxBackoff = 50 * time.Millisecond

	// DefaultCleanupTimeout bounds the release sent, in the background,
	// after an Acquire or TryAcquire whose context ended while it waited or
	// while its request was in flight.
	DefaultCleanupTimeout = time.Second

	// DefaultLineTTL is how long a waiter's place in a key's line lasts
	// without being kept alive, when Options.LineTTL is zero.
	DefaultLineTTL = 3 * time.Second

	// inspectCacheTTL bounds how long rueidis may serve a cached inspect
	// reply from memory; the entry is dropped earlier by any invalidation.
	inspectCacheTTL = time.Minute
)

// Options configures a Manager. The zero value of every field means its
// documented default. Options is copied by New; later changes have no
// effect.
type Options struct {
	// ClientOption configures the rueidis client that New builds. Pass
	// several InitAddress entries (or one node of a cluster) for Redis
	// Cluster. New installs its own OnInvalidations hook (used by
	// Lease.Lost) and calls the caller's hook, if any, after it. Set
	// DisableCache for servers without client-side caching; Lost then
	// reports a loss only when Refresh finds it. Ignored by NewWithClient.
	// AlwaysPipelining keeps the shared connection through cancelled calls
	// (see the README's "Cancelled calls" section).
	ClientOption rueidis.ClientOption

	// Prefix is put before every key name. Empty means DefaultPrefix. All
	// processes (and other languages) sharing locks must use the same prefix.
	Prefix string

	// LineTTL is how long a waiter's place in a key's line lasts unless the
	// waiter keeps it alive, which Acquire does every LineTTL/3 while it
	// waits. It bounds how long a waiter whose process died (or stopped)
	// stays in line. Zero means DefaultLineTTL; it must be at least 30ms.
	LineTTL time.Duration

	// MinBackoff and MaxBackoff bound the polling interval of a waiter when
	// Pub/Sub is unavailable: it starts at MinBackoff and doubles up to
	// MaxBackoff, never sleeping past the holder's remaining TTL. Zero means
	// DefaultMinBackoff and DefaultMaxBackoff. MinBackoff must not exceed
	// MaxBackoff.
	MinBackoff, MaxBackoff time.Duration

	// CleanupTimeout bounds the release that Acquire and TryAcquire send, in
	// the background after they returned, when the caller's context ended
	// while they waited or while a request was in flight (the key may have
	// been taken, or handed, to a caller who is no longer there). Zero means
	// DefaultCleanupTimeout; negative disables the release, leaving such a
	// lock to its TTL and such a place in line to LineTTL.
	CleanupTimeout time.Duration

	// InvalidationsForwarded, for NewWithClient only, says that the client
	// has client-side caching enabled and that its
	// ClientOption.OnInvalidations calls the Manager's HandleInvalidations.
	// Without it, Lost on leases of a Manager from NewWithClient reports a
	// loss only when Refresh finds it.
	InvalidationsForwarded bool

	// WaitReplicas, when positive, makes every acquisition (TryAcquire, and
	// Acquire however it won) and every Refresh wait until at least this
	// many replicas acknowledged the write, by sending WAIT WaitReplicas
	// WaitTimeout in the same batch, on one connection. An acquisition that
	// too few acknowledged is undone (best effort, else it ends at its TTL)
	// and returns an error wrapping ErrNotReplicated; such a Refresh returns
	// the error and leaves the lease extended. Zero (the default) sends no
	// WAIT; negative is invalid. The Redis user needs +wait. What it buys and
	// what it does not: the README's "Replication and failover" section.
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
	channel   string // this Manager's Pub/Sub channel for hand-offs
	notify    bool   // invalidations arrive for keys this Manager inspects
	lineTTL   time.Duration
	minBO     time.Duration
	maxBO     time.Duration
	cleanup   time.Duration
	waitN     int64 // Options.WaitReplicas
	waitMS    int64 // Options.WaitTimeout in whole milliseconds

	seed    maphash.Seed
	shards  [numShards]shard       // lease watches, by lock key
	waiting [numShards]waiterShard // Acquire calls in line, by token
	pushed  atomic.Bool            // subscribed: hand-offs arrive as pushes

	closed  atomic.Bool
	closeMu sync.RWMutex // orders wg.Add against Close
	done    chan struct{}
	ctx     context.Context // cancelled by Close; parent of background work
	cancel  context.CancelFunc
	wg      sync.WaitGroup // watches, the subscriber, cleanups
}

var _ lock.Manager = (*Manager)(nil)

// New builds a rueidis client from opts.ClientOption and returns a Manager
// that owns it (Close closes it).
//
// It installs the Manager's invalidation hook as
// opts.ClientOption.OnInvalidations (calling the caller's hook after it),
// and subscribes, in the background, to the Manager's hand-off channel. On
// failure (bad options, Redis unreachable, or a server without RESP3 while
// DisableCache is false) it returns the error and nothing to close.
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
	m.start()
	return m, nil
}

// NewWithClient returns a Manager on a client the caller built and keeps
// owning: Close does not close c. Waiting works as with New (hand-offs
// arrive over Pub/Sub on c); Lease.Lost sees losses early only with
// opts.InvalidationsForwarded. opts.ClientOption is ignored.
func NewWithClient(c rueidis.Client, opts Options) (*Manager, error) {
	if c == nil {
		return nil, fmt.Errorf("lockredis: %w: nil client", lock.ErrInvalidOptions)
	}
	m, err := newManager(opts)
	if err != nil {
		return nil, err
	}
	m.client = c
	m.notify = opts.InvalidationsForwarded
	m.start()
	return m, nil
}

func newManager(opts Options) (*Manager, error) {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(opts.Prefix, "{}") {
		return nil, fmt.Errorf("lockredis: %w: Prefix %q contains a brace, which would "+
			"change the keys' hash tag", lock.ErrInvalidOptions, opts.Prefix)
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	if opts.MinBackoff < 0 || opts.MaxBackoff < opts.MinBackoff {
		return nil, fmt.Errorf("lockredis: %w: want 0 < MinBackoff (%v) <= MaxBackoff (%v)",
			lock.ErrInvalidOptions, opts.MinBackoff, opts.MaxBackoff)
	}
	if opts.LineTTL == 0 {
		opts.LineTTL = DefaultLineTTL
	}
	if opts.LineTTL < minLineTTL || opts.LineTTL > lock.MaxTTL {
		return nil, fmt.Errorf("lockredis: %w: LineTTL %v: want %v to %v",
			lock.ErrInvalidOptions, opts.LineTTL, minLineTTL, lock.MaxTTL)
	}
	if opts.CleanupTimeout == 0 {
		opts.CleanupTimeout = DefaultCleanupTimeout
	}
	if opts.WaitReplicas < 0 || opts.WaitTimeout < 0 {
		return nil, fmt.Errorf("lockredis: %w: want WaitReplicas (%d) and WaitTimeout (%v) >= 0",
			lock.ErrInvalidOptions, opts.WaitReplicas, opts.WaitTimeout)
	}
	if opts.WaitTimeout == 0 {
		opts.WaitTimeout = DefaultWaitTimeout
	}
	var id [12]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails (Go 1.24+)
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		waitN:   int64(opts.WaitReplicas),
		waitMS:  int64((opts.WaitTimeout + time.Millisecond - 1) / time.Millisecond),
		prefix:  opts.Prefix,
		channel: opts.Prefix + "wake:" + hex.EncodeToString(id[:]),
		lineTTL: opts.LineTTL.Truncate(time.Millisecond),
		minBO:   opts.MinBackoff,
		maxBO:   opts.MaxBackoff,
		cleanup: opts.CleanupTimeout,
		seed:    maphash.MakeSeed(),
		done:    make(chan struct{}),
		ctx:     ctx,
		cancel:  cancel,
	}
	for i := range m.shards {
		m.shards[i].keys = make(map[string][]*watch)
		m.waiting[i].m = make(map[lock.Token]*waiter)
	}
	return m, nil
}

// minLineTTL is the shortest Options.LineTTL: waiters keep their place every
// LineTTL/3, which must leave room for a round trip.
const minLineTTL = 30 * time.Millisecond

// Client returns the rueidis client the Manager uses.
func (m *Manager) Client() rueidis.Client {
	if m == nil {
		return nil
	}
	return m.client
}

// Close stops the Manager: waiting Acquire calls return lock.ErrClosed (their
// places in line end after LineTTL), lease watches stop, background releases
// still in flight finish (each bounded by CleanupTimeout), and, for a Manager
// from New, the rueidis client is closed, so calls in flight return
// lock.ErrClosed too. Leases still held are not released; they end at their
// TTL. Close is idempotent and returns nil; on a nil Manager it returns
// lock.ErrClosed.
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
	interrupted := m.registered() // before the waiters see done and leave
	close(m.done)
	m.closeMu.Unlock()
	m.leaveLines(interrupted)
	m.cancel()
	m.wg.Wait()
	if m.ownClient {
		m.client.Close()
	}
	return nil
}

// leaveLines takes the waiters that Close interrupts out of their lines, in
// one batch bounded by CleanupTimeout, so they do not hold up other
// processes for LineTTL (or, if a key was handed to one of them, its TTL).
func (m *Manager) leaveLines(ls []*Lease) {
	if m.cleanup <= 0 || len(ls) == 0 {
		return
	}
	var wg sync.WaitGroup
	for _, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = m.undo(l)
		}()
	}
	wg.Wait()
}

// registered returns the leases of the waiters registered now.
func (m *Manager) registered() []*Lease {
	var ls []*Lease
	for i := range m.waiting {
		s := &m.waiting[i]
		s.mu.Lock()
		for _, w := range s.m {
			ls = append(ls, w.l)
		}
		s.mu.Unlock()
	}
	return ls
}

// goBackground runs f in a goroutine that Close waits for, unless the
// Manager is closed already; it reports whether f was started.
func (m *Manager) goBackground(f func()) bool {
	m.closeMu.RLock()
	defer m.closeMu.RUnlock()
	if m.closed.Load() {
		return false
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		f()
	}()
	return true
}

// HandleInvalidations wakes the lease watches (Lease.Lost) of the keys in
// msgs, the argument of rueidis's ClientOption.OnInvalidations; nil means
// every key (a reconnect or FLUSHALL). New installs it itself; call it only
// from the hook of a client passed to NewWithClient. It does no I/O and
// returns at once.
func (m *Manager) HandleInvalidations(msgs []rueidis.RedisMessage) {
	if m == nil {
		return
	}
	if msgs == nil {
		m.pokeAllWatches()
		return
	}
	for i := range msgs {
		k, err := msgs[i].ToString()
		if err != nil || !strings.HasPrefix(k, m.prefix) {
			continue
		}
		m.pokeWatches(k)
	}
}

// LockKey returns the Redis name of key's lock for prefix: prefix+"{"+key+"}".
// A key starting with "}" would give an empty hash tag "{}", which Redis
// Cluster ignores (it would then hash the whole name, putting the lock and
// its fence counter in different slots), so such a key is named
// prefix+"}{~}"+key+"}" instead, whose tag is "~"; no other key can produce
// that name. The key's other names append ":fence", ":line",
// ":line:deadlines" and ":line:args". LockKey does not validate its
// arguments.
func LockKey(prefix, key string) string {
	var b strings.Builder
	writeName(&b, prefix, key, "")
	return b.String()
}

// writeName writes key's Redis name with suffix to b: prefix, the opening
// of the hash tag ("{", or "}{~}" for a key starting with "}"), key, "}"
// and suffix. It is the one place the naming rule is written.
func writeName(b *strings.Builder, prefix, key, suffix string) {
	open := "{"
	if key != "" && key[0] == '}' {
		open = "}{~}"
	}
	b.WriteString(prefix)
	b.WriteString(open)
	b.WriteString(key)
	b.WriteByte('}')
	b.WriteString(suffix)
}

// keys returns the five Redis names of key, as the scripts take them, in one
// allocation: the lock and line names are prefixes of the deadlines name,
// and the fence and args names follow it.
func (m *Manager) keys(key string) gen.AcquireKeys {
	const dl, fence, args = ":line:deadlines", ":fence", ":line:args"
	var b strings.Builder
	b.Grow(3*(len(m.prefix)+len(key)+5) + len(dl) + len(fence) + len(args))
	writeName(&b, m.prefix, key, dl)
	f := b.Len()
	writeName(&b, m.prefix, key, fence)
	a := b.Len()
	writeName(&b, m.prefix, key, args)
	all := b.String()
	n := f - len(dl)
	return gen.AcquireKeys{
		LockKey:          all[:n],
		LineKey:          all[:n+len(":line")],
		LineDeadlinesKey: all[:f],
		FenceKey:         all[f:a],
		LineArgsKey:      all[a:],
	}
}

// newLease validates ctx, key and ttl and makes the lease an acquire would
// return, before any I/O.
func (m *Manager) newLease(ctx context.Context, key string, ttl time.Duration) (*Lease, error) {
	if m == nil || m.closed.Load() {
		return nil, lock.ErrClosed
	}
	if err := lock.ValidateContext(ctx); err != nil {
		return nil, err
	}
	if err := lock.ValidateKey(key); err != nil {
		return nil, err
	}
	if err := lock.ValidateTTL(ttl, lock.MaxTTL); err != nil {
		return nil, err
	}
	return &Lease{m: m, key: key, token: lock.NewToken(), k: m.keys(key)}, nil
}

func isCtxErr(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

func notAcquired(key string, cerr error) error {
	return fmt.Errorf("lockredis: key %q: %w: %w", key, lock.ErrNotAcquired, cerr)
}

// mapErr turns rueidis's "client closing" after Close into lock.ErrClosed.
func (m *Manager) mapErr(err error) error {
	if m.closed.Load() {
		return lock.ErrClosed
	}
	return err
}
