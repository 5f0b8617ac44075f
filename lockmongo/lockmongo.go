// Package lockmongo is the MongoDB backend of package lock: a Manager that
// hands out TTL-bounded leases on string keys, one document per key in a
// collection the caller chooses, on the official driver
// (go.mongodb.org/mongo-driver/v2).
//
// # Documents
//
// The lock on user key k is the document
//
//	{_id: BinData(0, k), tok: <token or "">, exp: <date>, n: <long>, base: <long>}
//
// _id is the key's bytes as binary (subtype 0), so any key, including
// invalid UTF-8 and NUL bytes, is one _id. tok is the holder's token, ""
// while free. exp is when the holder's lease ends on the server's clock,
// or, while free, when it was released. n counts the key's acquisitions and
// base is the server's time in microseconds when the document was created;
// a lease's fence is base+n. Release clears tok and keeps the document, so
// n, and with it the fence, grows across releases and expiries. base keeps
// fences growing even after a free document was garbage-collected (see
// below): a document made later starts above every fence the deleted one
// gave out, as long as acquisitions of one key come less than one per
// microsecond on average and the deleted document had been free for longer
// than the clocks involved are wrong.
//
// Acquire is one findOneAndUpdate with upsert on _id that matches only a
// free or expired document of the right shape; when the key is held the
// upsert meets the existing _id and the server answers with a duplicate-key
// error (E11000), after which one read fetches the holder's expiry.
// Refresh and Release are single-document updates that match the token.
// Nothing spans two documents or two requests, so nothing is half-written:
// a document of another shape (a field missing or of another type) never
// matches, and the call reports it as an error wrapping ErrBadDocument.
//
// # Server time
//
// Expiry is decided on the server's clock, in one of two ways; Info reports
// which one a Manager uses, and Options.ServerTime can force one.
//
//   - $$NOW (MongoDB 4.2 and later): acquire and refresh are update
//     pipelines that compare and compute exp with the server's $$NOW. New
//     detects it by sending one such update that matches nothing.
//   - Offset (servers without update pipelines, such as FerretDB 1.x): the
//     Manager samples the server's clock with hello (its localTime) and
//     keeps the interval [lo, hi] the server's time must lie in: its width,
//     the clock error bound, is the sample's round trip plus 1 ms (localTime
//     has millisecond resolution) plus 100 ppm of the sample's age. A new
//     sample is taken in the background once the last is 30 s old, and the
//     narrowest is kept. A lease is written to end at hi+ttl and another
//     Manager treats it as expired only once exp <= its lo, so no lease
//     ends early on the server's clock; the price is that a lease may last
//     up to the two Managers' error bounds longer. Refresh extends only a
//     lease whose exp is after hi. Release uses $currentDate (the server's
//     clock) on both paths.
//
// # Waiting
//
// Acquire on a held key does not hammer the server. The waiters of one
// Manager on one key form a FIFO queue, and only the one in front talks to
// the server:
//
//   - a Release by a lease of the same Manager hands the key to the front
//     waiter in the same request (one findOneAndUpdate moves tok from the
//     releasing lease to the waiter and increments n), so the waiter holds
//     the key when Release returns;
//   - otherwise the front waiter polls with exponential backoff from
//     MinBackoff to MaxBackoff, never sleeping past the holder's remaining
//     time as read from its exp; while the holder is a lease of this
//     Manager it sleeps until that lease's expiry, since its Release will
//     hand the key over.
//
// Change streams are not used: they need a replica set, and the servers
// this backend is tested on (FerretDB 1.x) do not offer them, so waiters of
// other processes find a release by polling. A failed poll costs two
// requests (the findOneAndUpdate and the read of the holder's expiry).
//
// # Garbage collection
//
// New creates a TTL index on exp with expireAfterSeconds Options.FreeAfter
// (default one day), so a document whose lease ended (released or expired)
// that long ago is deleted by the server. A held document's exp lies in the
// future, so it is never deleted. Servers without TTL indexes (FerretDB
// 1.x) keep every document: one small document (about 60 bytes plus the
// key) per distinct key ever locked, like the Redis fence counter; Info
// reports it.
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
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Defaults for the zero fields of Options.
const (
	DefaultFreeAfter      = 24 * time.Hour
	DefaultMinBackoff     = time.Millisecond
	DefaultMaxBackoff     = 50 * time.Millisecond
	DefaultCleanupTimeout = time.Second
)

// TTLIndexName is the name of the TTL index New creates on exp.
const TTLIndexName = "klauthed_lock_exp_ttl"

// ServerTime selects how a Manager reads the server's clock; see the package
// documentation.
type ServerTime int

const (
	// ServerTimeAuto uses $$NOW where the server has update pipelines, and
	// the offset otherwise.
	ServerTimeAuto ServerTime = iota
	// ServerTimeNow requires $$NOW: New fails on a server without it.
	ServerTimeNow
	// ServerTimeOffset uses the offset from hello's localTime even where
	// $$NOW is available.
	ServerTimeOffset
)

// ErrBadDocument is wrapped by errors about a lock document that lockmongo
// did not write: a field missing or of another type. The call changed
// nothing.
var ErrBadDocument = errBadDoc

// Options configures New. The zero value of every field means its
// documented default. New copies it.
type Options struct {
	// FreeAfter is how long after a lease ended (released or expired) the
	// server's TTL monitor may delete its document. Zero means
	// DefaultFreeAfter; negative creates no TTL index (documents stay).
	// Every Manager on a collection must use the same value: New fails if
	// the index exists with another. With zero, a server that does not
	// implement TTL indexes is accepted without garbage collection; with a
	// positive value New fails on such a server.
	FreeAfter time.Duration

	// ServerTime selects the time path. Zero means ServerTimeAuto.
	ServerTime ServerTime

	// MinBackoff and MaxBackoff bound the polling interval of a waiter
	// whose holder is in another process. Zero means DefaultMinBackoff and
	// DefaultMaxBackoff. MinBackoff must not exceed MaxBackoff.
	MinBackoff, MaxBackoff time.Duration

	// CleanupTimeout bounds the release that is sent, in the background
	// and after the call returned, when the context of an Acquire or
	// TryAcquire ended while its request was in flight (it may have taken
	// the lock for a caller who is gone). Zero means DefaultCleanupTimeout;
	// negative sends none, leaving such a lock to its TTL.
	CleanupTimeout time.Duration
}

// Info says which server features a Manager uses.
type Info struct {
	// ServerNow is true when expiry is computed with $$NOW on the server,
	// false when with the offset from hello's localTime.
	ServerNow bool
	// ClockErrorBound is the width of the server clock interval at the
	// time of the call (offset path; the $$NOW path uses it only to time
	// wake-ups).
	ClockErrorBound time.Duration
	// TTLIndex is true when free documents are garbage-collected by the TTL
	// index on exp.
	TTLIndex bool
	// ChangeStreams is always false: waiters of other processes poll.
	ChangeStreams bool
}

// Manager is a lock.Manager on a MongoDB collection. It is safe for
// concurrent use and must not be copied. Make one with New and Close it when
// done. A nil *Manager returns lock.ErrClosed from every call.
type Manager struct {
	coll      *mongo.Collection
	serverNow bool
	ttlIndex  bool
	clock     serverClock
	minBO     time.Duration
	maxBO     time.Duration
	cleanup   time.Duration

	shards [numShards]shard

	closed  atomic.Bool
	closeMu sync.RWMutex // orders wg.Add against Close
	done    chan struct{}
	ctx     context.Context // cancelled by Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup // background clock samples and cleanups
}

var _ lock.Manager = (*Manager)(nil)

// New returns a Manager that keeps its locks in coll, whose client the
// caller keeps owning (Close does not disconnect it).
//
// It creates the TTL index on exp (see Options.FreeAfter), detects whether
// the server has $$NOW in update pipelines (one update that matches
// nothing) and samples the server's clock (three hello commands). On
// failure (nil ctx or coll, bad options, server unreachable, an index that
// conflicts, ServerTimeNow on a server without pipelines) it returns an
// error and no Manager; an index it created stays.
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
	if opts.ServerTime < ServerTimeAuto || opts.ServerTime > ServerTimeOffset {
		return nil, fmt.Errorf("lockmongo: new: %w: unknown ServerTime %d",
			lock.ErrInvalidOptions, opts.ServerTime)
	}
	m := &Manager{
		coll:    coll,
		minBO:   opts.MinBackoff,
		maxBO:   opts.MaxBackoff,
		cleanup: opts.CleanupTimeout,
		done:    make(chan struct{}),
	}
	m.clock.db = coll.Database()
	for i := range m.shards {
		m.shards[i].keys = make(map[string]*keyState)
	}
	var err error
	if m.ttlIndex, err = createTTLIndex(ctx, coll, opts.FreeAfter); err != nil {
		return nil, err
	}
	if opts.ServerTime != ServerTimeOffset {
		m.serverNow, err = probeServerNow(ctx, coll)
		if err != nil {
			return nil, err
		}
		if !m.serverNow && opts.ServerTime == ServerTimeNow {
			return nil, fmt.Errorf("lockmongo: new: %w: ServerTimeNow, but the server has no "+
				"update pipelines with $$NOW (MongoDB 4.2 or later)", lock.ErrInvalidOptions)
		}
	}
	if err := m.clock.init(ctx); err != nil {
		return nil, err
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m, nil
}

// createTTLIndex creates the TTL index on exp for freeAfter and reports
// whether the collection has it.
func createTTLIndex(ctx context.Context, coll *mongo.Collection, freeAfter time.Duration,
) (bool, error) {
	if freeAfter < 0 {
		return false, nil
	}
	explicit := freeAfter > 0
	if !explicit {
		freeAfter = DefaultFreeAfter
	}
	secs := int32(min((freeAfter+time.Second-1)/time.Second, 1<<31-1))
	_, err := coll.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: fExp, Value: 1}},
		Options: options.Index().SetName(TTLIndexName).SetExpireAfterSeconds(secs),
	})
	if err == nil {
		return true, nil
	}
	var ce mongo.CommandError
	if errors.As(err, &ce) && ce.Code == codeNotImplemented && !explicit {
		return false, nil // FerretDB 1.x: documented growth instead
	}
	return false, fmt.Errorf("lockmongo: new: create TTL index %q on %q (expireAfterSeconds %d; "+
		"every Manager on a collection needs the same FreeAfter): %w", TTLIndexName, fExp, secs, err)
}

// codeNotImplemented is the server's error code for a feature it lacks.
const codeNotImplemented = 238

// probeID is the _id of the probe update. Lock documents have binary ids,
// so a string id never names one, and the probe matches nothing.
const probeID = "klauthed:lock:probe"

// probeServerNow sends an update pipeline using $$NOW that matches no
// document and reports whether the server accepted it.
func probeServerNow(ctx context.Context, coll *mongo.Collection) (bool, error) {
	err := coll.FindOneAndUpdate(ctx, bson.D{{Key: "_id", Value: probeID}},
		mongo.Pipeline{{{Key: "$set", Value: bson.D{{Key: "probe", Value: "$$NOW"}}}}}).Err()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return true, nil
	}
	var se mongo.ServerError
	if errors.As(err, &se) {
		return false, nil
	}
	if err == nil {
		return false, fmt.Errorf("lockmongo: new: the probe update matched a document with _id %q",
			probeID)
	}
	return false, fmt.Errorf("lockmongo: new: probe for $$NOW: %w", err)
}

// Info reports the server features the Manager uses. A nil Manager reports
// the zero Info.
func (m *Manager) Info() Info {
	if m == nil {
		return Info{}
	}
	return Info{ServerNow: m.serverNow, ClockErrorBound: m.clock.errorBound(), TTLIndex: m.ttlIndex}
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
	res, err := m.attempt(ctx, l)
	if err != nil || !res.acquired {
		m.endTry(key, nil)
		if err != nil {
			return nil, false, m.wrapErr("acquire", key, err)
		}
		return nil, false, nil
	}
	l.fence = res.fence
	m.endTry(key, l)
	return l, true, nil
}

// attempt runs acquireOnce for l, again at once (at most twice more) when
// the document changed under it, and sends a cleanup release in the
// background when ctx ended while a request was in flight.
func (m *Manager) attempt(ctx context.Context, l *Lease) (attemptResult, error) {
	for range 3 {
		l.sent = time.Now()
		res, err := m.acquireOnce(ctx, l.key, string(l.token), l.ttl)
		if err != nil {
			if ctx.Err() != nil || isCtxErr(err) {
				m.cleanupAcquire(l)
			}
			return res, err
		}
		if res.acquired || res.remaining > 0 {
			return res, nil
		}
	}
	return attemptResult{}, nil
}

// cleanupAcquire releases, in the background and bounded by CleanupTimeout,
// what an acquire request abandoned in flight may have taken. The release
// matches l's token, so it never frees another holder.
func (m *Manager) cleanupAcquire(l *Lease) {
	if m.cleanup <= 0 {
		return
	}
	m.background(func() {
		ctx, cancel := context.WithTimeout(context.Background(), min(m.cleanup, l.ttl))
		defer cancel()
		_ = m.releaseOnce(ctx, l.key, string(l.token))
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
	return fmt.Errorf("%w: key %q: %w", lock.ErrNotAcquired, key, cerr)
}
