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
	// PushFloor is PushFloor's measurement (0: not measured): the least a
	// hand-off woken by Redis takes here.
	PushFloor time.Duration `json:"push_floor_ns,omitempty"`
	// PushFloorProcs is the same with the subscriber in another process.
	PushFloorProcs time.Duration `json:"push_floor_procs_ns,omitempty"`
	GOMAXPROCS     int           `json:"gomaxprocs"`
	GoVersion      string        `json:"go_version"`
	Duration       time.Duration `json:"duration_ns"`
	// Rounds is how many times each backend ran each scenario, backends
	// taking turns (see Median); 0 or 1 means once.
	Rounds int `json:"rounds,omitempty"`
	// ClientsDuration is the measured time of ContendedClients and
	// ContendedProcs, when it differs from Duration.
	ClientsDuration time.Duration `json:"clients_duration_ns,omitempty"`
	TTL             time.Duration `json:"ttl_ns"`
	Results         []Result      `json:"results"`
	Targets         []Check       `json:"targets"`
	Notes           []string      `json:"notes"`
}

// NewReport fills a Report's setting from the run.
func NewReport(t *Target, rtt time.Duration, o Options) *Report {
	r := &Report{
		RTT:        rtt,
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		GoVersion:  runtime.Version(),
		Duration:   o.Duration,
		TTL:        o.TTL,
	}
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

// findN is find for the scenarios run at several waiter counts.
func (r *Report) findN(scenario string, waiters int, backend string) *Result {
	for i := range r.Results {
		x := &r.Results[i]
		if x.Scenario == scenario && x.Goroutines == waiters && x.Backend == backend {
			return x
		}
	}
	return nil
}

// groups returns the results of scenario split by waiter count, in the
// order the counts first appear.
func (r *Report) groups(scenario string) [][]Result {
	var out [][]Result
	idx := map[int]int{}
	for _, x := range r.Results {
		if x.Scenario != scenario {
			continue
		}
		i, ok := idx[x.Goroutines]
		if !ok {
			i = len(out)
			idx[x.Goroutines] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], x)
	}
	return out
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
	for _, sc := range []string{ContendedClients, ContendedProcs} {
		for _, g := range r.groups(sc) {
			r.evaluatePerWaiter(sc, g[0].Goroutines, add)
		}
	}
}

// evaluatePerWaiter adds issue 11's targets for lockredis with a client (or
// a process) per waiter, at one waiter count.
func (r *Report) evaluatePerWaiter(
	sc string,
	n int,
	add func(name string, ok, known bool, detail string),
) {
	name := func(t string) string { return fmt.Sprintf("%s %d: %s", sc, n, t) }
	l := r.findN(sc, n, "lockredis")
	if l == nil {
		add(name("lockredis"), false, false, "lockredis not run")
		return
	}
	const reqT, gapT, jainT = "requests per acquisition <= 3",
		"hand-off p50 <= 1.5 x round trip", "Jain's index >= 0.95"
	if l.ReqPerOp >= 0 {
		srv := "srv-calls/acq not measured"
		if l.SrvCallsPerOp >= 0 {
			srv = fmt.Sprintf("srv-calls/acq %.2f", l.SrvCallsPerOp)
		}
		add(name(reqT), l.ReqPerOp <= 3, true,
			fmt.Sprintf("req/acq %.2f (%s); %s", l.ReqPerOp, fmtBreakdown(l.ReqByCmd), srv))
	} else {
		add(name(reqT), false, false, "not measured")
	}
	if l.Handoff != nil && l.Handoff.N > 0 && r.RTT > 0 {
		x := float64(l.Handoff.P50) / float64(r.RTT)
		add(name(gapT), x <= 1.5, true, fmt.Sprintf("%s (from Release called) vs PING p50 %s = %.2f x%s",
			fmtDur(l.Handoff.P50), fmtDur(r.RTT), x, r.floorNote(sc, l.Handoff.P50)))
	} else {
		add(name(gapT), false, false, "no hand-offs measured")
	}
	add(name(jainT), l.Jain >= 0.95, true, fmt.Sprintf("%.3f", l.Jain))
	const floorT = "acq/s >= raw (1ms polling floor)"
	if raw := r.findN(sc, n, "raw"); raw != nil && raw.OpsPerSec > 0 {
		add(name(floorT), l.OpsPerSec >= raw.OpsPerSec, true,
			fmt.Sprintf("%.0f vs raw %.0f = %.2f x", l.OpsPerSec, raw.OpsPerSec, l.OpsPerSec/raw.OpsPerSec))
	} else {
		add(name(floorT), false, false, "raw not run")
	}
	var best *Result
	var others []string
	for _, p := range peers {
		if pr := r.findN(sc, n, p); pr != nil {
			others = append(others, fmt.Sprintf("%s %.0f", p, pr.OpsPerSec))
			if best == nil || pr.OpsPerSec > best.OpsPerSec {
				best = pr
			}
		}
	}
	const peerT = "acq/s ahead of every peer"
	if best != nil {
		add(name(peerT), l.OpsPerSec > best.OpsPerSec, true,
			fmt.Sprintf("lockredis %.0f vs best peer %s %.0f = %.2f x (%s)",
				l.OpsPerSec, best.Backend, best.OpsPerSec, l.OpsPerSec/best.OpsPerSec,
				strings.Join(others, ", ")))
	} else {
		add(name(peerT), false, false, "no peer run")
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
		for j := i; j > 0 && (kvs[j].v > kvs[j-1].v ||
			kvs[j].v == kvs[j-1].v && kvs[j].k < kvs[j-1].k); j-- {
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

func fmtAllocs(v float64) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

// clientsTime is ", <d> per round" for the per-waiter scenarios when their
// measured time is not the heading's.
func (r *Report) clientsTime() string {
	if r.ClientsDuration == 0 || r.ClientsDuration == r.Duration {
		return ""
	}
	if r.Rounds > 1 {
		return fmt.Sprintf(", %s per backend per round", r.ClientsDuration)
	}
	return fmt.Sprintf(", %s per backend", r.ClientsDuration)
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
	fmt.Fprintf(w, "), %s, GOMAXPROCS %d, %s per backend per scenario",
		r.GoVersion, r.GOMAXPROCS, r.Duration)
	spreadHead, spread := "", func(Result) string { return "" }
	if r.Rounds > 1 {
		fmt.Fprintf(w, " per round, %d rounds with backends taking turns"+
			" (medians shown; req and srv-calls pooled over rounds)", r.Rounds)
		spreadHead = "min-max\t"
		spread = func(x Result) string {
			lo, hi := minMax(x.RoundOpsPerSec)
			return fmt.Sprintf("%.0f-%.0f\t", lo, hi)
		}
	}
	fmt.Fprintf(w, ", ttl %s\n", r.TTL)
	fmt.Fprintf(w, "round trip: PING p50 %s (rueidis, one at a time)\n", fmtDur(r.RTT))
	if r.PushFloor > 0 {
		fmt.Fprintf(w, "push floor: p50 %s = %.2f x PING (a script's PUBLISH -> an idle subscriber on"+
			" another client sees it; publisher pausing -hold between sends): no hand-off woken by"+
			" Redis is faster here\n", fmtDur(r.PushFloor), float64(r.PushFloor)/float64(r.RTT))
	}
	if r.PushFloorProcs > 0 {
		fmt.Fprintf(w, "push floor across processes: p50 %s = %.2f x PING (the same, the subscriber"+
			" in another process)\n", fmtDur(r.PushFloorProcs), float64(r.PushFloorProcs)/float64(r.RTT))
	}
	var groups [][]Result
	for _, sc := range AllScenarios {
		groups = append(groups, r.groups(sc)...)
	}
	for _, rows := range groups {
		sc := rows[0].Scenario
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		switch sc {
		case Uncontended:
			fmt.Fprintf(w, "uncontended: %d goroutines, each on its own keys;"+
				" latency of one Acquire+Release\n", rows[0].Goroutines)
			fmt.Fprintf(tw, "backend\tpairs/s\t%sp50\tp90\tp99\tp99.9\t"+
				"req/pair\tsrv-calls/pair\tallocs/pair\tB/pair\terrors\t\n", spreadHead)
			for _, x := range rows {
				fmt.Fprintf(tw, "%s\t%.0f\t%s%s\t%s\t%s\t%s\t"+
					"%s\t%s\t%.1f\t%.0f\t%d\t\n",
					x.Backend, x.OpsPerSec, spread(x),
					fmtDur(x.Latency.P50), fmtDur(x.Latency.P90),
					fmtDur(x.Latency.P99), fmtDur(x.Latency.P999),
					fmtCmds(x.ReqPerOp), fmtCmds(x.SrvCallsPerOp), x.AllocsPerOp, x.BytesPerOp, x.Errors)
			}
		case Contended, ContendedClients, ContendedProcs:
			switch sc {
			case Contended:
				fmt.Fprintf(w, "contended: %d waiters sharing one backend, on one key, hold %s;"+
					" hand-off = previous Release returned -> next Acquire returned\n",
					rows[0].Goroutines, rows[0].Hold)
			case ContendedClients:
				fmt.Fprintf(w, "contended-clients: %d waiters on one key,"+
					" each with its own backend and client, hold %s%s;"+
					" hand-off = previous Release called -> next Acquire returned\n",
					rows[0].Goroutines, rows[0].Hold, r.clientsTime())
			case ContendedProcs:
				fmt.Fprintf(w, "contended-procs: %d waiters on one key,"+
					" each a process of its own, hold %s%s;"+
					" hand-off = previous Release called -> next Acquire returned (wall clock);"+
					" allocations not measured\n",
					rows[0].Goroutines, rows[0].Hold, r.clientsTime())
			}
			fmt.Fprintf(tw, "backend\tacq/s\t%shandoff p50\thandoff p99\tearly\tjain\t"+
				"req/acq\tsrv-calls/acq\tallocs/acq\twait p50\twait p99\terrors\t\n", spreadHead)
			for _, x := range rows {
				var hp50, hp99 time.Duration
				if x.Handoff != nil {
					hp50, hp99 = x.Handoff.P50, x.Handoff.P99
				}
				fmt.Fprintf(tw, "%s\t%.0f\t%s%s\t%s\t%d\t%.3f\t"+
					"%s\t%s\t%s\t%s\t%s\t%d\t\n",
					x.Backend, x.OpsPerSec, spread(x),
					fmtDur(hp50), fmtDur(hp99), x.Early, x.Jain,
					fmtCmds(x.ReqPerOp), fmtCmds(x.SrvCallsPerOp), fmtAllocs(x.AllocsPerOp),
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
			fmt.Fprintf(w, "\n%s %s (%d): %d errors, first: %s",
				res.Backend, res.Scenario, res.Goroutines, res.Errors, res.FirstErr)
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

// floorNote puts a hand-off of scenario sc beside the push floor that
// applies to it, if that was measured.
func (r *Report) floorNote(sc string, handoff time.Duration) string {
	floor := r.PushFloor
	if sc == ContendedProcs {
		floor = r.PushFloorProcs
	}
	if floor <= 0 {
		return ""
	}
	return fmt.Sprintf("; push floor %s, hand-off = %.2f x floor",
		fmtDur(floor), float64(handoff)/float64(floor))
}
