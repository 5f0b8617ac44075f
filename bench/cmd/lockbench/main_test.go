package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauthed/lock/bench/harness"
	"github.com/klauthed/lock/internal/redistest"
)

// TestMain lets this test binary be a contended-procs waiter, as the
// lockbench binary is.
func TestMain(m *testing.M) {
	if harness.IsChild() {
		if err := harness.RunChild(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "waiter:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// checkReport asserts that every backend ran in every scenario that applies
// to it, at every waiter count in clients for the per-client scenarios, and
// produced real figures.
func checkReport(
	t *testing.T,
	rep *harness.Report,
	scenarios []string,
	clients []int,
	wantCmds bool,
) {
	t.Helper()
	backends := harness.Backends()
	type row struct {
		sc string
		n  int
		b  string
	}
	var want []row
	for _, sc := range scenarios {
		for _, b := range backends {
			info, _ := harness.Lookup(b)
			if !harness.Applies(info, sc) {
				continue
			}
			if sc == harness.ContendedClients || sc == harness.ContendedProcs {
				for _, n := range clients {
					want = append(want, row{sc, n, b})
				}
			} else {
				want = append(want, row{sc, 0, b})
			}
		}
	}
	if got := len(rep.Results); got != len(want) {
		t.Fatalf("%d results, want %d (every backend in every scenario that applies)", got, len(want))
	}
	for _, w := range want {
		sc, b := w.sc, w.b
		var r *harness.Result
		for i := range rep.Results {
			x := &rep.Results[i]
			if x.Scenario == sc && x.Backend == b && (w.n == 0 || x.Goroutines == w.n) {
				r = x
			}
		}
		if r == nil {
			t.Errorf("%s %d %s: no row", sc, w.n, b)
			continue
		}
		if r.Ops == 0 || r.OpsPerSec <= 0 || r.Latency.P50 <= 0 || r.Latency.N != r.Ops {
			t.Errorf("%s %s: ops %d, ops/s %.0f, p50 %v, latency n %d: want all non-zero and n = ops",
				sc, b, r.Ops, r.OpsPerSec, r.Latency.P50, r.Latency.N)
		}
		if r.Errors != 0 {
			t.Errorf("%s %s: %d errors, first %s", sc, b, r.Errors, r.FirstErr)
		}
		if r.AllocsPerOp <= 0 && sc != harness.ContendedProcs {
			t.Errorf("%s %s: allocs/op %v, want > 0", sc, b, r.AllocsPerOp)
		}
		if b != "lockmem" && r.ReqPerOp < 1 {
			t.Errorf("%s %s: req/op %v, want >= 1 (every acquisition talks to Redis)", sc, b, r.ReqPerOp)
		}
		if wantCmds && b != "lockmem" && r.SrvCallsPerOp < r.ReqPerOp {
			t.Errorf("%s %s: srv-calls/op %v below req/op %v: every request is a server call",
				sc, b, r.SrvCallsPerOp, r.ReqPerOp)
		}
		if sc != harness.Uncontended {
			if r.Handoff == nil || r.Handoff.N == 0 {
				t.Errorf("%s %s: no hand-offs measured", sc, b)
			}
			wantFrom := harness.HandoffReleaseCalled
			if sc == harness.Contended {
				wantFrom = harness.HandoffReleaseReturned
			}
			if r.HandoffFrom != wantFrom {
				t.Errorf("%s %s: hand-off from %q, want %q", sc, b, r.HandoffFrom, wantFrom)
			}
			if wantFrom == harness.HandoffReleaseCalled && r.Early != 0 {
				// The next holder's Acquire returning before the previous
				// holder called Release would be two holders at once.
				t.Errorf("%s %s: %d hand-offs before the Release call", sc, b, r.Early)
			}
			if r.Jain <= 0 || r.Jain > 1 || len(r.Counts) != r.Goroutines {
				t.Errorf("%s %s: jain %v over %d counts, want (0,1] over %d",
					sc, b, r.Jain, len(r.Counts), r.Goroutines)
			}
		}
	}
	if rep.RTT <= 0 {
		t.Errorf("round trip %v, want > 0", rep.RTT)
	}
	if len(rep.Targets) == 0 {
		t.Error("no targets evaluated")
	}
	for _, c := range rep.Targets {
		if c.Status == "n/a" {
			t.Errorf("target %q not evaluated: %s", c.Name, c.Detail)
		}
	}
}

func runJSON(t *testing.T, args ...string) (*harness.Report, string) {
	t.Helper()
	var out, errb bytes.Buffer
	if err := run(context.Background(), append(args, "-json", "-progress=false"),
		&out, &errb); err != nil {
		t.Fatalf("run: %v\nstderr: %s", err, errb.String())
	}
	var rep harness.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("output is not the JSON report: %v\n%s", err, out.String())
	}
	return &rep, errb.String()
}

func TestRun_everyBackendEveryScenarioOnRealRedis(t *testing.T) {
	srv := redistest.Start(t)
	plot := filepath.Join(t.TempDir(), "lat.png")
	rep, _ := runJSON(t, "-addr", srv.Addr, "-duration", "200ms", "-warmup", "30ms",
		"-rtt-samples", "200", "-plot", plot, "-clients", "3,5", "-rounds", "1",
		"-scenarios", strings.Join(harness.AllScenarios, ","))
	if rep.TargetKind != "addr" || rep.Version == "" {
		t.Errorf("target kind %q version %q, want addr and the server's version",
			rep.TargetKind, rep.Version)
	}
	checkReport(t, rep, harness.AllScenarios, []int{3, 5}, true)
	for _, sc := range []string{harness.ContendedClients, harness.ContendedProcs} {
		for _, n := range []int{3, 5} {
			prefix := fmt.Sprintf("%s %d: ", sc, n)
			found := 0
			for _, c := range rep.Targets {
				if strings.HasPrefix(c.Name, prefix) {
					found++
				}
			}
			if found != 5 {
				t.Errorf("%d targets named %q..., want 5 (req, hand-off, Jain, raw, peers)", found, prefix)
			}
		}
	}
	png, err := os.ReadFile(plot)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 5000 {
		t.Errorf("plot: %d bytes, not a drawn PNG", len(png))
	}
}

func TestRun_tableListsEveryBackendPerScenario(t *testing.T) {
	srv := redistest.Start(t)
	var out, errb bytes.Buffer
	// 64 clients need longer than 50ms to complete anything under -race.
	err := run(context.Background(), []string{
		"-addr", srv.Addr, "-duration", "50ms", "-warmup", "10ms",
		"-clients-duration", "150ms", "-rtt-samples", "50", "-progress=false",
	}, &out, &errb)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, errb.String())
	}
	text := out.String()
	for _, sc := range harness.Scenarios {
		if !strings.Contains(text, "\n"+sc+": ") {
			t.Errorf("no %s section in:\n%s", sc, text)
		}
	}
	for _, n := range []string{"8", "64"} { // the default -clients
		if !strings.Contains(text, "\n"+harness.ContendedClients+": "+n+" waiters") {
			t.Errorf("no %s section for %s waiters in:\n%s", harness.ContendedClients, n, text)
		}
	}
	rows := map[string]int{}
	for _, line := range strings.Split(text, "\n") {
		// a table row: the backend's name, then ten or more figures
		if f := strings.Fields(line); len(f) >= 10 {
			rows[f[0]]++
		}
	}
	for _, b := range harness.Backends() {
		want := 4 // uncontended, contended, contended-clients at 8 and 64
		if b == "lockmem" {
			want = 2 // no client per waiter in process
		}
		if rows[b] != want {
			t.Errorf("backend %s has %d rows, want %d:\n%s", b, rows[b], want, text)
		}
	}
	if !strings.Contains(text, "targets (lockredis):") {
		t.Errorf("no targets section:\n%s", text)
	}
}

func TestRun_fallsBackToMiniredisWithWarning(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no redis-server
	t.Setenv("REDIS_URL", "")
	// miniredis serves one command at a time and runs Lua slowly (more so
	// under -race): few goroutines, so that pairs complete in the window.
	rep, stderr := runJSON(t, "-duration", "300ms", "-warmup", "50ms", "-rtt-samples", "50",
		"-goroutines", "4", "-waiters", "4", "-clients", "3", "-clients-duration", "300ms",
		"-rounds", "1",
		"-scenarios", strings.Join(harness.AllScenarios, ","))
	if !strings.Contains(stderr, harness.MiniredisWarning) {
		t.Errorf("stderr lacks the miniredis warning:\n%s", stderr)
	}
	if rep.TargetKind != "miniredis" {
		t.Errorf("target kind %q, want miniredis", rep.TargetKind)
	}
	checkReport(t, rep, harness.AllScenarios, []int{3}, false)
}

func TestParse_rejectsUnknownNamesAndBadValues(t *testing.T) {
	for _, args := range [][]string{
		{"-backends", "lockredis,nosuch"},
		{"-scenarios", "sideways"},
		{"-duration", "0s"},
		{"-goroutines", "0"},
		{"-hold", "-1ms"},
		{"-rounds", "0"},
		{"-backends", ","},
		{"-clients", "8,0"},
		{"-clients", "eight"},
		{"-clients-duration", "-1s"},
		{"-scenarios", "contended-clients", "-backends", "lockmem"}, // applies to no backend
		{"extra"},
	} {
		if _, err := parse(args, &bytes.Buffer{}); err == nil {
			t.Errorf("parse(%q) accepted", args)
		}
	}
	c, err := parse([]string{"-backends", "raw, lockredis", "-scenarios", "contended"},
		&bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.backends, ",") != "raw,lockredis" ||
		strings.Join(c.scenarios, ",") != "contended" {
		t.Errorf("parsed backends %q scenarios %q", c.backends, c.scenarios)
	}
	c, err = parse([]string{
		"-backends", "lockmem,raw", "-scenarios", "contended-procs,contended",
		"-clients", "8, 64", "-duration", "2s",
	}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range c.runs() {
		got = append(got, fmt.Sprintf("%s/%d/%s/%s",
			r.scenario, r.opts.Waiters, r.opts.Duration, strings.Join(r.backends, "+")))
	}
	want := []string{
		"contended/8/2s/lockmem+raw",
		"contended-procs/8/1s/raw",
		"contended-procs/64/1s/raw",
	}
	if !slices.Equal(got, want) {
		t.Errorf("runs %q, want %q (report order, one per -clients count at half -duration,"+
			" lockmem left out)", got, want)
	}
}

func TestRun_roundsTakeTurnsAndReportMedians(t *testing.T) {
	srv := redistest.Start(t)
	rep, _ := runJSON(t, "-addr", srv.Addr, "-duration", "100ms", "-warmup", "20ms",
		"-rtt-samples", "50", "-rounds", "3", "-backends", "raw,lockmem", "-scenarios", "uncontended")
	if rep.Rounds != 3 || len(rep.Results) != 2 {
		t.Fatalf("rounds %d, %d results; want 3 rounds merged into one row per backend",
			rep.Rounds, len(rep.Results))
	}
	for _, r := range rep.Results {
		if len(r.RoundOpsPerSec) != 3 {
			t.Errorf("%s: %d round rates, want 3", r.Backend, len(r.RoundOpsPerSec))
			continue
		}
		lo, hi := slices.Min(r.RoundOpsPerSec), slices.Max(r.RoundOpsPerSec)
		if r.OpsPerSec < lo || r.OpsPerSec > hi || lo <= 0 {
			t.Errorf("%s: median %v outside the rounds %v", r.Backend, r.OpsPerSec, r.RoundOpsPerSec)
		}
	}
}
