package harness

import (
	"slices"
	"time"
)

// Median merges one backend's results in one scenario over several rounds
// into one Result. Rates, latency percentiles, hand-off figures, Jain's
// index, early hand-offs and allocations are the median over the rounds
// (the mean of the middle two for an even count); RoundOpsPerSec keeps each
// round's rate. Requests and server calls per operation are pooled (all
// rounds' counts over all rounds' operations) so their breakdowns still add
// up; -1 if any round could not count them. Ops, Elapsed, Errors, the
// latency sample counts and the per-goroutine counts are summed, Max is the
// largest. rounds must not be empty.
func Median(rounds []Result) Result {
	if len(rounds) == 1 {
		r := rounds[0]
		r.RoundOpsPerSec = []float64{r.OpsPerSec}
		return r
	}
	first := rounds[0]
	out := Result{
		Backend:     first.Backend,
		Scenario:    first.Scenario,
		Goroutines:  first.Goroutines,
		Hold:        first.Hold,
		HandoffFrom: first.HandoffFrom,
	}
	var lat, gap []Percentiles
	var rate, jain, early, allocs, bytes []float64
	hasGap := false
	for _, r := range rounds {
		out.Elapsed += r.Elapsed
		out.Ops += r.Ops
		out.Errors += r.Errors
		if out.FirstErr == "" {
			out.FirstErr = r.FirstErr
		}
		out.RoundOpsPerSec = append(out.RoundOpsPerSec, r.OpsPerSec)
		rate = append(rate, r.OpsPerSec)
		lat = append(lat, r.Latency)
		if r.Handoff != nil {
			hasGap = true
			gap = append(gap, *r.Handoff)
		}
		jain = append(jain, r.Jain)
		early = append(early, float64(r.Early))
		allocs = append(allocs, r.AllocsPerOp)
		bytes = append(bytes, r.BytesPerOp)
		if len(r.Counts) > 0 {
			if out.Counts == nil {
				out.Counts = make([]uint64, len(r.Counts))
			}
			for i, c := range r.Counts {
				if i < len(out.Counts) {
					out.Counts[i] += c
				}
			}
		}
	}
	out.OpsPerSec = median(rate)
	out.Latency = medianPercentiles(lat)
	if hasGap {
		h := medianPercentiles(gap)
		out.Handoff = &h
	}
	out.Jain = median(jain)
	out.Early = uint64(median(early) + 0.5)
	out.AllocsPerOp = median(allocs)
	out.BytesPerOp = median(bytes)
	out.ReqPerOp, out.ReqByCmd = pooled(rounds,
		func(r *Result) (float64, map[string]float64) {
			return r.ReqPerOp, r.ReqByCmd
		})
	out.SrvCallsPerOp, out.SrvCallsByCmd = pooled(rounds,
		func(r *Result) (float64, map[string]float64) {
			return r.SrvCallsPerOp, r.SrvCallsByCmd
		})
	return out
}

func pooled(
	rounds []Result,
	get func(*Result) (float64, map[string]float64),
) (float64, map[string]float64) {
	var sum, ops float64
	var by map[string]float64
	for i := range rounds {
		per, m := get(&rounds[i])
		if per < 0 {
			return -1, nil
		}
		n := float64(rounds[i].Ops)
		sum += per * n
		ops += n
		if m != nil && by == nil {
			by = map[string]float64{}
		}
		for k, v := range m {
			by[k] += v * n
		}
	}
	if ops == 0 {
		return -1, nil
	}
	for k := range by {
		by[k] /= ops
	}
	return sum / ops, by
}

func medianPercentiles(ps []Percentiles) Percentiles {
	var out Percentiles
	pick := func(f func(Percentiles) time.Duration) time.Duration {
		v := make([]float64, len(ps))
		for i, p := range ps {
			v[i] = float64(f(p))
		}
		return time.Duration(median(v))
	}
	out.P50 = pick(func(p Percentiles) time.Duration { return p.P50 })
	out.P90 = pick(func(p Percentiles) time.Duration { return p.P90 })
	out.P99 = pick(func(p Percentiles) time.Duration { return p.P99 })
	out.P999 = pick(func(p Percentiles) time.Duration { return p.P999 })
	out.Mean = pick(func(p Percentiles) time.Duration { return p.Mean })
	for _, p := range ps {
		out.N += p.N
		out.Max = max(out.Max, p.Max)
	}
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

func minMax(v []float64) (lo, hi float64) {
	if len(v) == 0 {
		return 0, 0
	}
	return slices.Min(v), slices.Max(v)
}
