package harness

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is a whole run: its setting, every Result, and the targets.
type Report struct {
	Target     string        `json:"target"`
	TargetKind string        `json:"target_kind"`
	Version    string        `json:"redis_version,omitempty"`
	RTT        time.Duration `json:"rtt_ns"`
	GOMAXPROCS int           `json:"gomaxprocs"`
	GoVersion  string        `json:"go_version"`
	Duration   time.Duration `json:"duration_ns"`
	// Rounds is how many times each backend ran each scenario, backends
	// taking turns (see Median); 0 or 1 means once.
	Rounds  int           `json:"rounds,omitempty"`
	TTL     time.Duration `json:"ttl_ns"`
	Results []Result      `json:"results"`
	Targets []Check       `json:"targets"`
	Notes   []string      `json:"notes"`
}

// NewReport fills a Report's setting from the run.
func NewReport(t *Target, rtt time.Duration, o Options) *Report {
	r := &Report{RTT: rtt, GOMAXPROCS: runtime.GOMAXPROCS(0), GoVersion: runtime.Version(), Duration: o.Duration, TTL: o.TTL}
	if t != nil {
		r.Target, r.TargetKind, r.Version = t.String(), t.Kind, t.Version
	}
	return r
}

// Check is one of the project's targets for lockredis, as measured.
type Check struct {
	Name   string `json:"name"`
	Status string `json:"status"` // "PASS", "MISS" or "n/a"
	Detail string `json:"detail"`
}

func (r *Report) find(scenario, backend string) *Result {
	for i := range r.Results {
		if r.Results[i].Scenario == scenario && r.Results[i].Backend == backend {
			return &r.Results[i]
		}
	}
	return nil
}

var peers = []string{"rueidislock", "redislock", "redsync"}

// Evaluate fills r.Targets from r.Results: the targets issue 5 sets for
// lockredis. A target whose inputs were not measured is "n/a".
func (r *Report) Evaluate() {
	r.Targets = nil
	add := func(name string, ok bool, known bool, detail string) {
		st := "n/a"
		if known {
			st = "MISS"
			if ok {
				st = "PASS"
			}
		}
		r.Targets = append(r.Targets, Check{Name: name, Status: st, Detail: detail})
	}
	lu, lc := r.find(Uncontended, "lockredis"), r.find(Contended, "lockredis")

	// Uncontended throughput against the raw floor.
	if raw := r.find(Uncontended, "raw"); lu != nil && raw != nil && raw.OpsPerSec > 0 {
		ratio := lu.OpsPerSec / raw.OpsPerSec
		add("uncontended pairs/s >= 0.95 x raw", ratio >= 0.95, true,
			fmt.Sprintf("%.0f vs raw %.0f = %.3f x", lu.OpsPerSec, raw.OpsPerSec, ratio))
	} else {
		add("uncontended pairs/s >= 0.95 x raw", false, false, "lockredis or raw not run")
	}
	// Ahead of every peer, and fewer allocations than every peer.
	var ahead, fewer []string
	aheadOK, fewerOK, anyPeer := true, true, false
	for _, p := range peers {
		pr := r.find(Uncontended, p)
		if pr == nil || lu == nil {
			continue
		}
		anyPeer = true
		if lu.OpsPerSec <= pr.OpsPerSec {
			aheadOK = false
		}
		ahead = append(ahead, fmt.Sprintf("%s %.0f", p, pr.OpsPerSec))
		if lu.AllocsPerOp >= pr.AllocsPerOp {
			fewerOK = false
		}
		fewer = append(fewer, fmt.Sprintf("%s %.1f", p, pr.AllocsPerOp))
	}
	if lu != nil && anyPeer {
		add("uncontended pairs/s ahead of every peer", aheadOK, true,
			fmt.Sprintf("lockredis %.0f; %s", lu.OpsPerSec, strings.Join(ahead, ", ")))
		add("allocs per acquire+release below every peer", fewerOK, true,
			fmt.Sprintf("lockredis %.1f; %s", lu.AllocsPerOp, strings.Join(fewer, ", ")))
	} else {
		add("uncontended pairs/s ahead of every peer", false, false, "lockredis or peers not run")
		add("allocs per acquire+release below every peer", false, false, "lockredis or peers not run")
	}
	if lc != nil && lc.Handoff != nil && r.RTT > 0 {
		x := float64(lc.Handoff.P50) / float64(r.RTT)
		add("contended hand-off p50 <= 1.5 x round trip", x <= 1.5, true,
			fmt.Sprintf("%s vs PING p50 %s = %.2f x", fmtDur(lc.Handoff.P50), fmtDur(r.RTT), x))
	} else {
		add("contended hand-off p50 <= 1.5 x round trip", false, false, "lockredis contended not run")
	}
	const reqTarget = "contended Redis requests per acquisition <= 3"
	if lc != nil && lc.ReqPerOp >= 0 {
		srv := "srv-calls/acq not measured"
		if lc.SrvCallsPerOp >= 0 {
			srv = fmt.Sprintf("srv-calls/acq %.2f (%s)", lc.SrvCallsPerOp, fmtBreakdown(lc.SrvCallsByCmd))
		}
		add(reqTarget, lc.ReqPerOp <= 3, true,
			fmt.Sprintf("req/acq %.2f (%s); %s", lc.ReqPerOp, fmtBreakdown(lc.ReqByCmd), srv))
	} else {
		add(reqTarget, false, false, "not measured")
	}
	if lc != nil {
		add("contended Jain's index >= 0.95", lc.Jain >= 0.95, true, fmt.Sprintf("%.3f", lc.Jain))
	} else {
		add("contended Jain's index >= 0.95", false, false, "lockredis contended not run")
	}
}

func fmtBreakdown(m map[string]float64) string {
	type kv struct {
		k string
		v float64
	}
	var kvs []kv
	for k, v := range m {
		if v >= 0.005 { // what rounds to 0.00 is noise (handshakes, pings)
			kvs = append(kvs, kv{k, v})
		}
	}
	// largest first, then by name
	for i := 1; i < len(kvs); i++ {
		for j := i; j > 0 && (kvs[j].v > kvs[j-1].v || kvs[j].v == kvs[j-1].v && kvs[j].k < kvs[j-1].k); j-- {
			kvs[j], kvs[j-1] = kvs[j-1], kvs[j]
		}
	}
	var parts []string
	for _, e := range kvs {
		parts = append(parts, fmt.Sprintf("%s %.2f", e.k, e.v))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// fmtDur prints a latency with three significant digits.
func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "0"
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	case d < time.Millisecond:
		return fmt.Sprintf("%.1fµs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}

func fmtCmds(v float64) string {
	if v < 0 || math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

// WriteTable writes the human report: a heading, one aligned table per
// scenario with one row per backend, the targets and the notes.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "lockbench: Redis %s (%s", r.Target, r.TargetKind)
	if r.Version != "" {
		fmt.Fprintf(w, ", redis_version %s", r.Version)
	}
	fmt.Fprintf(w, "), %s, GOMAXPROCS %d, %s per backend per scenario", r.GoVersion, r.GOMAXPROCS, r.Duration)
	spreadHead, spread := "", func(Result) string { return "" }
	if r.Rounds > 1 {
		fmt.Fprintf(w, " per round, %d rounds with backends taking turns (medians shown; req and srv-calls pooled over rounds)", r.Rounds)
		spreadHead = "min-max\t"
		spread = func(x Result) string {
			lo, hi := minMax(x.RoundOpsPerSec)
			return fmt.Sprintf("%.0f-%.0f\t", lo, hi)
		}
	}
	fmt.Fprintf(w, ", ttl %s\n", r.TTL)
	fmt.Fprintf(w, "round trip: PING p50 %s (rueidis, one at a time)\n", fmtDur(r.RTT))
	for _, sc := range Scenarios {
		var rows []Result
		for _, res := range r.Results {
			if res.Scenario == sc {
				rows = append(rows, res)
			}
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		switch sc {
		case Uncontended:
			fmt.Fprintf(w, "uncontended: %d goroutines, each on its own keys; latency of one Acquire+Release\n", rows[0].Goroutines)
			fmt.Fprintf(tw, "backend\tpairs/s\t%sp50\tp90\tp99\tp99.9\treq/pair\tsrv-calls/pair\tallocs/pair\tB/pair\terrors\t\n", spreadHead)
			for _, x := range rows {
				fmt.Fprintf(tw, "%s\t%.0f\t%s%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%.0f\t%d\t\n", x.Backend, x.OpsPerSec, spread(x),
					fmtDur(x.Latency.P50), fmtDur(x.Latency.P90), fmtDur(x.Latency.P99), fmtDur(x.Latency.P999),
					fmtCmds(x.ReqPerOp), fmtCmds(x.SrvCallsPerOp), x.AllocsPerOp, x.BytesPerOp, x.Errors)
			}
		case Contended:
			fmt.Fprintf(w, "contended: %d waiters on one key, hold %s; hand-off = previous Release returned -> next Acquire returned\n", rows[0].Goroutines, rows[0].Hold)
			fmt.Fprintf(tw, "backend\tacq/s\t%shandoff p50\thandoff p99\tearly\tjain\treq/acq\tsrv-calls/acq\tallocs/acq\twait p50\twait p99\terrors\t\n", spreadHead)
			for _, x := range rows {
				var hp50, hp99 time.Duration
				if x.Handoff != nil {
					hp50, hp99 = x.Handoff.P50, x.Handoff.P99
				}
				fmt.Fprintf(tw, "%s\t%.0f\t%s%s\t%s\t%d\t%.3f\t%s\t%s\t%.1f\t%s\t%s\t%d\t\n", x.Backend, x.OpsPerSec, spread(x),
					fmtDur(hp50), fmtDur(hp99), x.Early, x.Jain, fmtCmds(x.ReqPerOp), fmtCmds(x.SrvCallsPerOp), x.AllocsPerOp,
					fmtDur(x.Latency.P50), fmtDur(x.Latency.P99), x.Errors)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(r.Targets) > 0 {
		fmt.Fprintln(w, "\ntargets (lockredis):")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, c := range r.Targets {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", c.Status, c.Name, c.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	for _, res := range r.Results {
		if res.FirstErr != "" {
			fmt.Fprintf(w, "\n%s %s: %d errors, first: %s", res.Backend, res.Scenario, res.Errors, res.FirstErr)
		}
	}
	if len(r.Notes) > 0 {
		fmt.Fprintln(w, "\nnotes:")
		for _, n := range r.Notes {
			fmt.Fprintf(w, "  %s\n", n)
		}
	}
	return nil
}

// WriteJSON writes the report as one indented JSON document.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
