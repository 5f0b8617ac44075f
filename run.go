package lock

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// RunOptions configures Run. The zero value is ready to use.
type RunOptions struct {
	// TTL is the lease's time to live, renewed by the watchdog while the
	// function runs. Zero means 30s. It must lie in [MinTTL, MaxTTL].
	TTL time.Duration

	// RefreshEvery is how often the watchdog refreshes the lease. Zero means
	// TTL/3, so two refreshes in a row can fail before the lease runs out.
	// It must be shorter than TTL.
	RefreshEvery time.Duration

	// ReleaseTimeout bounds the final Release, which runs on a context that
	// is not cancelled with Run's. Zero means 5s.
	ReleaseTimeout time.Duration
}

const (
	defaultRunTTL         = 30 * time.Second
	defaultReleaseTimeout = 5 * time.Second
)

// ErrInvalidOptions is returned by Run for options it cannot honour, such as
// RefreshEvery not shorter than TTL.
var ErrInvalidOptions = errors.New("lock: invalid options")

// Run acquires key on m (waiting as Acquire does), calls fn while holding it,
// and releases it when fn returns — what Redisson's watchdog and
// node-redlock's using() give their users.
//
// While fn runs, a watchdog refreshes the lease every RefreshEvery. The
// context passed to fn is cancelled the moment the lease is known to be lost:
// a refresh reports ErrNotHeld, refreshes keep failing until the lease's TTL
// has passed on the local clock, or the lease implements Watcher and its
// backend sees the key change hands. context.Cause of fn's context then
// wraps ErrNotHeld. fn must stop writing to the guarded resource when its
// context is done.
//
// What a holder can and cannot know after a stall: the watchdog and the
// backend's watch run in this process. If the whole process stops (SIGSTOP,
// a long GC or VM pause) past the lease's TTL, nothing runs to cancel ctx
// before fn resumes: fn's next ctx.Err() may still be nil, and one write may
// leave after the lease ended and another holder took the key. No check in
// the client can close that window, since the check and the write are not
// one atomic step; the fence can: pass lease.Fence() with every write to
// storage that rejects a fence lower than one it has accepted. Checking ctx
// before each write narrows the window to the writes already under way.
//
// Run returns the error from acquiring (nothing was called), else fn's error;
// when fn returned nil but the lease was lost while it ran, an error wrapping
// ErrNotHeld; else the error of the final Release, if any. The lease is
// always released (or, if Release fails, left to its TTL) before Run
// returns, and no goroutine outlives the call. If fn panics, Run stops the
// watchdog and releases the lease (bounded by ReleaseTimeout) before the
// panic continues up the stack. A nil ctx or fn returns an error wrapping
// ErrInvalidArgument and calls nothing.
func Run(
	ctx context.Context, m Manager, key string, opts RunOptions,
	fn func(ctx context.Context, lease Lease) error,
) error {
	if err := ValidateContext(ctx); err != nil {
		return err
	}
	if m == nil {
		return ErrClosed
	}
	if fn == nil {
		return fmt.Errorf("%w: nil function", ErrInvalidArgument)
	}
	if opts.TTL == 0 {
		opts.TTL = defaultRunTTL
	}
	if err := ValidateTTL(opts.TTL, MaxTTL); err != nil {
		return err
	}
	if opts.RefreshEvery == 0 {
		opts.RefreshEvery = opts.TTL / 3
	}
	if opts.RefreshEvery <= 0 || opts.RefreshEvery >= opts.TTL {
		return fmt.Errorf("%w: RefreshEvery %v must be in (0, TTL %v)",
			ErrInvalidOptions, opts.RefreshEvery, opts.TTL)
	}
	if opts.ReleaseTimeout <= 0 {
		opts.ReleaseTimeout = defaultReleaseTimeout
	}

	lease, err := m.Acquire(ctx, key, opts.TTL)
	if err != nil {
		return err
	}
	// The lease's TTL started no earlier than the winning request was sent
	// (Stamped) and no later than now; without a stamp, now is the best
	// bound there is (late by up to one reply's latency).
	start := time.Now()
	if st, ok := lease.(Stamped); ok {
		if sent := st.Sent(); !sent.IsZero() && sent.Before(start) {
			start = sent
		}
	}
	validUntil := start.Add(opts.TTL)

	fctx, cancel := context.WithCancelCause(ctx)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchdog(fctx, lease, opts, validUntil, stop, cancel)
	}()

	// finish stops the watchdog and releases the lease. It runs when fn
	// returns, and also when fn panics or calls runtime.Goexit: then the
	// deferred call releases the key at once and the panic goes on.
	finish := func() (lost, relErr error) {
		close(stop)
		<-done
		lost = context.Cause(fctx)
		cancel(nil)
		if lost != nil && !errors.Is(lost, ErrNotHeld) {
			lost = nil // the caller's context ended; that is not a lost lease
		}
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), opts.ReleaseTimeout)
		relErr = lease.Release(rctx)
		rcancel()
		return lost, relErr
	}
	returned := false
	defer func() {
		if !returned {
			_, _ = finish()
		}
	}()

	fnErr := fn(fctx, lease)
	returned = true
	lost, relErr := finish()

	switch {
	case fnErr != nil:
		return fnErr
	case lost != nil:
		return lost
	default:
		return relErr
	}
}

// watchdog refreshes lease until stop is closed, and cancels fctx with a
// cause wrapping ErrNotHeld as soon as the lease is known to be lost.
func watchdog(
	fctx context.Context, lease Lease, opts RunOptions, validUntil time.Time,
	stop <-chan struct{}, cancel context.CancelCauseFunc,
) {
	var lostCh <-chan struct{}
	if w, ok := lease.(Watcher); ok {
		lostCh = w.Lost()
	}
	// A lease whose TTL started well before Acquire returned (a backend's
	// hand-off after a long wait) is refreshed early, not after a full
	// RefreshEvery, so that it is not taken for lost.
	next := time.NewTimer(min(opts.RefreshEvery, max(time.Until(validUntil)/2, 0)))
	defer next.Stop()
	expiry := time.NewTimer(time.Until(validUntil))
	defer expiry.Stop()
	key := lease.Key()
	for {
		select {
		case <-stop:
			return
		case <-fctx.Done():
			return
		case <-lostCh:
			cancel(fmt.Errorf("%w: key %q: the backend saw the key change hands", ErrNotHeld, key))
			return
		case <-expiry.C:
			cancel(fmt.Errorf("%w: key %q: ttl passed without a successful refresh", ErrNotHeld, key))
			return
		case <-next.C:
		}
		start := time.Now()
		// A refresh that cannot finish before the lease runs out is useless.
		rctx, rcancel := context.WithDeadline(fctx, validUntil)
		err := lease.Refresh(rctx, opts.TTL)
		rcancel()
		switch {
		case err == nil:
			validUntil = start.Add(opts.TTL)
			expiry.Reset(time.Until(validUntil))
			next.Reset(opts.RefreshEvery)
		case errors.Is(err, ErrNotHeld):
			cancel(fmt.Errorf("%w: key %q: refresh: %v", ErrNotHeld, key, err))
			return
		default:
			// Transient failure: try again sooner, while the lease lasts.
			retry := min(opts.RefreshEvery, time.Until(validUntil)/4)
			next.Reset(max(retry, time.Millisecond))
		}
	}
}
