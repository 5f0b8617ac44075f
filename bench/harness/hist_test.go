package harness

import (
	"math"
	"testing"
	"time"
)

// within reports whether got is within frac of want.
func within(got, want time.Duration, frac float64) bool {
	return math.Abs(float64(got-want)) <= frac*float64(want)
}

func TestHistogram_Quantile_uniformMicroseconds(t *testing.T) {
	var h Histogram
	for i := 1; i <= 1000; i++ { // 1µs .. 1000µs
		h.Record(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 500 * time.Microsecond},
		{0.9, 900 * time.Microsecond},
		{0.99, 990 * time.Microsecond},
		{0.999, 999 * time.Microsecond},
		{1, 1000 * time.Microsecond},
	} {
		// Buckets are 1/128 of an octave wide: under 0.8% error.
		if got := h.Quantile(c.q); !within(got, c.want, 0.008) {
			t.Errorf("Quantile(%v) = %v, want %v ±0.8%%", c.q, got, c.want)
		}
	}
	if got, want := h.Mean(), 500500*time.Nanosecond; got != want {
		t.Errorf("Mean = %v, want %v", got, want)
	}
	if h.Count() != 1000 || h.Max() != time.Millisecond {
		t.Errorf("Count, Max = %d, %v; want 1000, 1ms", h.Count(), h.Max())
	}
}

func TestHistogram_Quantile_smallValuesExact(t *testing.T) {
	var h Histogram
	for _, v := range []time.Duration{3, 1, 2, 200, 100} {
		h.Record(v)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.2, 1}, {0.4, 2}, {0.6, 3}, {0.8, 100}, {1, 200}} {
		if got := h.Quantile(c.q); got != c.want {
			t.Errorf("Quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
}

func TestHistogram_Merge_tailFromOtherWorker(t *testing.T) {
	// 990 fast pairs in one worker, 10 slow ones in another: p99 must see
	// the fast ones, p99.9 the slow ones.
	var a, b, all Histogram
	for i := 0; i < 990; i++ {
		a.Record(50 * time.Microsecond)
	}
	for i := 0; i < 10; i++ {
		b.Record(20 * time.Millisecond)
	}
	all.Merge(&a)
	all.Merge(&b)
	if got := all.Quantile(0.99); !within(got, 50*time.Microsecond, 0.008) {
		t.Errorf("p99 = %v, want 50µs", got)
	}
	if got := all.Quantile(0.999); !within(got, 20*time.Millisecond, 0.008) {
		t.Errorf("p99.9 = %v, want 20ms", got)
	}
	if all.Count() != 1000 {
		t.Errorf("Count = %d, want 1000", all.Count())
	}
}

func TestHistogram_emptyAndNegative(t *testing.T) {
	var h Histogram
	if h.Quantile(0.5) != 0 || h.Mean() != 0 {
		t.Fatalf("empty histogram: p50 %v mean %v, want 0", h.Quantile(0.5), h.Mean())
	}
	h.Record(-5 * time.Microsecond)
	if got := h.Quantile(1); got != 0 {
		t.Errorf("negative value recorded as %v, want 0", got)
	}
	h.Record(time.Hour) // past the last bucket: clamped to the recorded max
	if got := h.Quantile(1); got != time.Hour {
		t.Errorf("p100 after 1h = %v, want 1h", got)
	}
}

func TestBucketOf_monotonicAndCovering(t *testing.T) {
	prev := -1
	for v := int64(0); v < 1<<22; v += 1 + v/97 {
		b := bucketOf(v)
		if b < prev {
			t.Fatalf("bucketOf(%d) = %d < %d", v, b, prev)
		}
		prev = b
		mid := bucketValue(b)
		if math.Abs(float64(mid-v)) > float64(v)/128+1 {
			t.Fatalf("value %d lands in bucket %d whose middle is %d", v, b, mid)
		}
	}
}

func TestJain(t *testing.T) {
	for _, c := range []struct {
		counts []uint64
		want   float64
	}{
		{[]uint64{5, 5, 5, 5}, 1},
		{[]uint64{100, 0, 0, 0}, 0.25},
		{[]uint64{10, 20}, 0.9},                       // 30² / (2·500)
		{[]uint64{1200, 1100, 1000, 900}, 0.98878924}, // 4200² / (4·4460000)
		{[]uint64{0, 0}, 0},
		{nil, 0},
	} {
		if got := Jain(c.counts); math.Abs(got-c.want) > 1e-6 {
			t.Errorf("Jain(%v) = %v, want %v", c.counts, got, c.want)
		}
	}
}

func TestParseCommandStats_sumsCallsWithoutInfo(t *testing.T) {
	info := "# Commandstats\r\n" +
		"cmdstat_evalsha:calls=200,usec=900,usec_per_call=4.50,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_set:calls=100,usec=100,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_info:calls=7,usec=70,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_client|tracking:calls=3,usec=3,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n"
	s := ParseCommandStats(info)
	if s.Total != 303 || s.Calls["evalsha"] != 200 || s.Calls["client|tracking"] != 3 {
		t.Fatalf("ParseCommandStats = %+v, want total 303 (info left out)", s)
	}
	if _, ok := s.Calls["info"]; ok {
		t.Errorf("info counted: %+v", s.Calls)
	}
	before := ParseCommandStats("cmdstat_evalsha:calls=50,usec=1\r\ncmdstat_set:calls=100,usec=1\r\n")
	d := s.Sub(before)
	if d.Total != 153 || d.Calls["evalsha"] != 150 || d.Calls["set"] != 0 {
		t.Errorf("Sub = %+v, want evalsha 150, tracking 3, total 153", d)
	}
}

func TestCommandStats_Sub_totalOnlyTakesOffOneInfo(t *testing.T) {
	d := CommandStats{Total: 1011}.Sub(CommandStats{Total: 10})
	if d.Total != 1000 {
		t.Errorf("Sub = %d, want 1000 (one INFO between snapshots)", d.Total)
	}
}
