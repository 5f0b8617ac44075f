// Package lockmongo is the MongoDB backend of package lock: a Manager that
// hands out TTL-bounded leases on string keys in a collection the caller
// chooses, on the official driver (go.mongodb.org/mongo-driver/v2). It keeps
// mutual exclusion and growing fences across any number of Managers and
// processes on MongoDB and on FerretDB 1.x, whose findAndModify and update
// are not atomic (a read, then a write by _id): the only thing lockmongo
// asks the server to do atomically is to refuse a second document with the
// same _id (a duplicate-key error, E11000).
//
// # Documents
//
// Every _id is a string; k is the key's bytes in unpadded base64url, and
// numbers are 16 hex digits, so they sort as numbers:
//
//	h:k        {base: long, n: long}                     the key's meta document
//	l:k:N      {tok, exp, rel, base, n: N, srv, at}      acquisition N of the key
//	q:k:S      {tok, exp, gone}                          ticket S in the key's line
//
// A lease's fence is base+N. base is the server's time in microseconds when
// the meta document was inserted (so fences also grow across a collection
// dropped and made again, and above the fences of lockmongo's earlier
// one-document format); the meta document's n is only a hint of a recent N.
//
// # Acquiring
//
// An attempt finds the latest acquisition N of the key (from a hint it
// reads l:k:N+1, N+2, ... by _id until one is missing, then N). When N is
// live (not rel, exp ahead of the server's time) the key is held. Otherwise,
// unless a live waiter's ticket is in line before the caller, it inserts
// l:k:N+1 with its token. Of all the attempts that saw N as the latest and
// ended, exactly one insert succeeds; the others get E11000 and look again.
// Nothing but that insert decides who holds the key, so no update's
// atomicity matters. A Refresh or Release updates its own acquisition's
// document by _id, and only its own lease writes it (Refresh and Release of
// one lease run one at a time).
//
// A Refresh whose reply comes back after the lease's old end (as far as the
// Manager's estimate of the server's clock can tell) reports lock.ErrNotHeld
// and releases the lease: the update may have landed after another Manager
// saw the lease ended and inserted N+1. A refresh that returns nil landed
// before that end, so every Manager that later judges the lease sees its new
// end.
//
// # Garbage collection
//
// Acquisition documents and tickets pile up; a pass (CollectGarbage, run by
// every Manager each Options.GCInterval) deletes them from the bottom of
// each key's chain: acquisition N only when it is the lowest left and the
// next one was inserted more than Options.FreeAfter ago, tickets once the
// line has passed them. The latest acquisition and the meta document stay:
// two small documents per key ever locked. An acquire attempt that takes
// longer than FreeAfter/8 (at most a minute) from its first read to the
// reply of its insert gives up what it inserted and starts again, and a
// latest acquisition older than FreeAfter/2 is confirmed with a range query
// on _id: together they make sure no insert gives out a number that was
// given out and collected before. The README has the argument.
//
// # Server time
//
// Expiry is decided on the server's clock as this Manager estimates it: it
// samples the server's clock with hello (its localTime) and keeps the
// interval [lo, hi] the server's time must lie in: its width, the clock
// error bound, is the sample's round trip plus 1 ms (localTime has
// millisecond resolution) plus 100 ppm of the sample's age. A new sample is
// taken in the background once the last is 30 s old, and the narrowest is
// kept. A lease is written to end at hi+ttl, another Manager treats it as
// ended only once exp <= its lo, and Refresh extends a lease only while its
// end is after hi: no lease ends early on the server's clock; the price is
// that a lease may last up to the two Managers' error bounds longer.
//
// # Waiting
//
// The waiters of one Manager on one key form a FIFO queue, and only the one
// in front talks to the server. After its first attempt fails it takes a
// ticket in the key's line (the first free number above the latest
// acquisition's srv, inserted: the insert decides between two takers) and
// keeps it alive every LineTTL/3. An attempt without a ticket (TryAcquire, a
// first attempt) does not take a key while a live ticket is in line; one
// with a ticket only when no live ticket is before it, and its acquisition
// records srv = its number, so that the line moves on. Waiters of all
// Managers are thus served in the order they took their tickets. A waiter
// polls with exponential backoff from MinBackoff to MaxBackoff, never
// sleeping past the holder's remaining time; a Release of a lease of the
// same Manager wakes it at once. Change streams are not used: they need a
// replica set, which FerretDB 1.x does not offer.
package lockmongo

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauthed/lock"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// Defaults for the zero fields of Options.
const (
	DefaultFreeAfter      = 24 * time.Hour
	DefaultGCInterval     = time.Hour
	DefaultLineTTL        = 3 * time.Second
	DefaultMinBackoff     = time.Millisecond
	DefaultMaxBackoff     = 50 * time.Millisecond
	DefaultCleanupTimeout = time.Second
)

// MinFreeAfter is the shortest positive Options.FreeAfter.
const MinFreeAfter = time.Second

// TTLIndexName was the name of the TTL index that earlier versions created
// on exp.
//
// Deprecated: New creates no TTL index any more: a TTL index would delete
// the latest acquisition of a key, which must stay (see the package
// documentation). An index of this name left by an earlier version should
// be dropped.
const TTLIndexName = "klauthed_lock_exp_ttl"

// ServerTime selects how a Manager reads the server's clock; see the package
// documentation.
type ServerTime int

const (
	// ServerTimeAuto is the offset from hello's localTime, the only path.
	ServerTimeAuto ServerTime = iota
	// ServerTimeNow asked for $$NOW in update pipelines. New rejects it
	// with lock.ErrInvalidOptions: acquisitions are inserts, which cannot
	// compute a field on the server.
	ServerTimeNow
	// ServerTimeOffset is the offset from hello's localTime.
	ServerTimeOffset
)

// ErrBadDocument is wrapped by errors about a lock document that lockmongo
// did not write: a field missing or of another type. The call changed
// nothing.
var ErrBadDocument = errBadDoc

// Options configures New. The zero value of every field means its
// documented default. New copies it.
type Options struct {
	// FreeAfter is how long an acquisition document stays after the next
	// acquisition of its key was inserted, before garbage collection may
	// delete it; see the package documentation. It also bounds an acquire
	// attempt to FreeAfter/8 (at most a minute). Zero means
	// DefaultFreeAfter; negative keeps every document (no garbage
	// collection, no bound). A positive value below MinFreeAfter is
	// rejected. Every Manager on a collection must use the same value.
	FreeAfter time.Duration

	// GCInterval is how often the Manager runs a garbage-collection pass
	// in the background (the first one after one interval). Zero means
	// DefaultGCInterval; negative runs none (CollectGarbage still works).
	GCInterval time.Duration

	// LineTTL is how long a waiter's ticket in a key's line lasts unless
	// the waiter keeps it alive, which Acquire does every LineTTL/3. It
	// bounds how long a waiter whose process died holds up the line. Zero
	// means DefaultLineTTL; it must be at least 30ms.
	LineTTL time.Duration

	// ServerTime selects the time path. Zero means ServerTimeAuto.
	ServerTime ServerTime

	// MinBackoff and MaxBackoff bound the polling interval of a waiter
	// whose holder is in another process. Zero means DefaultMinBackoff and
	// DefaultMaxBackoff. MinBackoff must not exceed MaxBackoff.
	MinBackoff, MaxBackoff time.Duration

	// CleanupTimeout bounds the release that is sent, in the background
	// and after the call returned, when the context of an Acquire or
	// TryAcquire ended while its request was in flight (it may have taken
	// the lock for a caller who is gone), and the update that takes a
	// waiter's ticket out of line when it stops waiting. Zero means
	// DefaultCleanupTimeout; negative sends none, leaving such a lock to its
	// TTL and such a ticket to LineTTL.
	CleanupTimeout time.Duration
}

// Info says which server features a Manager uses.
type Info struct {
	// ServerNow is always false: expiry is computed with the offset from
	// hello's localTime.
	ServerNow bool
	// ClockErrorBound is the width of the server clock interval at the
	// time of the call.
	ClockErrorBound time.Duration
	// TTLIndex is always false: documents are collected by CollectGarbage.
	TTLIndex bool
	// ChangeStreams is always false: waiters of other processes poll.
	ChangeStreams bool
}

// Manager is a lock.Manager on a MongoDB collection. It is safe for
// concurrent use and must not be copied. Make one with New and Close it when
// done. A nil *Manager returns lock.ErrClosed from every call.
type Manager struct {
	coll      *mongo.Collection
	clock     serverClock
	minBO     time.Duration
	maxBO     time.Duration
	cleanup   time.Duration
	lineTTL   time.Duration
	freeAfter time.Duration // <= 0: no garbage collection
	round     time.Duration // longest acquire attempt; 0: unbounded
	ancient   time.Duration // a latest acquisition older is confirmed; 0: never

	shards [numShards]shard

	hintMu sync.Mutex
	hints  map[string]hint

	closed  atomic.Bool
	closeMu sync.RWMutex // orders wg.Add against Close
	done    chan struct{}
	ctx     context.Context // cancelled by Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup // background clock samples, cleanups, GC
}

var _ lock.Manager = (*Manager)(nil)

// New returns a Manager that keeps its locks in coll, whose client the
// caller keeps owning (Close does not disconnect it).
//
// It samples the server's clock (three hello commands) and starts the
// background garbage collection (Options.GCInterval); it writes nothing. On
// failure (nil ctx or coll, bad options, server unreachable) it returns an
// error and no Manager.
func New(ctx context.Context, coll *mongo.Collection, opts Options) (*Manager, error) {
	if err := lock.ValidateContext(ctx); err != nil {
		return nil, fmt.Errorf("lockmongo: new: %w", err)
	}
	if coll == nil {
		return nil, fmt.Errorf("lockmongo: new: %w: nil collection", lock.ErrInvalidArgument)
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	if opts.MinBackoff < 0 || opts.MaxBackoff < opts.MinBackoff {
		return nil, fmt.Errorf("lockmongo: new: %w: want 0 < MinBackoff (%v) <= MaxBackoff (%v)",
			lock.ErrInvalidOptions, opts.MinBackoff, opts.MaxBackoff)
	}
	if opts.CleanupTimeout == 0 {
		opts.CleanupTimeout = DefaultCleanupTimeout
	}
	if opts.LineTTL == 0 {
		opts.LineTTL = DefaultLineTTL
	}
	if opts.LineTTL < 30*time.Millisecond {
		return nil, fmt.Errorf("lockmongo: new: %w: LineTTL %v is below 30ms",
			lock.ErrInvalidOptions, opts.LineTTL)
	}
	if opts.FreeAfter == 0 {
		opts.FreeAfter = DefaultFreeAfter
	}
	if opts.FreeAfter > 0 && opts.FreeAfter < MinFreeAfter {
		return nil, fmt.Errorf("lockmongo: new: %w: FreeAfter %v is below %v",
			lock.ErrInvalidOptions, opts.FreeAfter, MinFreeAfter)
	}
	if opts.GCInterval == 0 {
		opts.GCInterval = DefaultGCInterval
	}
	switch opts.ServerTime {
	case ServerTimeAuto, ServerTimeOffset:
	case ServerTimeNow:
		return nil, fmt.Errorf("lockmongo: new: %w: ServerTimeNow is no longer supported: "+
			"acquisitions are inserts, which cannot use $$NOW", lock.ErrInvalidOptions)
	default:
		return nil, fmt.Errorf("lockmongo: new: %w: unknown ServerTime %d",
			lock.ErrInvalidOptions, opts.ServerTime)
	}
	m := &Manager{
		coll:      coll,
		minBO:     opts.MinBackoff,
		maxBO:     opts.MaxBackoff,
		cleanup:   opts.CleanupTimeout,
		lineTTL:   opts.LineTTL,
		freeAfter: opts.FreeAfter,
		hints:     make(map[string]hint),
		done:      make(chan struct{}),
	}
	if m.freeAfter > 0 {
		m.round = min(m.freeAfter/8, time.Minute)
		m.ancient = m.freeAfter / 2
	}
	m.clock.db = coll.Database()
	for i := range m.shards {
		m.shards[i].keys = make(map[string]*keyState)
	}
	if err := m.clock.init(ctx); err != nil {
		return nil, err
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if m.freeAfter > 0 && opts.GCInterval > 0 {
		m.background(func() { m.gcLoop(opts.GCInterval) })
	}
	return m, nil
}

// Info reports the server features the Manager uses. A nil Manager reports
// the zero Info.
func (m *Manager) Info() Info {
	if m == nil {
		return Info{}
	}
	return Info{ClockErrorBound: m.clock.errorBound()}
}

// Close stops the Manager: waiting Acquire calls return lock.ErrClosed and
// later calls on it and its leases too. It waits for background work
// (clock samples, cleanup releases, each bounded) to end. Leases still held
// are not released; they end at their TTL. The caller's client stays
// connected. Close is idempotent and returns nil; on a nil Manager it
// returns lock.ErrClosed.
func (m *Manager) Close() error {
	if m == nil {
		return lock.ErrClosed
	}
	m.closeMu.Lock()
	if m.closed.Swap(true) {
		m.closeMu.Unlock()
		return nil
	}
	m.closeMu.Unlock()
	close(m.done)
	m.cancel()
	m.wg.Wait()
	return nil
}

// newLease validates the arguments of an acquire and makes the lease it
// would return, before any I/O.
func (m *Manager) newLease(ctx context.Context, key string, ttl time.Duration) (*Lease, error) {
	if err := lock.ValidateContext(ctx); err != nil {
		return nil, fmt.Errorf("lockmongo: acquire: %w", err)
	}
	if m == nil || m.closed.Load() {
		return nil, lock.ErrClosed
	}
	if err := lock.ValidateKey(key); err != nil {
		return nil, err
	}
	if err := lock.ValidateTTL(ttl, lock.MaxTTL); err != nil {
		return nil, err
	}
	return &Lease{m: m, key: key, token: lock.NewToken(), ttl: ttl}, nil
}

// TryAcquire makes one attempt to take key for ttl (truncated to whole
// milliseconds): one findOneAndUpdate, plus one read when the key is held.
//
// On success it returns a *Lease (as lock.Lease) and true. When another live
// holder owns key it returns (nil, false, nil) and changes nothing. It never
// jumps the queue: while an Acquire or TryAcquire of this Manager waits for
// or tries key, it returns (nil, false, nil) without I/O, so that one
// request per key and Manager is in flight at a time. A nil ctx returns an error
// wrapping lock.ErrInvalidArgument, bad key or ttl lock.ErrInvalidKey or
// lock.ErrInvalidTTL, a nil or closed Manager lock.ErrClosed, all before any
// I/O. A server error (network, auth, a document of another shape) is
// returned wrapped, with the key; the document is as it was, except that
// when ctx ended while the request was in flight the lock may have been
// taken, and a release is then sent in the background (bounded by
// Options.CleanupTimeout), else it ends at its TTL.
func (m *Manager) TryAcquire(ctx context.Context, key string, ttl time.Duration,
) (lock.Lease, bool, error) {
	l, err := m.newLease(ctx, key, ttl)
	if err != nil {
		return nil, false, err
	}
	if !m.beginTry(key) {
		return nil, false, nil
	}
	res, err := m.attempt(ctx, l, 0)
	if err != nil || !res.acquired {
		m.endTry(key, nil)
		if err != nil {
			return nil, false, m.wrapErr("acquire", key, err)
		}
		return nil, false, nil
	}
	l.fence, l.n, l.exp = res.fence, res.n, res.exp
	m.endTry(key, l)
	return l, true, nil
}

// attempt runs acquireOnce for l, again at once (at most twice more) when
// the key changed under it, and sends a cleanup release in the background
// when ctx ended while a request was in flight.
func (m *Manager) attempt(ctx context.Context, l *Lease, seq int64) (attemptResult, error) {
	retries := 0
	for range 3 {
		res, err := m.acquireOnce(ctx, l, seq)
		if errors.Is(err, errRetry) {
			if retries++; retries == 3 {
				return attemptResult{}, errSlow
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil || isCtxErr(err) {
				m.cleanupAcquire(l)
			}
			return res, err
		}
		if res.acquired || res.remaining > 0 || res.rejoin {
			return res, nil
		}
	}
	return attemptResult{}, nil
}

// errSlow is returned when attempts keep taking longer than FreeAfter/8.
var errSlow = errors.New("acquire attempts took longer than FreeAfter/8 three times; " +
	"the server is too slow for this FreeAfter")

// cleanupAcquire releases, in the background and bounded by CleanupTimeout,
// what an acquire request abandoned in flight may have taken: it reads the
// acquisition document the request was inserting and marks it released if
// it carries l's token, so it never frees another holder.
func (m *Manager) cleanupAcquire(l *Lease) {
	n := l.tryN.Load()
	if m.cleanup <= 0 || n == 0 {
		return
	}
	m.background(func() {
		ctx, cancel := context.WithTimeout(m.ctx, min(m.cleanup, max(l.ttl, 100*time.Millisecond)))
		defer cancel()
		d, err := m.readLease(ctx, l.key, n)
		if err == nil && d != nil && d.tok == string(l.token) && !d.rel {
			_, _ = m.setByID(ctx, leaseID(l.key, n), bson.D{{Key: fRel, Value: true}})
		}
	})
}

// background runs f in a goroutine that Close waits for, unless the Manager
// is closed, and reports whether it started it.
func (m *Manager) background(f func()) bool {
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

// wrapErr turns err from a server call into the error a caller gets.
func (m *Manager) wrapErr(op, key string, err error) error {
	if m.closed.Load() {
		return lock.ErrClosed
	}
	return fmt.Errorf("lockmongo: %s %q: %w", op, key, err)
}

func isCtxErr(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

func notAcquired(key string, cerr error) error {
	return fmt.Errorf("lockmongo: key %q: %w: %w", key, lock.ErrNotAcquired, cerr)
}
