package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/klauthed/lock"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockmem"
)

// TestMain lets this test binary be a ContendedProcs waiter, which RunProcs
// starts by running the test binary again.
func TestMain(m *testing.M) {
	if IsChild() {
		if err := RunChild(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "waiter:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestMergeAcquisitions_ordersByAcquireAndCountsInWindow(t *testing.T) {
	// Two waiters taking turns; times in ns. Waiter 0 holds [100,110),
	// waiter 1 [130,150), waiter 0 [155,160), waiter 1 [200,...); the
	// window is [120, 200).
	perWaiter := [][]childLine{
		{{A: 100, R: 110, W: 5}, {A: 155, R: 160, W: 7}},
		{{A: 130, R: 150, W: 20}, {A: 200, R: 210, W: 40}},
	}
	var res Result
	mergeAcquisitions(&res, perWaiter, 120, 200)
	if res.Ops != 2 || res.Counts[0] != 1 || res.Counts[1] != 1 {
		t.Fatalf("ops %d counts %v, want 2 and [1 1]: only acquisitions returned in [120,200) count",
			res.Ops, res.Counts)
	}
	// Hand-offs into the window: 110->130 (20ns) and 150->155 (5ns); the
	// one into 200 is past the window.
	if res.Handoff.N != 2 || res.Handoff.Max != 20 || res.Early != 0 {
		t.Errorf("hand-offs n %d max %v early %d, want 2, 20ns, 0",
			res.Handoff.N, res.Handoff.Max, res.Early)
	}
	if res.Latency.N != 2 || res.Latency.Max != 20 {
		t.Errorf("waits n %d max %v, want 2 and 20ns", res.Latency.N, res.Latency.Max)
	}
	if res.Elapsed != 80 || res.Jain != 1 {
		t.Errorf("elapsed %v jain %v, want 80ns and 1", res.Elapsed, res.Jain)
	}

	// A holder whose Acquire returned before the previous one called
	// Release: counted as early, with a gap of 0.
	res = Result{}
	mergeAcquisitions(&res, [][]childLine{{{A: 10, R: 50}}, {{A: 40, R: 60}}}, 0, 100)
	if res.Early != 1 || res.Handoff.N != 1 || res.Handoff.Max != 0 {
		t.Errorf("early %d n %d max %v, want 1, 1, 0", res.Early, res.Handoff.N, res.Handoff.Max)
	}
}

// childPipes runs RunChild in this process on pipes.
type childPipes struct {
	in   io.WriteCloser
	out  *bufio.Scanner
	errc chan error
}

func startChild(t *testing.T) *childPipes {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	c := &childPipes{in: inW, out: bufio.NewScanner(outR), errc: make(chan error, 1)}
	go func() {
		err := RunChild(inR, outW)
		outW.CloseWithError(io.EOF)
		c.errc <- err
	}()
	t.Cleanup(func() {
		inW.Close()
		go io.Copy(io.Discard, outR)
	})
	return c
}

func (c *childPipes) send(t *testing.T, v any) {
	t.Helper()
	if err := writeLine(c.in, v); err != nil {
		t.Fatal(err)
	}
}

func (c *childPipes) line(t *testing.T) childLine {
	t.Helper()
	if !c.out.Scan() {
		t.Fatalf("child wrote no line: %v", c.out.Err())
	}
	var l childLine
	if err := json.Unmarshal(c.out.Bytes(), &l); err != nil {
		t.Fatalf("child line %q: %v", c.out.Bytes(), err)
	}
	return l
}

func (c *childPipes) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-c.errc:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("child still running 10s after its stdin closed")
		return nil
	}
}

func rawChildConfig(addr, key string) childConfig {
	return childConfig{Backend: "raw", Addr: addr, Kind: "addr", Key: key, WarmKey: key + ":warm",
		TTL: 10 * time.Second, Hold: 100 * time.Microsecond}
}

func TestRunChild_endsWhenStdinClosesBeforeGo(t *testing.T) {
	srv := redistest.Start(t)
	c := startChild(t)
	c.send(t, rawChildConfig(srv.Addr, "TestRunChild_endsWhenStdinClosesBeforeGo"))
	if l := c.line(t); !l.Ready {
		t.Fatalf("first line %+v, want ready", l)
	}
	c.in.Close() // the parent died
	if err := c.wait(t); err == nil || !strings.Contains(err.Error(), "stdin closed") {
		t.Errorf("RunChild = %v, want an error about stdin", err)
	}
}

func TestRunChild_reportsAcquisitionsThenWaitsForStdinEOF(t *testing.T) {
	srv := redistest.Start(t)
	c := startChild(t)
	c.send(t, rawChildConfig(srv.Addr, "TestRunChild_reportsAcquisitionsThenWaitsForStdinEOF"))
	if l := c.line(t); !l.Ready {
		t.Fatalf("first line %+v, want ready", l)
	}
	begin := time.Now().Add(10 * time.Millisecond)
	g := childGo{Begin: begin.UnixNano(), Start: begin.Add(20 * time.Millisecond).UnixNano(),
		Stop: begin.Add(120 * time.Millisecond).UnixNano()}
	c.send(t, g)
	var acqs int
	for {
		l := c.line(t)
		if l.Done {
			if l.Req == nil || l.Req.Total == 0 || l.Req.ByCmd["set"] == 0 || l.Errors != 0 {
				t.Errorf("done line %+v, want requests counted from start (SETs among them) and no errors", l)
			}
			break
		}
		if l.A < g.Begin || l.R < l.A || l.W <= 0 {
			t.Errorf("acquisition %+v: want A >= begin %d, R >= A, W > 0", l, g.Begin)
		}
		acqs++
	}
	if acqs < 10 {
		t.Errorf("%d acquisitions in 120ms uncontended, want many", acqs)
	}
	select {
	case err := <-c.errc:
		t.Fatalf("RunChild returned (%v) before its stdin closed:"+
			" the parent reads the server's counters first", err)
	case <-time.After(50 * time.Millisecond):
	}
	c.in.Close()
	if err := c.wait(t); err != nil {
		t.Errorf("RunChild = %v, want nil", err)
	}
}

func checkContendedRow(t *testing.T, res Result, n int) {
	t.Helper()
	if res.Goroutines != n || len(res.Counts) != n || res.Ops == 0 || res.OpsPerSec <= 0 {
		t.Fatalf("%s %s: %d waiters, counts %v, ops %d, %.0f/s: want %d waiters, all counted",
			res.Scenario, res.Backend, res.Goroutines, res.Counts, res.Ops, res.OpsPerSec, n)
	}
	for i, c := range res.Counts {
		if c == 0 {
			t.Errorf("%s %s: waiter %d never acquired (counts %v)", res.Scenario, res.Backend, i, res.Counts)
		}
	}
	if res.Handoff == nil || res.Handoff.N == 0 ||
		res.HandoffFrom != HandoffReleaseCalled || res.Early != 0 {
		t.Errorf("%s %s: hand-offs %+v from %q early %d, want some, from the Release call, none early",
			res.Scenario, res.Backend, res.Handoff, res.HandoffFrom, res.Early)
	}
	if res.Errors != 0 {
		t.Errorf("%s %s: %d errors, first %s", res.Scenario, res.Backend, res.Errors, res.FirstErr)
	}
	if res.ReqPerOp < 1 || res.Latency.N != res.Ops {
		t.Errorf("%s %s: req/acq %v, latency n %d for %d ops",
			res.Scenario, res.Backend, res.ReqPerOp, res.Latency.N, res.Ops)
	}
}

func TestRunProcs_oneProcessPerWaiter(t *testing.T) {
	srv := redistest.Start(t)
	target, err := Resolve(srv.Addr, "", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		Target:    target,
		Waiters:   3,
		Hold:      100 * time.Microsecond,
		Duration:  300 * time.Millisecond,
		Warmup:    30 * time.Millisecond,
		KeyPrefix: "TestRunProcs_oneProcessPerWaiter",
	}
	for _, name := range []string{"raw", "lockredis"} {
		b, _ := Lookup(name)
		res, err := Run(context.Background(), b, ContendedProcs, o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		checkContendedRow(t, res, 3)
		if res.SrvCallsPerOp < res.ReqPerOp || res.AllocsPerOp != -1 {
			t.Errorf("%s: srv-calls/acq %v (req %v), allocs %v: want srv >= req, allocs -1 (not measured)",
				name, res.SrvCallsPerOp, res.ReqPerOp, res.AllocsPerOp)
		}
	}
}

func TestRunProcs_reportsAWaiterThatCannotStart(t *testing.T) {
	mr := miniredis.RunT(t)
	// A server that does not exist for the children: the parent's Admin
	// is never reached, the first child's set-up fails.
	target := &Target{Addr: mr.Addr(), Kind: "miniredis"}
	mr.Close()
	b, _ := Lookup("raw")
	start := time.Now()
	_, err := RunProcs(context.Background(), b,
		Options{Target: target, Waiters: 2, Duration: 100 * time.Millisecond})
	t.Logf("RunProcs: %v", err)
	if err == nil || !strings.Contains(err.Error(), "waiter process") {
		t.Errorf("RunProcs = %v, want the failing waiter's error", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("took %v to notice", d)
	}
}

// sharedMem is a test backend that claims to need Redis (so the per-waiter
// scenarios take it) but is one lockmem Manager for everyone: it counts how
// many backends a Run sets up.
var (
	sharedMemOnce sync.Once
	sharedMemMgr  lock.Manager
	sharedMemNews atomic.Int64
)

func init() {
	register(BackendInfo{
		Name:       "test-shared-mem",
		NeedsRedis: true,
		New: func(Config) (Backend, error) {
			sharedMemOnce.Do(func() { sharedMemMgr = lockmem.New(lockmem.Options{}) })
			sharedMemNews.Add(1)
			return managerBackend{m: sharedMemMgr, close: func() error { return nil }}, nil
		},
	})
}

func TestRun_contendedClientsSetsUpABackendPerWaiter(t *testing.T) {
	b, _ := Lookup("test-shared-mem")
	before := sharedMemNews.Load()
	res, err := Run(context.Background(), b, ContendedClients, Options{
		Waiters:   5,
		Hold:      50 * time.Microsecond,
		Duration:  100 * time.Millisecond,
		KeyPrefix: "TestRun_contendedClientsSetsUpABackendPerWaiter",
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := sharedMemNews.Load() - before; n != 5 {
		t.Errorf("%d backends set up for 5 waiters, want 5", n)
	}
	checkContendedRowNoRequests(t, res, 5)

	before = sharedMemNews.Load()
	if _, err := Run(context.Background(), b, Contended, Options{
		Waiters:   5,
		Duration:  50 * time.Millisecond,
		KeyPrefix: "TestRun_contendedClientsSetsUpABackendPerWaiter",
	}); err != nil {
		t.Fatal(err)
	}
	if n := sharedMemNews.Load() - before; n != 1 {
		t.Errorf("contended set up %d backends, want 1 shared by the waiters", n)
	}

	mem, _ := Lookup("lockmem")
	if _, err := Run(context.Background(), mem, ContendedClients,
		Options{Waiters: 2, Duration: time.Millisecond}); err == nil {
		t.Error("lockmem ran contended-clients: separate in-process managers never contend")
	}
}

// checkContendedRowNoRequests is checkContendedRow for a backend that sends
// no requests.
func checkContendedRowNoRequests(t *testing.T, res Result, n int) {
	t.Helper()
	res.ReqPerOp = 1
	checkContendedRow(t, res, n)
}
