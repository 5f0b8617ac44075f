package lockotel_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockotel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// backend is a real lock backend for scenario.
type backend struct {
	name string
	// new returns a fresh bare Manager, closed in t.Cleanup.
	new func(t *testing.T) lock.Manager
	// expire makes leases taken with TTL unit before the call expire.
	expire func(t *testing.T)
	// steal makes the lease on key lost while a holder refreshes it.
	steal func(t *testing.T, key string)
	unit  time.Duration
	// What the backend's leases implement.
	watcher, stamped bool
}

// newKey returns a key no other test uses.
func newKey(t *testing.T, what string) string {
	var b [8]byte
	rand.Read(b[:])
	return t.Name() + "/" + what + "#" + hex.EncodeToString(b[:])
}

// Attribute shorthands.
func op(v string) attribute.KeyValue      { return attribute.String("lock.operation", v) }
func outcome(v string) attribute.KeyValue { return attribute.String("lock.outcome", v) }
func errType(v string) attribute.KeyValue { return attribute.String("error.type", v) }
func holdEnd(v string) attribute.KeyValue { return attribute.String("lock.hold.end", v) }
func lostBy(v string) attribute.KeyValue  { return attribute.String("lock.lost.detected_by", v) }

const (
	mAcqDur  = "klauthed.lock.acquire.duration"
	mAcqs    = "klauthed.lock.acquisitions"
	mHoldDur = "klauthed.lock.hold.duration"
	mLost    = "klauthed.lock.lost"
	mWaiters = "klauthed.lock.waiters"
	mHolders = "klauthed.lock.holders"
	uAcq     = "{acquisition}"
	uLease   = "{lease}"
	uWaiter  = "{waiter}"
)

// scenario drives a wrapped Manager of b through every outcome and asserts
// each metric and span the package doc promises.
func scenario(t *testing.T, b backend) {
	x := newTel(t)
	m := x.wrap(b.new(t), lockotel.Options{Backend: b.name})
	ctx := ctxT(t)
	long := 60 * b.unit
	be := attribute.String("lock.backend", b.name)
	kA, kB, kC, kD := newKey(t, "a"), newKey(t, "b"), newKey(t, "c"), newKey(t, "d")

	// Acquired, with the optional interfaces of the backend's lease.
	l1, ok, err := m.TryAcquire(ctx, kA, long)
	if err != nil || !ok || l1 == nil {
		t.Fatalf("TryAcquire(%q) = %v, %v, %v; want a lease", kA, l1, ok, err)
	}
	if _, w := l1.(lock.Watcher); w != b.watcher {
		t.Errorf("wrapped lease is a Watcher: %v, want %v", w, b.watcher)
	}
	if _, s := l1.(lock.Stamped); s != b.stamped {
		t.Errorf("wrapped lease is Stamped: %v, want %v", s, b.stamped)
	}
	s := x.collect(t)
	if got := s.sum(mHolders, uLease, be); got != 1 {
		t.Errorf("holders after one acquisition = %d, want 1", got)
	}

	// Contended: not an error, the lease stays nil.
	if l, ok, err := m.TryAcquire(ctx, kA, long); l != nil || ok || err != nil {
		t.Fatalf("TryAcquire of a held key = %v, %v, %v; want nil, false, nil", l, ok, err)
	}

	// Timed out by deadline.
	const deadline = 30 * time.Millisecond
	dctx, dcancel := context.WithTimeout(ctx, deadline)
	_, err = m.Acquire(dctx, kA, long)
	dcancel()
	if !errors.Is(err, lock.ErrNotAcquired) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire past its deadline = %v, want ErrNotAcquired and DeadlineExceeded", err)
	}

	// Timed out by cancellation, seen as one waiter while it waits.
	cctx, ccancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := m.Acquire(cctx, kA, long)
		done <- err
	}()
	waitFor(t, "one waiter", func() bool { return x.collect(t).sum(mWaiters, uWaiter, be) == 1 })
	ccancel()
	if err := <-done; !errors.Is(err, lock.ErrNotAcquired) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Acquire = %v, want ErrNotAcquired and Canceled", err)
	}

	// Error: bad input.
	if _, _, err := m.TryAcquire(ctx, kA, 0); !errors.Is(err, lock.ErrInvalidTTL) {
		t.Fatalf("TryAcquire with ttl 0 = %v, want ErrInvalidTTL", err)
	}

	s = x.collect(t)
	if got := s.sum(mWaiters, uWaiter, be); got != 0 {
		t.Errorf("waiters after the waits = %d, want 0", got)
	}
	for _, c := range []struct {
		want  int64
		attrs []attribute.KeyValue
	}{
		{1, []attribute.KeyValue{op("try_acquire"), outcome("acquired")}},
		{1, []attribute.KeyValue{op("try_acquire"), outcome("contended")}},
		{1, []attribute.KeyValue{op("acquire"), outcome("timed_out"), errType("deadline_exceeded")}},
		{1, []attribute.KeyValue{op("acquire"), outcome("timed_out"), errType("canceled")}},
		{1, []attribute.KeyValue{op("try_acquire"), outcome("error"), errType("invalid_ttl")}},
		{0, []attribute.KeyValue{op("acquire"), outcome("acquired")}},
		{5, []attribute.KeyValue{be}},
	} {
		if got := s.sum(mAcqs, uAcq, c.attrs...); got != c.want {
			t.Errorf("acquisitions%v = %d, want %d", c.attrs, got, c.want)
		}
	}
	if n, _, lo := s.hist(mAcqDur, be, op("acquire"), outcome("timed_out")); n != 2 {
		t.Errorf("acquire.duration timed_out count = %d, want 2", n)
	} else if lo <= 0 {
		t.Errorf("acquire.duration timed_out min = %v s, want > 0", lo)
	}
	// The deadline one waited at least its deadline.
	if _, sum, _ := s.hist(mAcqDur, op("acquire"), outcome("timed_out")); sum < deadline.Seconds() {
		t.Errorf("acquire.duration timed_out sum = %v s, want >= %v", sum, deadline.Seconds())
	}
	for _, oc := range []string{"acquired", "contended", "error"} {
		if n, _, _ := s.hist(mAcqDur, be, op("try_acquire"), outcome(oc)); n != 1 {
			t.Errorf("acquire.duration try_acquire %s count = %d, want 1", oc, n)
		}
	}

	// Release ends the hold once; a second Release changes no metric.
	time.Sleep(2 * time.Millisecond)
	if err := l1.Release(ctx); err != nil {
		t.Fatalf("Release = %v", err)
	}
	if err := l1.Release(ctx); err != nil {
		t.Fatalf("second Release = %v", err)
	}
	s = x.collect(t)
	if got := s.sum(mHolders, uLease, be); got != 0 {
		t.Errorf("holders after Release twice = %d, want 0", got)
	}
	if n, _, lo := s.hist(mHoldDur, be, holdEnd("released")); n != 1 || lo < 0.002 {
		t.Errorf("hold.duration released: count %d, min %v s; want 1, >= 0.002", n, lo)
	}

	// Acquire that gets the key.
	l2, err := m.Acquire(ctx, kB, long)
	if err != nil {
		t.Fatalf("Acquire(%q) = %v", kB, err)
	}
	if got := x.collect(t).sum(mAcqs, uAcq, op("acquire"), outcome("acquired")); got != 1 {
		t.Errorf("acquisitions acquire/acquired = %d, want 1", got)
	}
	if err := l2.Release(ctx); err != nil {
		t.Fatalf("Release = %v", err)
	}

	// Lost, found by Refresh.
	l3, ok, err := m.TryAcquire(ctx, kC, b.unit)
	if err != nil || !ok {
		t.Fatalf("TryAcquire(%q) = %v, %v, %v", kC, l3, ok, err)
	}
	b.expire(t)
	if err := l3.Refresh(ctx, long); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Refresh after expiry = %v, want ErrNotHeld", err)
	}
	if err := l3.Release(ctx); err != nil {
		t.Fatalf("Release after loss = %v", err)
	}
	s = x.collect(t)
	if got := s.sum(mLost, uLease, be, lostBy("refresh")); got != 1 {
		t.Errorf("lost by refresh = %d, want 1", got)
	}
	if n, _, _ := s.hist(mHoldDur, be, holdEnd("lost")); n != 1 {
		t.Errorf("hold.duration lost count = %d, want 1", n)
	}
	if got := s.sum(mHolders, uLease, be); got != 0 {
		t.Errorf("holders after loss and Release = %d, want 0", got)
	}

	// Lost, seen by lock.Run through the lease's Lost channel.
	if b.watcher {
		started := make(chan struct{})
		runErr := make(chan error, 1)
		go func() {
			runErr <- lock.Run(ctx, m, kD, lock.RunOptions{TTL: 20 * b.unit},
				func(fctx context.Context, _ lock.Lease) error {
					close(started)
					<-fctx.Done()
					return nil
				})
		}()
		<-started
		b.steal(t, kD)
		if err := <-runErr; !errors.Is(err, lock.ErrNotHeld) {
			t.Fatalf("Run whose lease was taken away = %v, want ErrNotHeld", err)
		}
		s = x.collect(t)
		if got := s.sum(mLost, uLease, be, lostBy("watcher")); got != 1 {
			t.Errorf("lost by watcher = %d, want 1", got)
		}
		if n, _, _ := s.hist(mHoldDur, be, holdEnd("lost")); n != 2 {
			t.Errorf("hold.duration lost count = %d, want 2", n)
		}
		if got := s.sum(mHolders, uLease, be); got != 0 {
			t.Errorf("holders after Run = %d, want 0", got)
		}
	}

	checkSpans(t, x, b, l1.Fence(), deadline)
	x.noKeyIn(t, kA, kB, kC, kD)
}

// checkSpans asserts the spans of scenario.
func checkSpans(t *testing.T, x *tel, b backend, fence1 uint64, deadline time.Duration) {
	t.Helper()
	all := x.spans.Ended()
	for _, sp := range all {
		if sp.SpanKind() != trace.SpanKindClient {
			t.Errorf("span %s kind %v, want client", sp.Name(), sp.SpanKind())
		}
		if v, _ := attr(sp, "lock.backend"); v.AsString() != b.name {
			t.Errorf("span %s lock.backend %q, want %q", sp.Name(), v.AsString(), b.name)
		}
		if sp.InstrumentationScope().Name != lockotel.ScopeName {
			t.Errorf("span %s scope %q", sp.Name(), sp.InstrumentationScope().Name)
		}
	}
	byOutcome := func(name string) map[string][]sdktrace.ReadOnlySpan {
		out := map[string][]sdktrace.ReadOnlySpan{}
		for _, sp := range x.spansNamed(name) {
			v, _ := attr(sp, "lock.outcome")
			out[v.AsString()] = append(out[v.AsString()], sp)
		}
		return out
	}
	try := byOutcome("lock.TryAcquire")
	if len(try["contended"]) != 1 || len(try["error"]) != 1 || len(try["acquired"]) != 2 {
		t.Fatalf("TryAcquire spans by outcome: %d acquired, %d contended, %d error; want 2, 1, 1",
			len(try["acquired"]), len(try["contended"]), len(try["error"]))
	}
	first := try["acquired"][0]
	if v, _ := attr(first, "lock.fence"); v.AsInt64() != int64(fence1) {
		t.Errorf("TryAcquire span lock.fence = %d, want %d", v.AsInt64(), fence1)
	}
	if _, ok := attr(first, "lock.wait.duration"); !ok || first.Status().Code == codes.Error {
		t.Errorf("acquired TryAcquire span: wait attribute %v, status %v", ok, first.Status())
	}
	if c := try["contended"][0]; c.Status().Code == codes.Error {
		t.Errorf("contended TryAcquire span has status %v; contention is not an error", c.Status())
	}
	checkErrSpan(t, try["error"][0], "invalid_ttl")

	acq := byOutcome("lock.Acquire")
	if len(acq["timed_out"]) != 2 || len(acq["acquired"]) < 1 {
		t.Fatalf("Acquire spans: %d timed_out, %d acquired; want 2, >= 1",
			len(acq["timed_out"]), len(acq["acquired"]))
	}
	types := map[string]bool{}
	for _, sp := range acq["timed_out"] {
		v, _ := attr(sp, "error.type")
		types[v.AsString()] = true
		checkErrSpan(t, sp, v.AsString())
		if v.AsString() == "deadline_exceeded" {
			if w, _ := attr(sp, "lock.wait.duration"); w.AsFloat64() < deadline.Seconds() {
				t.Errorf("timed-out Acquire span wait %v s, want >= %v", w.AsFloat64(), deadline.Seconds())
			}
		}
	}
	if !types["deadline_exceeded"] || !types["canceled"] {
		t.Errorf("timed-out Acquire spans' error.type: %v, want deadline_exceeded and canceled", types)
	}

	// Releases of the first lease: both link to the span that acquired it
	// and carry its fence; only the first ends the hold.
	var rel []sdktrace.ReadOnlySpan
	for _, sp := range x.spansNamed("lock.Release") {
		ls := sp.Links()
		if len(ls) > 1 {
			t.Errorf("Release span links %v, want one", ls)
		}
		if len(ls) == 1 && ls[0].SpanContext.SpanID() == first.SpanContext().SpanID() {
			rel = append(rel, sp)
		}
	}
	if len(rel) != 2 {
		t.Fatalf("Release spans linked to the first TryAcquire: %d, want 2", len(rel))
	}
	for i, sp := range rel {
		if v, _ := attr(sp, "lock.fence"); v.AsInt64() != int64(fence1) {
			t.Errorf("Release span %d lock.fence = %d, want %d", i, v.AsInt64(), fence1)
		}
		_, hasHold := attr(sp, "lock.hold.duration")
		if hasHold != (i == 0) {
			t.Errorf("Release span %d has lock.hold.duration: %v, want %v", i, hasHold, i == 0)
		}
	}

	var notHeld int
	for _, sp := range x.spansNamed("lock.Refresh") {
		if v, _ := attr(sp, "error.type"); v.AsString() == "not_held" {
			checkErrSpan(t, sp, "not_held")
			notHeld++
		}
	}
	if notHeld != 1 {
		t.Errorf("Refresh spans with error.type not_held: %d, want 1", notHeld)
	}
}

// checkErrSpan fails t unless sp has status Error, an exception event and
// error.type typ.
func checkErrSpan(t *testing.T, sp sdktrace.ReadOnlySpan, typ string) {
	t.Helper()
	if sp.Status().Code != codes.Error || sp.Status().Description == "" {
		t.Errorf("span %s status %v, want Error with a description", sp.Name(), sp.Status())
	}
	if v, _ := attr(sp, "error.type"); v.AsString() != typ {
		t.Errorf("span %s error.type %q, want %q", sp.Name(), v.AsString(), typ)
	}
	var exc bool
	for _, e := range sp.Events() {
		exc = exc || e.Name == "exception"
	}
	if !exc {
		t.Errorf("span %s has no exception event", sp.Name())
	}
}

// waitFor polls cond until it holds, failing t after 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
