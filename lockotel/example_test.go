package lockotel_test

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/klauthed/lock/lockmem"
	"github.com/klauthed/lock/lockotel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// Wrap a Manager, take a key twice (the second TryAcquire finds it held)
// and read the acquisitions counter by outcome.
func ExampleWrap() {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	locks := lockotel.Wrap(lockmem.New(lockmem.Options{}), lockotel.Options{
		MeterProvider: mp,
		Backend:       "mem",
	})
	defer locks.(io.Closer).Close()

	ctx := context.Background()
	l, _, _ := locks.TryAcquire(ctx, "orders:17", time.Minute)
	_, held, _ := locks.TryAcquire(ctx, "orders:17", time.Minute)
	fmt.Println("second TryAcquire got it:", held)
	_ = l.Release(ctx)

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(ctx, &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name != "klauthed.lock.acquisitions" {
			continue
		}
		for _, p := range m.Data.(metricdata.Sum[int64]).DataPoints {
			oc, _ := p.Attributes.Value("lock.outcome")
			if oc.AsString() == "acquired" {
				fmt.Println("acquired:", p.Value)
			}
		}
		for _, p := range m.Data.(metricdata.Sum[int64]).DataPoints {
			oc, _ := p.Attributes.Value("lock.outcome")
			if oc.AsString() == "contended" {
				fmt.Println("contended:", p.Value)
			}
		}
	}
	// Output:
	// second TryAcquire got it: false
	// acquired: 1
	// contended: 1
}
