package harness

import (
	"maps"
	"slices"
	"testing"
	"time"
)

func TestMedian_mediansRatesAndPoolsCounts(t *testing.T) {
	round := func(rate float64, ops uint64, p50 time.Duration, req float64, get float64) Result {
		return Result{
			Backend: "b", Scenario: Contended, Goroutines: 2, Ops: ops, OpsPerSec: rate,
			Latency: Percentiles{P50: p50, Max: 2 * p50, N: ops},
			Handoff: &Percentiles{P50: p50 / 2, N: ops},
			Jain:    rate / 1000, Counts: []uint64{ops / 2, ops - ops/2},
			ReqPerOp: req, ReqByCmd: map[string]float64{"evalsha": req},
			SrvCallsPerOp: get, SrvCallsByCmd: map[string]float64{"get": get},
			AllocsPerOp: rate / 100, Errors: 1,
		}
	}
	m := Median([]Result{
		round(300, 100, 3*time.Millisecond, 1, 2),
		round(100, 300, 1*time.Millisecond, 2, 4),
		round(200, 100, 9*time.Millisecond, 3, 6),
	})
	if m.OpsPerSec != 200 || m.Jain != 0.2 || m.AllocsPerOp != 2 {
		t.Errorf("rate %v jain %v allocs %v, want the medians 200, 0.2, 2",
			m.OpsPerSec, m.Jain, m.AllocsPerOp)
	}
	if m.Latency.P50 != 3*time.Millisecond || m.Handoff.P50 != 1500*time.Microsecond ||
		m.Latency.Max != 18*time.Millisecond {
		t.Errorf("p50 %v handoff p50 %v max %v, want 3ms, 1.5ms, 18ms",
			m.Latency.P50, m.Handoff.P50, m.Latency.Max)
	}
	if !slices.Equal(m.RoundOpsPerSec, []float64{300, 100, 200}) {
		t.Errorf("rounds %v, want each round's rate in order", m.RoundOpsPerSec)
	}
	if m.Ops != 500 || m.Latency.N != 500 || m.Errors != 3 ||
		!slices.Equal(m.Counts, []uint64{250, 250}) {
		t.Errorf("ops %d n %d errors %d counts %v, want sums 500, 500, 3, [250 250]",
			m.Ops, m.Latency.N, m.Errors, m.Counts)
	}
	// pooled: (1*100 + 2*300 + 3*100) / 500 = 2
	if m.ReqPerOp != 2 || !maps.Equal(m.ReqByCmd, map[string]float64{"evalsha": 2}) ||
		m.SrvCallsPerOp != 4 || !maps.Equal(m.SrvCallsByCmd, map[string]float64{"get": 4}) {
		t.Errorf("req %v %v srv %v %v, want pooled 2 and 4",
			m.ReqPerOp, m.ReqByCmd, m.SrvCallsPerOp, m.SrvCallsByCmd)
	}
	unmeasured := round(100, 100, time.Millisecond, -1, -1)
	if m := Median([]Result{round(1, 1, 1, 1, 1), unmeasured}); m.ReqPerOp != -1 ||
		m.SrvCallsPerOp != -1 || m.OpsPerSec != 50.5 {
		t.Errorf("req %v srv %v rate %v, want -1, -1 (a round unmeasured) and the mean of two 50.5",
			m.ReqPerOp, m.SrvCallsPerOp, m.OpsPerSec)
	}
}
