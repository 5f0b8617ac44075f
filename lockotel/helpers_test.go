package lockotel_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockotel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// tel is an SDK meter provider on a manual reader and an SDK tracer
// provider on an in-memory span recorder, both shut down in t.Cleanup.
type tel struct {
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	mp     *sdkmetric.MeterProvider
	tp     *sdktrace.TracerProvider
}

func newTel(t *testing.T) *tel {
	t.Helper()
	x := &tel{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	x.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(x.reader))
	x.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(x.spans))
	t.Cleanup(func() {
		ctx := context.Background()
		if err := x.mp.Shutdown(ctx); err != nil {
			t.Errorf("meter provider Shutdown: %v", err)
		}
		if err := x.tp.Shutdown(ctx); err != nil {
			t.Errorf("tracer provider Shutdown: %v", err)
		}
	})
	return x
}

// wrap wraps m with x's providers and opts' other fields.
func (x *tel) wrap(m lock.Manager, opts lockotel.Options) lock.Manager {
	opts.MeterProvider = x.mp
	opts.TracerProvider = x.tp
	return lockotel.Wrap(m, opts)
}

// snap is one collection of x's metrics, lockotel's scope only.
type snap struct {
	t       *testing.T
	metrics map[string]metricdata.Metrics
}

func (x *tel) collect(t *testing.T) snap {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := x.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	s := snap{t: t, metrics: map[string]metricdata.Metrics{}}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != lockotel.ScopeName {
			t.Errorf("scope %q, want %q", sm.Scope.Name, lockotel.ScopeName)
			continue
		}
		for _, m := range sm.Metrics {
			s.metrics[m.Name] = m
		}
	}
	return s
}

// metric returns the metric called name, checking its unit.
func (s snap) metric(name, unit string) (metricdata.Metrics, bool) {
	s.t.Helper()
	m, ok := s.metrics[name]
	if ok && m.Unit != unit {
		s.t.Errorf("%s: unit %q, want %q", name, m.Unit, unit)
	}
	return m, ok
}

// match reports whether set has every attribute of want.
func match(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		v, ok := set.Value(kv.Key)
		if !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// sum returns the total of the int64 sum (counter or up-down counter)
// name over the points whose attributes include want.
func (s snap) sum(name, unit string, want ...attribute.KeyValue) int64 {
	s.t.Helper()
	m, ok := s.metric(name, unit)
	if !ok {
		return 0
	}
	d, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		s.t.Fatalf("%s: data %T, want Sum[int64]", name, m.Data)
	}
	var n int64
	for _, p := range d.DataPoints {
		if match(p.Attributes, want) {
			n += p.Value
		}
	}
	return n
}

// hist returns the count, sum and min of the histogram name over the points
// whose attributes include want.
func (s snap) hist(name string, want ...attribute.KeyValue) (n uint64, sum, lo float64) {
	s.t.Helper()
	m, ok := s.metric(name, "s")
	if !ok {
		return 0, 0, 0
	}
	d, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		s.t.Fatalf("%s: data %T, want Histogram[float64]", name, m.Data)
	}
	lo = -1
	for _, p := range d.DataPoints {
		if !match(p.Attributes, want) {
			continue
		}
		n += p.Count
		sum += p.Sum
		if v, ok := p.Min.Value(); ok && (lo < 0 || v < lo) {
			lo = v
		}
	}
	return n, sum, lo
}

// noKeyIn fails t if any attribute of any metric point or span holds one of
// keys, or a value containing it.
func (x *tel) noKeyIn(t *testing.T, keys ...string) {
	t.Helper()
	check := func(where string, set attribute.Set) {
		for _, kv := range set.ToSlice() {
			for _, k := range keys {
				if strings.Contains(kv.Value.String(), k) {
					t.Errorf("%s: attribute %s=%q holds the key %q", where, kv.Key, kv.Value.String(), k)
				}
			}
		}
	}
	s := x.collect(t)
	for name, m := range s.metrics {
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			for _, p := range d.DataPoints {
				check(name, p.Attributes)
			}
		case metricdata.Histogram[float64]:
			for _, p := range d.DataPoints {
				check(name, p.Attributes)
			}
		}
	}
	for _, sp := range x.spans.Ended() {
		check(sp.Name(), attribute.NewSet(sp.Attributes()...))
	}
}

// spansNamed returns the ended spans called name.
func (x *tel) spansNamed(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range x.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// attr returns the value of attribute k of span s.
func attr(s sdktrace.ReadOnlySpan, k attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// ctxT returns a context for one call that ends with the test.
func ctxT(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}
