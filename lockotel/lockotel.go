// Package lockotel records OpenTelemetry metrics and traces for any
// lock.Manager. Wrap returns a Manager that passes every call through to the
// one it wraps, unchanged, and measures it on the way: it works for every
// backend (lockmem, lockredis, a third party's) through the contract alone.
//
// It lives in a module of its own, github.com/klauthed/lock/lockotel, so
// that OpenTelemetry stays out of the dependencies of programs that use
// package lock without it.
//
// # Metrics
//
// Instruments come from Options.MeterProvider (the global one by default),
// under the instrumentation scope named ScopeName:
//
//	klauthed.lock.acquire.duration  histogram, s            time in Acquire/TryAcquire
//	klauthed.lock.acquisitions      counter, {acquisition}  calls by outcome
//	klauthed.lock.hold.duration     histogram, s            acquisition to end of lease
//	klauthed.lock.lost              counter, {lease}        leases lost before Release
//	klauthed.lock.waiters           up-down, {waiter}       calls in Acquire now
//	klauthed.lock.holders           up-down, {lease}        leases held now
//
// Attributes (all low-cardinality):
//
//   - lock.operation: "acquire" or "try_acquire" (acquire.duration,
//     acquisitions).
//   - lock.outcome: "acquired"; "contended" (TryAcquire found the key held,
//     which is not an error); "timed_out" (the error wraps
//     lock.ErrNotAcquired or a context error: the caller's context ended,
//     by deadline or cancellation); "error" (anything else: bad input, a
//     closed Manager, backend failure) (acquire.duration, acquisitions).
//   - error.type (OpenTelemetry semantic conventions), on acquisitions and
//     spans that failed: "deadline_exceeded" or "canceled" for timed_out,
//     else "invalid_key", "invalid_ttl", "invalid_argument", "closed",
//     "not_held" after the lock sentinel the error wraps, or "_OTHER".
//   - lock.hold.end: "released" or "lost" (hold.duration).
//   - lock.lost.detected_by: "refresh" or "watcher" (lost).
//   - lock.backend: Options.Backend, when set (every instrument).
//   - lock.key_group: Options.KeyGroup(key), when KeyGroup is set (every
//     instrument). The key itself is never an attribute: keys are
//     unbounded, and each distinct attribute value is a time series.
//
// A lease counts in holders from its acquisition until the first of: its
// first Release call (whatever Release returns: on failure the lease ends
// at its TTL), a Refresh that reports lock.ErrNotHeld, or a Lost channel
// found closed (see below). That moment ends the lease's hold.duration too;
// later calls change no metric. A lease that is abandoned (never released,
// refreshed or watched after it expired) stays counted in holders: nothing
// in the contract tells the wrapper that it ended, and watching every lease
// would cost a server-side watch per lease on lockredis.
//
// A lease counts as lost when Refresh reports lock.ErrNotHeld before any
// Release (detected_by refresh), or, for a lease whose backend implements
// lock.Watcher, when the caller called Lost through the wrapper (lock.Run
// does) and the channel was closed at a later call of Lost, Refresh or
// Release (detected_by watcher). The wrapper never calls Lost on its own,
// and starts no goroutine: a lost lease is counted, and its hold ended, when
// the caller next touches it, which lock.Run does at once. A lease lost
// after its Release is not counted: it was not lost to its holder.
//
// # Traces
//
// Spans come from Options.TracerProvider (the global one by default), with
// SpanKind client, as children of the span in the context passed to each
// call:
//
//   - "lock.Acquire" and "lock.TryAcquire", with lock.outcome,
//     lock.wait.duration (seconds, a double: the time the call took) and,
//     on success, lock.fence.
//   - "lock.Refresh" and "lock.Release", with lock.fence, linked to the
//     span that acquired the lease. Release also carries lock.hold.duration
//     (seconds) when it ends the hold.
//
// A span whose call returned an error has status Error with the error's
// text, an exception event, and error.type; "contended" is no error. The
// context that the wrapped Manager and Lease receive carries the new span,
// so a backend's own instrumentation nests under it.
//
// # Telemetry never changes locking
//
// Every call reaches the wrapped Manager or Lease with the same arguments
// (the context only gains the span), and its results, errors included, come
// back unchanged. Nothing in this package fails a call or waits on an
// exporter: metrics are aggregated in memory by the SDK and exported by its
// reader, spans are handed to the span processors when they end. Use a
// batching span processor (sdktrace.WithBatcher): a synchronous one
// (WithSyncer) exports in the caller's goroutine, so a slow exporter would
// slow every lock call. Errors from creating instruments go to otel.Handle
// and leave that instrument a no-op.
//
// # Leases
//
// The leases that the returned Manager hands out implement lock.Watcher
// and lock.Stamped exactly when the wrapped leases do, so lock.Run keeps
// using them. A nil lease from the wrapped Manager is returned as nil.
package lockotel

import (
	"context"
	"io"
	"time"

	"github.com/klauthed/lock"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the meter and the tracer: this
// module's path, as the OpenTelemetry Go conventions ask.
const ScopeName = "github.com/klauthed/lock/lockotel"

// Options configures Wrap. The zero value is ready to use: global
// providers, no backend attribute, no key attribute.
type Options struct {
	// MeterProvider gives the meter for the metrics. Nil means
	// otel.GetMeterProvider() at the time of Wrap (a delegating provider:
	// metrics flow once the program sets the global one).
	MeterProvider metric.MeterProvider

	// TracerProvider gives the tracer for the spans. Nil means
	// otel.GetTracerProvider() at the time of Wrap.
	TracerProvider trace.TracerProvider

	// Backend, when not empty, is the value of the lock.backend attribute
	// on every metric and span, e.g. "redis" or "mem".
	Backend string

	// KeyGroup, when not nil, maps a key to the value of the lock.key_group
	// attribute on every metric and span of calls on that key. It must
	// return few distinct values (say, under a hundred): each one is a time
	// series per instrument and attribute set. It must be safe for
	// concurrent use and fast; it is called once per Acquire or TryAcquire.
	// Nil means no key attribute at all.
	KeyGroup func(key string) string
}

// Wrap returns a Manager that passes every call to m and records metrics
// and spans for it, as the package doc describes. It never fails: an
// instrument the meter cannot create is reported to otel.Handle and left a
// no-op.
//
// When m has a method Close() error (lockmem and lockredis do), the returned
// Manager has it too (it implements io.Closer) and Close calls m.Close;
// otherwise it has none, and m is closed, if at all, as without the wrapper.
// Closing the wrapper ends nothing else: it holds no resources.
//
// A nil m gives a Manager whose calls return lock.ErrClosed, as a nil
// Manager of this module's backends does.
func Wrap(m lock.Manager, opts Options) lock.Manager {
	w := &manager{inner: m, t: newTelemetry(opts)}
	if c, ok := m.(io.Closer); ok {
		return &closingManager{manager: w, c: c}
	}
	return w
}

// manager is the wrapper returned by Wrap for a Manager without Close.
type manager struct {
	inner lock.Manager
	t     *telemetry
}

// closingManager is the wrapper for a Manager with Close.
type closingManager struct {
	*manager
	c io.Closer
}

// Close calls Close of the wrapped Manager and returns its result.
func (m *closingManager) Close() error { return m.c.Close() }

var (
	_ lock.Manager = (*manager)(nil)
	_ io.Closer    = (*closingManager)(nil)
)

// TryAcquire calls TryAcquire of the wrapped Manager and returns its
// results, the lease wrapped (nil stays nil), after recording the call: a
// lock.TryAcquire span, acquire.duration and acquisitions with its outcome,
// and, when it took the key, one more holder. A nil ctx returns an error
// wrapping lock.ErrInvalidArgument, records an "error" acquisition and
// calls nothing.
func (m *manager) TryAcquire(ctx context.Context, key string,
	ttl time.Duration) (lock.Lease, bool, error) {
	if m == nil || m.inner == nil {
		return nil, false, lock.ErrClosed
	}
	g := m.t.group(key)
	if err := lock.ValidateContext(ctx); err != nil {
		m.t.acquireFailed(context.Background(), g, opTry, 0, err)
		return nil, false, err
	}
	ctx, span := m.t.tracer.Start(ctx, "lock.TryAcquire", g.spanStart...)
	start := time.Now()
	l, ok, err := m.inner.TryAcquire(ctx, key, ttl)
	now := time.Now()
	wait := now.Sub(start)
	switch {
	case err != nil:
		m.t.acquireFailed(ctx, g, opTry, wait, err)
		endFailed(span, outcomeOf(err), wait, err)
	case ok && l != nil:
		wl := m.t.acquired(ctx, g, opTry, now, wait, l, span)
		span.End()
		return wl, ok, nil
	case !ok:
		m.t.contended(ctx, g, wait)
		endContended(span, wait)
	default:
		// (nil, true, nil) breaks the contract: pass it on, count nothing.
		span.End()
	}
	return l, ok, err
}

// Acquire calls Acquire of the wrapped Manager and returns its results, the
// lease wrapped (nil stays nil), after recording the call: one more waiter
// while it runs, a lock.Acquire span, acquire.duration and acquisitions with
// its outcome, and, when it took the key, one more holder. A nil ctx returns
// an error wrapping lock.ErrInvalidArgument, records an "error" acquisition
// and calls nothing.
func (m *manager) Acquire(ctx context.Context, key string, ttl time.Duration) (lock.Lease, error) {
	if m == nil || m.inner == nil {
		return nil, lock.ErrClosed
	}
	g := m.t.group(key)
	if err := lock.ValidateContext(ctx); err != nil {
		m.t.acquireFailed(context.Background(), g, opAcquire, 0, err)
		return nil, err
	}
	ctx, span := m.t.tracer.Start(ctx, "lock.Acquire", g.spanStart...)
	m.t.waiters.Add(ctx, 1, g.baseAdd...)
	start := time.Now()
	l, err := m.inner.Acquire(ctx, key, ttl)
	now := time.Now()
	wait := now.Sub(start)
	m.t.waiters.Add(ctx, -1, g.baseAdd...)
	switch {
	case err != nil:
		m.t.acquireFailed(ctx, g, opAcquire, wait, err)
		endFailed(span, outcomeOf(err), wait, err)
	case l != nil:
		wl := m.t.acquired(ctx, g, opAcquire, now, wait, l, span)
		span.End()
		return wl, nil
	default:
		// (nil, nil) breaks the contract: pass it on, count nothing.
		span.End()
	}
	return l, err
}

// handle reports an error of the OpenTelemetry API to the global handler.
func handle(err error) {
	if err != nil {
		otel.Handle(err)
	}
}
