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

// ErrInvalidArgument is returned for a nil context, and by Run for a nil
// function: programming errors that a backend reports instead of panicking.
var ErrInvalidArgument = errors.New("lock: invalid argument")

// The errors ValidateKey returns; both wrap ErrInvalidKey, which is what
// callers test with errors.Is.
var (
	errKeyEmpty   = fmt.Errorf("%w: empty key", ErrInvalidKey)
	errKeyTooLong = fmt.Errorf("%w: longer than %d bytes", ErrInvalidKey, MaxKeyLen)
	errNilContext = fmt.Errorf("%w: nil context", ErrInvalidArgument)
)

type ttlError struct{ ttl, limit time.Duration }

func (e *ttlError) Error() string {
	return fmt.Sprintf("lock: invalid ttl %v: want %v to %v", e.ttl, MinTTL, e.limit)
}

func (e *ttlError) Unwrap() error { return ErrInvalidTTL }
