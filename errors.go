package lock

import (
	"errors"
	"fmt"
	"time"
)

// ErrNotHeld is returned by Refresh when the lease no longer holds its key:
// it expired, was released, or the key was taken or deleted. Run's function
// context is cancelled with a cause wrapping it when the lease is lost.
var ErrNotHeld = errors.New("lock: not held")

// ErrNotAcquired is returned by Acquire, together with the context's error,
// when the context ended before the key could be taken.
var ErrNotAcquired = errors.New("lock: not acquired")

// ErrInvalidKey is returned for an empty key or one longer than MaxKeyLen.
var ErrInvalidKey = errors.New("lock: invalid key")

// ErrInvalidTTL is returned for a TTL under MinTTL or over the backend's
// limit (MaxTTL for the backends in this module).
var ErrInvalidTTL = errors.New("lock: invalid ttl")

// ErrClosed is returned by every call on a Manager that was closed, or on a
// nil Manager, and by calls on leases of a closed Manager.
var ErrClosed = errors.New("lock: manager closed")

// ErrInvalidKeyEmpty is the error ValidateKey returns for "". It wraps
// ErrInvalidKey; test with errors.Is(err, ErrInvalidKey).
var ErrInvalidKeyEmpty = fmt.Errorf("%w: empty key", ErrInvalidKey)

var errKeyTooLong = fmt.Errorf("%w: longer than %d bytes", ErrInvalidKey, MaxKeyLen)

type ttlError struct{ ttl, max time.Duration }

func (e *ttlError) Error() string {
	return fmt.Sprintf("lock: invalid ttl %v: want %v to %v", e.ttl, MinTTL, e.max)
}

func (e *ttlError) Unwrap() error { return ErrInvalidTTL }
