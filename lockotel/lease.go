package lockotel

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/klauthed/lock"
	"go.opentelemetry.io/otel/trace"
)

// errNilLease is returned by Refresh of a nil lease of this package.
var errNilLease = fmt.Errorf("lockotel: nil lease: %w", lock.ErrNotHeld)

// closedChan is what Lost returns on a nil lease: it holds nothing.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// lease wraps a lease of the wrapped Manager. It implements lock.Lease only;
// watchLease, stampLease and watchStampLease add lock.Watcher and
// lock.Stamped, so that the wrapper implements the same optional
// interfaces as the lease it wraps. A nil *lease holds nothing.
type lease struct {
	inner   lock.Lease
	watcher lock.Watcher // inner as a Watcher, or nil
	t       *telemetry
	g       *group
	start   time.Time         // when the acquisition returned
	acq     trace.SpanContext // the span that acquired it, for links
	watched atomic.Bool       // Lost was called through the wrapper
	ended   atomic.Bool       // the hold was recorded as ended
}

type watchLease struct{ lease }
type stampLease struct{ lease }
type watchStampLease struct{ lease }

var (
	_ lock.Lease   = (*lease)(nil)
	_ lock.Watcher = (*watchLease)(nil)
	_ lock.Stamped = (*stampLease)(nil)
	_ lock.Watcher = (*watchStampLease)(nil)
	_ lock.Stamped = (*watchStampLease)(nil)
)

// wrapLease returns l, acquired at start, wrapped in the lease type that
// implements the same optional interfaces as l.
func wrapLease(l lock.Lease, t *telemetry, g *group, start time.Time,
	acq trace.SpanContext) lock.Lease {
	w, isWatcher := l.(lock.Watcher)
	_, isStamped := l.(lock.Stamped)
	switch {
	case isWatcher && isStamped:
		wl := &watchStampLease{}
		wl.init(l, w, t, g, start, acq)
		return wl
	case isWatcher:
		wl := &watchLease{}
		wl.init(l, w, t, g, start, acq)
		return wl
	case isStamped:
		wl := &stampLease{}
		wl.init(l, nil, t, g, start, acq)
		return wl
	}
	wl := &lease{}
	wl.init(l, nil, t, g, start, acq)
	return wl
}

// init sets up l, a zero lease, to wrap inner, acquired at start.
func (l *lease) init(inner lock.Lease, w lock.Watcher, t *telemetry, g *group,
	start time.Time, acq trace.SpanContext) {
	l.inner, l.watcher, l.t, l.g, l.start, l.acq = inner, w, t, g, start, acq
}

// Key returns the wrapped lease's Key; "" on a nil lease.
func (l *lease) Key() string {
	if l == nil {
		return ""
	}
	return l.inner.Key()
}

// Token returns the wrapped lease's Token; "" on a nil lease.
func (l *lease) Token() lock.Token {
	if l == nil {
		return ""
	}
	return l.inner.Token()
}

// Fence returns the wrapped lease's Fence; 0 on a nil lease.
func (l *lease) Fence() uint64 {
	if l == nil {
		return 0
	}
	return l.inner.Fence()
}

// Refresh calls Refresh of the wrapped lease and returns its result,
// recording a lock.Refresh span. When the result wraps lock.ErrNotHeld and
// the lease's hold had not ended, it ends it as lost (one lost lease, one
// holder less, its hold.duration recorded). On a nil lease it returns an
// error wrapping lock.ErrNotHeld; with a nil ctx, the error of
// lock.ValidateContext, and calls nothing.
func (l *lease) Refresh(ctx context.Context, ttl time.Duration) error {
	if l == nil {
		return errNilLease
	}
	if err := lock.ValidateContext(ctx); err != nil {
		return err
	}
	ctx, span := l.startSpan(ctx, "lock.Refresh")
	l.checkWatch(ctx)
	err := l.inner.Refresh(ctx, ttl)
	if err != nil {
		if isNotHeld(err) {
			l.end(ctx, endLost, byRefresh)
		}
		if span.IsRecording() {
			span.SetAttributes(keyErrorType.String(errorType(err)))
			setError(span, err)
		}
	}
	span.End()
	return err
}

// Release calls Release of the wrapped lease and returns its result,
// recording a lock.Release span. The first Release ends the lease's hold
// (one holder less, its hold.duration recorded), whatever the wrapped
// Release returns: on failure the lease ends at its TTL. If the caller had
// called Lost and the channel is closed by then, the hold ends as lost
// instead. On a nil lease it returns nil; with a nil ctx, the error of
// lock.ValidateContext, and calls nothing.
func (l *lease) Release(ctx context.Context) error {
	if l == nil {
		return nil
	}
	if err := lock.ValidateContext(ctx); err != nil {
		return err
	}
	ctx, span := l.startSpan(ctx, "lock.Release")
	l.checkWatch(ctx)
	held := l.end(ctx, endReleased, 0)
	err := l.inner.Release(ctx)
	if span.IsRecording() {
		if held >= 0 {
			span.SetAttributes(keyHold.Float64(held.Seconds()))
		}
		if err != nil {
			span.SetAttributes(keyErrorType.String(errorType(err)))
			setError(span, err)
		}
	}
	span.End()
	return err
}

// lost returns the wrapped lease's Lost channel, after noting that the
// caller watches it; a closed channel on a nil lease.
func (l *lease) lost() <-chan struct{} {
	if l == nil {
		return closedChan
	}
	l.watched.Store(true)
	ch := l.watcher.Lost()
	select {
	case <-ch:
		l.end(context.Background(), endLost, byWatcher)
	default:
	}
	return ch
}

// sent returns the wrapped lease's Sent; the zero Time on a nil lease.
func (l *lease) sent() time.Time {
	if l == nil {
		return time.Time{}
	}
	return l.inner.(lock.Stamped).Sent()
}

// checkWatch ends the hold as lost when the caller watches the lease and
// its Lost channel is closed.
func (l *lease) checkWatch(ctx context.Context) {
	if l.watcher == nil || !l.watched.Load() || l.ended.Load() {
		return
	}
	select {
	case <-l.watcher.Lost():
		l.end(ctx, endLost, byWatcher)
	default:
	}
}

// end records the end of the lease's hold, once: one holder less, the hold
// time, and for a loss one lost lease. It returns the hold time, or -1 if
// the hold had already ended.
func (l *lease) end(ctx context.Context, how, by int) time.Duration {
	if !l.ended.CompareAndSwap(false, true) {
		return -1
	}
	held := time.Since(l.start)
	l.t.holders.Add(ctx, -1, l.g.baseAdd...)
	l.t.holdDur.Record(ctx, held.Seconds(), l.g.holdEnd[how]...)
	if how == endLost {
		l.t.lost.Add(ctx, 1, l.g.lostBy[by]...)
	}
	return held
}

// startSpan starts a span for a call on the lease, linked to the span that
// acquired it.
func (l *lease) startSpan(ctx context.Context, name string) (context.Context, trace.Span) {
	opts := l.g.spanStart
	if l.acq.IsValid() {
		opts = append(opts[:len(opts):len(opts)], trace.WithLinks(trace.Link{SpanContext: l.acq}))
	}
	ctx, span := l.t.tracer.Start(ctx, name, opts...)
	if span.IsRecording() {
		span.SetAttributes(keyFence.Int64(fenceAttr(l.inner.Fence())))
	}
	return ctx, span
}

// The methods of the wrapper types with optional interfaces: each passes
// to lease, a nil receiver included.

func (l *watchLease) base() *lease {
	if l == nil {
		return nil
	}
	return &l.lease
}

func (l *stampLease) base() *lease {
	if l == nil {
		return nil
	}
	return &l.lease
}

func (l *watchStampLease) base() *lease {
	if l == nil {
		return nil
	}
	return &l.lease
}

// Key returns the wrapped lease's Key; "" on a nil lease.
func (l *watchLease) Key() string { return l.base().Key() }

// Token returns the wrapped lease's Token; "" on a nil lease.
func (l *watchLease) Token() lock.Token { return l.base().Token() }

// Fence returns the wrapped lease's Fence; 0 on a nil lease.
func (l *watchLease) Fence() uint64 { return l.base().Fence() }

// Refresh is lease.Refresh.
func (l *watchLease) Refresh(ctx context.Context, ttl time.Duration) error {
	return l.base().Refresh(ctx, ttl)
}

// Release is lease.Release.
func (l *watchLease) Release(ctx context.Context) error { return l.base().Release(ctx) }

// Lost returns the wrapped lease's Lost channel (a closed one on a nil
// lease) and notes that the caller watches it, so that its closing counts
// the lease as lost at the next call on the lease.
func (l *watchLease) Lost() <-chan struct{} { return l.base().lost() }

// Key returns the wrapped lease's Key; "" on a nil lease.
func (l *stampLease) Key() string { return l.base().Key() }

// Token returns the wrapped lease's Token; "" on a nil lease.
func (l *stampLease) Token() lock.Token { return l.base().Token() }

// Fence returns the wrapped lease's Fence; 0 on a nil lease.
func (l *stampLease) Fence() uint64 { return l.base().Fence() }

// Refresh is lease.Refresh.
func (l *stampLease) Refresh(ctx context.Context, ttl time.Duration) error {
	return l.base().Refresh(ctx, ttl)
}

// Release is lease.Release.
func (l *stampLease) Release(ctx context.Context) error { return l.base().Release(ctx) }

// Sent returns the wrapped lease's Sent; the zero Time on a nil lease.
func (l *stampLease) Sent() time.Time { return l.base().sent() }

// Key returns the wrapped lease's Key; "" on a nil lease.
func (l *watchStampLease) Key() string { return l.base().Key() }

// Token returns the wrapped lease's Token; "" on a nil lease.
func (l *watchStampLease) Token() lock.Token { return l.base().Token() }

// Fence returns the wrapped lease's Fence; 0 on a nil lease.
func (l *watchStampLease) Fence() uint64 { return l.base().Fence() }

// Refresh is lease.Refresh.
func (l *watchStampLease) Refresh(ctx context.Context, ttl time.Duration) error {
	return l.base().Refresh(ctx, ttl)
}

// Release is lease.Release.
func (l *watchStampLease) Release(ctx context.Context) error { return l.base().Release(ctx) }

// Lost is watchLease.Lost.
func (l *watchStampLease) Lost() <-chan struct{} { return l.base().lost() }

// Sent returns the wrapped lease's Sent; the zero Time on a nil lease.
func (l *watchStampLease) Sent() time.Time { return l.base().sent() }

// isNotHeld reports whether err says that the lease no longer holds its key.
func isNotHeld(err error) bool { return errors.Is(err, lock.ErrNotHeld) }
