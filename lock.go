// Package lock is the contract every klauthed lock backend meets: a Manager
// hands out TTL-bounded, mutually exclusive leases on string keys, and every
// Lease carries a random Token and a monotonic Fence.
//
// Backends live in sub-packages: lockredis (Redis and Redis Cluster, built on
// the Lua scripts in scripts/) and lockmem (in process, with an injectable
// Clock). The conformance suite in locktest checks that a backend keeps the
// rules below; a third-party backend can run it too.
//
// Rules every backend keeps:
//
//  1. At most one live holder per key. A holder's lease ends at Release or
//     when its TTL passes; after that the key is free.
//  2. Refresh and Release carry the token: a lease that outlived its TTL can
//     never free or extend the next holder's lease (compare-and-delete).
//  3. Fences for one key only grow, also after the key expired and was taken
//     again, so storage behind the lock can reject a stale holder's writes.
//  4. Acquiring again with the same token while still holding is idempotent.
//  5. Errors are for bad input and backend failure only, each a sentinel
//     usable with errors.Is; contention is not an error.
//  6. Expiry runs on the backend's clock (the Redis server's, or lockmem's
//     injected Clock), never on a timestamp sent by a client.
package lock

import (
	"context"
	"time"
)

// Manager hands out leases on keys. Implementations are safe for concurrent
// use by multiple goroutines.
type Manager interface {
	// TryAcquire makes one attempt to take key for ttl.
	//
	// On success it returns the new Lease and true. When another live holder
	// owns key it returns (nil, false, nil): contention is not an error. On
	// bad input (see ValidateKey, ValidateTTL) or backend failure it returns
	// a non-nil error and leaves key unchanged, except that a backend failure
	// after the request reached the server may leave a lease nobody holds,
	// which then ends at its TTL.
	TryAcquire(ctx context.Context, key string, ttl time.Duration) (Lease, bool, error)

	// Acquire waits until it holds key for ttl, or until ctx is done.
	//
	// On success it returns the Lease. When ctx ends first, the error wraps
	// both ErrNotAcquired and ctx.Err() (so errors.Is works with either),
	// and the caller holds nothing. Bad input and backend failures are
	// returned as by TryAcquire.
	Acquire(ctx context.Context, key string, ttl time.Duration) (Lease, error)
}

// Lease is one acquisition of a key. Its methods are safe for concurrent use.
type Lease interface {
	// Key returns the key as the caller passed it to the Manager.
	Key() string

	// Token returns the random token that identifies this acquisition.
	Token() Token

	// Fence returns the fencing number of this acquisition: strictly greater
	// than the fence of every earlier acquisition of the same key, also
	// across releases and expiries. Pass it to storage that rejects writes
	// carrying a fence lower than one it already accepted.
	Fence() uint64

	// Refresh sets the lease's remaining time to ttl, counted from when the
	// backend handles the call.
	//
	// On success the lease stays held for ttl. When the lease is no longer
	// the holder (it expired, was released, or the key was taken or deleted)
	// it returns an error wrapping ErrNotHeld and changes nothing. Bad ttl
	// gives ErrInvalidTTL; backend failure leaves the lease as it was.
	Refresh(ctx context.Context, ttl time.Duration) error

	// Release gives the key up if this lease still holds it.
	//
	// It is idempotent: releasing a lease that was already released, or that
	// expired, returns nil and never frees another holder's lease. It returns
	// an error only on backend failure, in which case the lease ends at its
	// TTL at the latest.
	Release(ctx context.Context) error
}

// Watcher is implemented by leases whose backend can tell that the lease was
// lost before the next Refresh would find out: lockredis watches the key with
// Redis client-side caching invalidations. Run uses it when present.
type Watcher interface {
	// Lost returns a channel that is closed once the backend has seen that
	// this lease no longer holds its key. It is not closed by the lease's own
	// Release. Calling Lost may start the watch; it is cheap to call again.
	// A nil lease holds nothing, so its Lost returns a closed channel.
	Lost() <-chan struct{}
}

// Stamped is implemented by leases that know when the request that won them
// left this process. The backend's TTL runs from no earlier than that moment,
// so Sent()+ttl is a safe local bound for the end of the lease until it is
// refreshed; Run uses it when present, and otherwise the moment Acquire
// returned, which is later by up to one reply's latency.
type Stamped interface {
	// Sent returns the local time the winning request was sent.
	Sent() time.Time
}

// MinTTL is the shortest TTL any backend accepts: Redis expiry has
// millisecond resolution.
const MinTTL = time.Millisecond

// MaxTTL is the longest TTL the backends in this module accept. A lock that
// must outlive it should be refreshed (see Run).
const MaxTTL = 365 * 24 * time.Hour

// MaxKeyLen is the longest key, in bytes, the backends in this module accept.
const MaxKeyLen = 64 << 10

// ValidateKey reports whether key is usable: non-empty and at most MaxKeyLen
// bytes. Any bytes are allowed, including braces, NUL and invalid UTF-8. The
// error wraps ErrInvalidKey.
func ValidateKey(key string) error {
	if key == "" {
		return errKeyEmpty
	}
	if len(key) > MaxKeyLen {
		return errKeyTooLong
	}
	return nil
}

// ValidateTTL reports whether ttl lies in [MinTTL, limit], limit being the
// backend's longest TTL. Backends truncate a valid ttl to whole
// milliseconds. The error wraps ErrInvalidTTL.
func ValidateTTL(ttl, limit time.Duration) error {
	if ttl < MinTTL || ttl > limit {
		return &ttlError{ttl: ttl, limit: limit}
	}
	return nil
}

// ValidateContext reports whether ctx is usable: every call that takes a
// context returns this error, wrapping ErrInvalidArgument, for a nil one
// instead of panicking.
func ValidateContext(ctx context.Context) error {
	if ctx == nil {
		return errNilContext
	}
	return nil
}
