package lockotel

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauthed/lock"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Attribute keys. The values are in the package doc.
const (
	keyOperation  = attribute.Key("lock.operation")
	keyOutcome    = attribute.Key("lock.outcome")
	keyBackend    = attribute.Key("lock.backend")
	keyKeyGroup   = attribute.Key("lock.key_group")
	keyHoldEnd    = attribute.Key("lock.hold.end")
	keyLostBy     = attribute.Key("lock.lost.detected_by")
	keyWait       = attribute.Key("lock.wait.duration")
	keyHold       = attribute.Key("lock.hold.duration")
	keyFence      = attribute.Key("lock.fence")
	keyErrorType  = semconv.ErrorTypeKey
	errTypeOther  = "_OTHER"
	maxKeyGroups  = 1024 // groups cached with prepared attribute sets
	outcomeAcq    = "acquired"
	outcomeCont   = "contended"
	outcomeTimout = "timed_out"
	outcomeErr    = "error"
)

// Operations, as indexes into group's prepared options.
const (
	opAcquire = iota
	opTry
	numOps
)

var opNames = [numOps]string{opAcquire: "acquire", opTry: "try_acquire"}

// Bucket boundaries, in seconds.
//
// acquireBuckets: an uncontended acquisition takes well under a
// microsecond in lockmem, 50µs to 1ms to a Redis on the same host or
// network, more across zones; a contended Acquire waits for the holder's
// release or expiry, up to the caller's deadline (seconds to minutes). So
// the buckets are fine from 10µs to 10ms, where round trips land, and
// coarse from 10ms to 5 minutes, where waits land.
var acquireBuckets = []float64{
	0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2.5, 5, 10, 30, 60, 300,
}

// holdBuckets: a critical section runs from a millisecond (a guarded write)
// to an hour (a job under lock.Run), so the buckets go from 1ms to 1h, a
// step of about 2 to 3 each.
var holdBuckets = []float64{
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
}

// telemetry holds the instruments and tracer of one Wrap.
type telemetry struct {
	tracer       trace.Tracer
	acquireDur   metric.Float64Histogram
	acquisitions metric.Int64Counter
	holdDur      metric.Float64Histogram
	lost         metric.Int64Counter
	waiters      metric.Int64UpDownCounter
	holders      metric.Int64UpDownCounter

	backend  string
	keyGroup func(string) string
	def      *group   // the group of every key when keyGroup is nil
	groups   sync.Map // key group name -> *group
	ngroups  atomic.Int64
}

func newTelemetry(opts Options) *telemetry {
	mp := opts.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	tp := opts.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	meter := mp.Meter(ScopeName)
	t := &telemetry{
		tracer:   tp.Tracer(ScopeName),
		backend:  opts.Backend,
		keyGroup: opts.KeyGroup,
	}
	var err error
	t.acquireDur, err = meter.Float64Histogram("klauthed.lock.acquire.duration",
		metric.WithUnit("s"),
		metric.WithDescription("Time spent in Acquire or TryAcquire, by outcome."),
		metric.WithExplicitBucketBoundaries(acquireBuckets...))
	if err != nil || t.acquireDur == nil {
		handle(err)
		t.acquireDur = metricnoop.Float64Histogram{}
	}
	t.acquisitions, err = meter.Int64Counter("klauthed.lock.acquisitions",
		metric.WithUnit("{acquisition}"),
		metric.WithDescription("Calls of Acquire and TryAcquire, by outcome."))
	if err != nil || t.acquisitions == nil {
		handle(err)
		t.acquisitions = metricnoop.Int64Counter{}
	}
	t.holdDur, err = meter.Float64Histogram("klauthed.lock.hold.duration",
		metric.WithUnit("s"),
		metric.WithDescription("Time from acquisition to the end of the lease: "+
			"its first Release, or its loss."),
		metric.WithExplicitBucketBoundaries(holdBuckets...))
	if err != nil || t.holdDur == nil {
		handle(err)
		t.holdDur = metricnoop.Float64Histogram{}
	}
	t.lost, err = meter.Int64Counter("klauthed.lock.lost",
		metric.WithUnit("{lease}"),
		metric.WithDescription("Leases lost before their Release."))
	if err != nil || t.lost == nil {
		handle(err)
		t.lost = metricnoop.Int64Counter{}
	}
	t.waiters, err = meter.Int64UpDownCounter("klauthed.lock.waiters",
		metric.WithUnit("{waiter}"),
		metric.WithDescription("Calls of Acquire waiting now."))
	if err != nil || t.waiters == nil {
		handle(err)
		t.waiters = metricnoop.Int64UpDownCounter{}
	}
	t.holders, err = meter.Int64UpDownCounter("klauthed.lock.holders",
		metric.WithUnit("{lease}"),
		metric.WithDescription("Leases held now: acquired and not yet released or lost."))
	if err != nil || t.holders == nil {
		handle(err)
		t.holders = metricnoop.Int64UpDownCounter{}
	}
	if t.keyGroup == nil {
		t.def = t.newGroup("", false)
	}
	return t
}

// group is the attribute sets of one key group, prepared so that recording
// a measurement on the common paths allocates nothing.
type group struct {
	attrs     []attribute.KeyValue          // lock.backend and lock.key_group, if set
	acqCount  [numOps][2][]metric.AddOption // [op][acquired, contended]
	acqDur    [numOps][2][]metric.RecordOption
	holdEnd   [2][]metric.RecordOption // [released, lost]
	lostBy    [2][]metric.AddOption    // [refresh, watcher]
	baseAdd   []metric.AddOption
	spanStart []trace.SpanStartOption
}

const (
	endReleased = iota
	endLost
)

const (
	byRefresh = iota
	byWatcher
)

func (t *telemetry) newGroup(name string, named bool) *group {
	g := &group{}
	if t.backend != "" {
		g.attrs = append(g.attrs, keyBackend.String(t.backend))
	}
	if named {
		g.attrs = append(g.attrs, keyKeyGroup.String(name))
	}
	with := func(extra ...attribute.KeyValue) metric.MeasurementOption {
		kv := append(append([]attribute.KeyValue{}, g.attrs...), extra...)
		return metric.WithAttributeSet(attribute.NewSet(kv...))
	}
	outcomes := [2]string{outcomeAcq, outcomeCont}
	for op := range numOps {
		for i, oc := range outcomes {
			o := with(keyOperation.String(opNames[op]), keyOutcome.String(oc))
			g.acqCount[op][i] = []metric.AddOption{o}
			g.acqDur[op][i] = []metric.RecordOption{o}
		}
	}
	g.holdEnd[endReleased] = []metric.RecordOption{with(keyHoldEnd.String("released"))}
	g.holdEnd[endLost] = []metric.RecordOption{with(keyHoldEnd.String("lost"))}
	g.lostBy[byRefresh] = []metric.AddOption{with(keyLostBy.String("refresh"))}
	g.lostBy[byWatcher] = []metric.AddOption{with(keyLostBy.String("watcher"))}
	g.baseAdd = []metric.AddOption{with()}
	g.spanStart = []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(g.attrs...),
	}
	return g
}

// group returns the prepared attribute sets for key.
func (t *telemetry) group(key string) *group {
	if t.keyGroup == nil {
		return t.def
	}
	name := t.keyGroup(key)
	if g, ok := t.groups.Load(name); ok {
		return g.(*group)
	}
	g := t.newGroup(name, true)
	if t.ngroups.Load() >= maxKeyGroups {
		return g // too many names to cache: prepared for this call only
	}
	if prev, loaded := t.groups.LoadOrStore(name, g); loaded {
		return prev.(*group)
	}
	t.ngroups.Add(1)
	return g
}

// acquired records a successful acquisition of l that returned at now after
// wait, adds a holder and returns l wrapped. span is the acquisition's span,
// still open.
func (t *telemetry) acquired(ctx context.Context, g *group, op int, now time.Time,
	wait time.Duration, l lock.Lease, span trace.Span) lock.Lease {
	t.acquireDur.Record(ctx, wait.Seconds(), g.acqDur[op][0]...)
	t.acquisitions.Add(ctx, 1, g.acqCount[op][0]...)
	t.holders.Add(ctx, 1, g.baseAdd...)
	if span.IsRecording() {
		span.SetAttributes(
			keyOutcome.String(outcomeAcq),
			keyWait.Float64(wait.Seconds()),
			keyFence.Int64(fenceAttr(l.Fence())),
		)
	}
	return wrapLease(l, t, g, now, span.SpanContext())
}

// contended records a TryAcquire that found the key held.
func (t *telemetry) contended(ctx context.Context, g *group, wait time.Duration) {
	t.acquireDur.Record(ctx, wait.Seconds(), g.acqDur[opTry][1]...)
	t.acquisitions.Add(ctx, 1, g.acqCount[opTry][1]...)
}

// acquireFailed records an Acquire or TryAcquire that returned err.
func (t *telemetry) acquireFailed(ctx context.Context, g *group, op int, wait time.Duration,
	err error) {
	oc := outcomeOf(err)
	kv := append(append(make([]attribute.KeyValue, 0, len(g.attrs)+3), g.attrs...),
		keyOperation.String(opNames[op]), keyOutcome.String(oc))
	t.acquireDur.Record(ctx, wait.Seconds(), metric.WithAttributes(kv...))
	kv = append(kv, keyErrorType.String(errorType(err)))
	t.acquisitions.Add(ctx, 1, metric.WithAttributes(kv...))
}

// outcomeOf returns the lock.outcome of an acquisition that returned err.
func outcomeOf(err error) string {
	if errors.Is(err, lock.ErrNotAcquired) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, context.Canceled) {
		return outcomeTimout
	}
	return outcomeErr
}

// errorType returns the error.type attribute value for err.
func errorType(err error) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline_exceeded"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, lock.ErrInvalidKey):
		return "invalid_key"
	case errors.Is(err, lock.ErrInvalidTTL):
		return "invalid_ttl"
	case errors.Is(err, lock.ErrInvalidArgument):
		return "invalid_argument"
	case errors.Is(err, lock.ErrClosed):
		return "closed"
	case errors.Is(err, lock.ErrNotHeld):
		return "not_held"
	}
	return errTypeOther
}

// fenceAttr returns fence as an int64 attribute value: OpenTelemetry has no
// unsigned integers, and a fence past MaxInt64 (never seen in practice: it
// takes 2^63 acquisitions) is clamped.
func fenceAttr(fence uint64) int64 {
	if fence > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(fence)
}

// endContended ends the span of a TryAcquire that found the key held.
func endContended(span trace.Span, wait time.Duration) {
	if span.IsRecording() {
		span.SetAttributes(keyOutcome.String(outcomeCont), keyWait.Float64(wait.Seconds()))
	}
	span.End()
}

// endFailed ends the span of an acquisition that returned err.
func endFailed(span trace.Span, outcome string, wait time.Duration, err error) {
	if span.IsRecording() {
		span.SetAttributes(
			keyOutcome.String(outcome),
			keyWait.Float64(wait.Seconds()),
			keyErrorType.String(errorType(err)),
		)
		setError(span, err)
	}
	span.End()
}

// setError marks span as failed with err.
func setError(span trace.Span, err error) {
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
}
