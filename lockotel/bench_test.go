package lockotel_test

import (
	"context"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockmem"
	"github.com/klauthed/lock/lockotel"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// discardExporter drops every span.
type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

// BenchmarkAcquireRelease measures one uncontended TryAcquire+Release on
// lockmem, bare and wrapped: with the no-op providers, with the SDK meter
// provider only (tracer no-op), and with the SDK meter provider and an SDK
// tracer provider sampling every span into a batcher that discards them.
func BenchmarkAcquireRelease(b *testing.B) {
	sdkMeter := func(b *testing.B) *sdkmetric.MeterProvider {
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
		return mp
	}
	variants := []struct {
		name string
		wrap func(b *testing.B, m lock.Manager) lock.Manager
	}{
		{"bare", func(_ *testing.B, m lock.Manager) lock.Manager { return m }},
		{"noop", func(_ *testing.B, m lock.Manager) lock.Manager {
			return lockotel.Wrap(m, lockotel.Options{
				MeterProvider:  metricnoop.NewMeterProvider(),
				TracerProvider: tracenoop.NewTracerProvider(),
			})
		}},
		{"sdk-metrics", func(b *testing.B, m lock.Manager) lock.Manager {
			return lockotel.Wrap(m, lockotel.Options{
				MeterProvider:  sdkMeter(b),
				TracerProvider: tracenoop.NewTracerProvider(),
			})
		}},
		{"sdk-metrics+traces", func(b *testing.B, m lock.Manager) lock.Manager {
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardExporter{}),
				sdktrace.WithSampler(sdktrace.AlwaysSample()))
			b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			return lockotel.Wrap(m, lockotel.Options{MeterProvider: sdkMeter(b), TracerProvider: tp})
		}},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			inner := lockmem.New(lockmem.Options{})
			b.Cleanup(func() { inner.Close() })
			m := v.wrap(b, inner)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				l, ok, err := m.TryAcquire(ctx, "bench", time.Minute)
				if err != nil || !ok {
					b.Fatalf("TryAcquire = %v, %v, %v", l, ok, err)
				}
				if err := l.Release(ctx); err != nil {
					b.Fatalf("Release = %v", err)
				}
			}
		})
	}
}
