package lockotel_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauthed/lock/lockmem"
	"github.com/klauthed/lock/lockotel"
	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

var errExport = errors.New("exporter down")

// stuckSpanExporter blocks every export until unblock is closed, then
// fails it.
type stuckSpanExporter struct {
	unblock chan struct{}
	calls   atomic.Int64
}

func (e *stuckSpanExporter) ExportSpans(ctx context.Context, _ []sdktrace.ReadOnlySpan) error {
	e.calls.Add(1)
	select {
	case <-e.unblock:
	case <-ctx.Done():
	}
	return errExport
}

func (e *stuckSpanExporter) Shutdown(context.Context) error { return nil }

// failingMetricExporter fails every export.
type failingMetricExporter struct{ calls atomic.Int64 }

func (e *failingMetricExporter) Temporality(k sdkmetric.InstrumentKind) metricdata.Temporality {
	return sdkmetric.DefaultTemporalitySelector(k)
}

func (e *failingMetricExporter) Aggregation(k sdkmetric.InstrumentKind) sdkmetric.Aggregation {
	return sdkmetric.DefaultAggregationSelector(k)
}

func (e *failingMetricExporter) Export(context.Context, *metricdata.ResourceMetrics) error {
	e.calls.Add(1)
	return errExport
}

func (e *failingMetricExporter) ForceFlush(context.Context) error { return nil }
func (e *failingMetricExporter) Shutdown(context.Context) error   { return nil }

// TestWrap_failingExporters: with a span exporter that hangs and a metric
// exporter that fails, every lock call still succeeds, and promptly: the
// SDK drops what it cannot queue instead of blocking the caller.
func TestWrap_failingExporters(t *testing.T) {
	var handled atomic.Int64
	prev := otel.GetErrorHandler()
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(error) { handled.Add(1) }))
	t.Cleanup(func() { otel.SetErrorHandler(prev) })

	spanExp := &stuckSpanExporter{unblock: make(chan struct{})}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(spanExp,
		sdktrace.WithMaxQueueSize(8), sdktrace.WithMaxExportBatchSize(4),
		sdktrace.WithBatchTimeout(time.Millisecond)))
	metricExp := &failingMetricExporter{}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(
		sdkmetric.NewPeriodicReader(metricExp, sdkmetric.WithInterval(2*time.Millisecond))))
	t.Cleanup(func() {
		close(spanExp.unblock)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tp.Shutdown(ctx) // returns the exporter's error
		_ = mp.Shutdown(ctx)
	})
	inner := lockmem.New(lockmem.Options{})
	defer inner.Close()
	m := lockotel.Wrap(inner, lockotel.Options{MeterProvider: mp, TracerProvider: tp})

	ctx := ctxT(t)
	const n = 2000
	start := time.Now()
	for i := range n {
		l, err := m.Acquire(ctx, "k", time.Minute)
		if err != nil {
			t.Fatalf("Acquire %d = %v", i, err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Release %d = %v", i, err)
		}
		if i == n/2 {
			// Let the exporters run (and fail) while calls go on.
			waitFor(t, "a failed metric export", func() bool { return metricExp.calls.Load() > 0 })
		}
	}
	// 2000 pairs take a few ms (tens under -race); a caller blocked on the
	// hanging exporter would take until the test's end.
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("%d Acquire+Release pairs took %v with a hanging exporter", n, d)
	}
	if spanExp.calls.Load() == 0 {
		t.Errorf("the span exporter was never called; the test proves nothing")
	}
	waitFor(t, "an export error handled", func() bool { return handled.Load() > 0 })
}
