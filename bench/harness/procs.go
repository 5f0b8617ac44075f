package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"sync"
	"time"
)

// The ContendedProcs scenario: Run starts the running executable again
// Options.Waiters times with ChildEnv=1 in its environment; such a process
// must call RunChild instead of doing its usual work (lockbench's main does,
// and so does the TestMain of a package that tests this scenario). The two
// talk in JSON lines:
//
//	parent -> child stdin:  childConfig, then childGo once every child is ready
//	child -> parent stdout: {"ready":true}, then after the run one childAcq
//	                        per acquisition and one childDone
//
// Times cross the process boundary as wall-clock Unix nanoseconds, which
// processes on one machine share. A child ends by itself: when its stdin
// reaches EOF (the parent closed it, or died), when no go line comes within
// childReadyTimeout, and at the latest childLinger after the run's end.

// ChildEnv is the environment variable that makes a process a
// ContendedProcs waiter (value "1").
const ChildEnv = "LOCKBENCH_CHILD"

// IsChild reports whether this process was started as a ContendedProcs
// waiter; its main (or TestMain) should then return RunChild's outcome.
func IsChild() bool { return os.Getenv(ChildEnv) == "1" }

const (
	// childReadyTimeout bounds the wait for every child to connect and
	// warm up, and a child's wait for the go line.
	childReadyTimeout = time.Minute
	// childLinger bounds how long after the run's end a child waits for
	// its stdin to close, and the parent for every child's report.
	childLinger = 30 * time.Second
	// childStartDelay is the time between sending the go line and the
	// start of the contended warm-up, so that every child has read it.
	childStartDelay = 50 * time.Millisecond
)

// childConfig is the first line a child reads.
type childConfig struct {
	Backend string        `json:"backend"`
	Addr    string        `json:"addr,omitempty"`
	URL     string        `json:"url,omitempty"`
	Kind    string        `json:"kind"`
	Version string        `json:"version,omitempty"`
	Key     string        `json:"key"`
	WarmKey string        `json:"warm_key"`
	TTL     time.Duration `json:"ttl_ns"`
	Hold    time.Duration `json:"hold_ns"`
	// Floor, when set, makes the child PushFloor's subscriber on this
	// channel instead of a waiter.
	Floor string `json:"floor,omitempty"`
}

// childGo is the second line a child reads, in Unix nanoseconds: contend
// from Begin (warm-up), count from Start, stop at Stop.
type childGo struct {
	Begin int64 `json:"begin"`
	Start int64 `json:"start"`
	Stop  int64 `json:"stop"`
}

// childLine is any line a child writes: ready, one acquisition (A, R, W),
// or done (with the counts).
type childLine struct {
	Ready bool `json:"ready,omitempty"`
	// A is when Acquire returned, R when Release was called (0: it was
	// not), W how long Acquire took; A and R in Unix nanoseconds.
	A int64 `json:"a,omitempty"`
	R int64 `json:"r,omitempty"`
	W int64 `json:"w,omitempty"`

	Done bool `json:"done,omitempty"`
	// Req is what the child's client sent from Start until its loop
	// ended.
	Req      *RequestStats `json:"req,omitempty"`
	Errors   uint64        `json:"errors,omitempty"`
	FirstErr string        `json:"first_error,omitempty"`
}

// RunChild is a ContendedProcs waiter: it reads its configuration from
// stdin, sets up its own backend, reports ready, waits for the go line,
// then acquires, holds and releases the key until the stop time and writes
// what it saw to stdout. It returns when stdin closes after that, or with
// an error when anything before the report fails.
func RunChild(stdin io.Reader, stdout io.Writer) error {
	lines := make(chan []byte)
	gone := make(chan struct{}) // stdin ended: the parent is done or dead
	go func() {
		defer close(gone)
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			lines <- bytes.Clone(sc.Bytes())
		}
	}()
	next := func(v any) error {
		select {
		case l := <-lines:
			return json.Unmarshal(l, v)
		case <-gone:
			return errors.New("stdin closed")
		case <-time.After(childReadyTimeout):
			return errors.New("no word from the parent")
		}
	}
	var cfg childConfig
	if err := next(&cfg); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if cfg.Floor != "" {
		return runFloorChild(cfg, gone, stdout)
	}
	info, err := Lookup(cfg.Backend)
	if err != nil {
		return err
	}
	target := &Target{Addr: cfg.Addr, URL: cfg.URL, Kind: cfg.Kind, Version: cfg.Version}
	reqs := NewRequestCounter()
	be, err := info.New(Config{Target: target, TTL: cfg.TTL, Requests: reqs})
	if err != nil {
		return fmt.Errorf("%s: set up: %w", cfg.Backend, err)
	}
	defer be.Close()

	// Connections, scripts and caches warm on a key of this child's own.
	wctx, cancel := context.WithTimeout(context.Background(), childReadyTimeout)
	for range 3 {
		h, err := be.Acquire(wctx, cfg.WarmKey, cfg.TTL)
		if err == nil {
			err = h.Release(wctx)
		}
		if err != nil {
			cancel()
			return fmt.Errorf("%s: warm-up: %w", cfg.Backend, err)
		}
	}
	cancel()
	out := bufio.NewWriter(stdout)
	enc := json.NewEncoder(out)
	if err := enc.Encode(childLine{Ready: true}); err != nil {
		return err
	}
	if err := out.Flush(); err != nil {
		return err
	}
	var g childGo
	if err := next(&g); err != nil {
		return fmt.Errorf("go: %w", err)
	}

	stop := time.Unix(0, g.Stop)
	ctx, cancel := context.WithDeadline(context.Background(), stop)
	defer cancel()
	go func() {
		select {
		case <-gone:
			cancel()
		case <-ctx.Done():
		}
	}()
	// Requests count from Start: on a timer, or, should its goroutine be
	// starved on a loaded machine, at the first iteration after Start (at
	// the latest at the end, when this waiter then counts none).
	start := time.Unix(0, g.Start)
	var startOnce sync.Once
	var reqStart RequestStats
	markStart := func() { startOnce.Do(func() { reqStart = reqs.Snapshot() }) }
	startTimer := time.AfterFunc(time.Until(start), markStart)
	defer startTimer.Stop()
	if d := time.Until(time.Unix(0, g.Begin)); d > 0 {
		time.Sleep(d)
	}

	var acqs []childLine
	var errs uint64
	var firstErr string
	fail := func(err error) {
		errs++
		if firstErr == "" {
			firstErr = err.Error()
		}
	}
	release := context.WithoutCancel(ctx)
	for ctx.Err() == nil {
		t0 := time.Now()
		if !t0.Before(start) {
			markStart()
		}
		h, err := be.Acquire(ctx, cfg.Key, cfg.TTL)
		if err != nil {
			// rueidis can time a call out on ctx's deadline a moment
			// before ctx itself reports it.
			if ctx.Err() == nil && time.Until(stop) > time.Millisecond {
				fail(err)
				time.Sleep(time.Millisecond) // no hot loop on a broken backend
			}
			continue
		}
		acq := time.Now()
		hold(cfg.Hold)
		rel := time.Now()
		rctx, rcancel := context.WithTimeout(release, 5*time.Second)
		err = h.Release(rctx)
		rcancel()
		if err != nil {
			fail(err)
		}
		acqs = append(acqs, childLine{A: acq.UnixNano(), R: rel.UnixNano(), W: int64(acq.Sub(t0))})
	}
	markStart()
	end := reqs.Snapshot()
	d := end.Sub(reqStart)
	done := childLine{Done: true, Req: &d, Errors: errs, FirstErr: firstErr}
	for _, a := range acqs {
		if err := enc.Encode(a); err != nil {
			return err
		}
	}
	if err := enc.Encode(done); err != nil {
		return err
	}
	if err := out.Flush(); err != nil {
		return err
	}
	// The parent reads the server's counters before it closes stdin, so
	// the backend's Close must wait for that.
	select {
	case <-gone:
	case <-time.After(childLinger):
	}
	return nil
}

// child is the parent's side of one waiter process.
type child struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	stderr   *tailBuffer
	ready    chan struct{} // closed when the ready line came
	reported chan struct{} // closed when the done line came
	done     chan struct{} // closed when stdout ended
	acqs     []childLine
	report   *childLine
	err      error // a line that is not JSON
}

func (c *child) read(r io.Reader) {
	defer close(c.done)
	sc := bufio.NewScanner(r)
	readyClosed := false
	for sc.Scan() {
		var l childLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			c.err = fmt.Errorf("bad line %q: %w", sc.Bytes(), err)
			break
		}
		switch {
		case l.Ready && !readyClosed:
			readyClosed = true
			close(c.ready)
		case l.Done && c.report == nil:
			c.report = &l
			close(c.reported)
		case l.A != 0:
			c.acqs = append(c.acqs, l)
		}
	}
	io.Copy(io.Discard, r) // let the child finish writing
}

// failure describes why the child gave no report.
func (c *child) failure(i int) error {
	msg := c.stderr.String()
	if c.err != nil {
		return fmt.Errorf("waiter process %d: %w; stderr: %s", i, c.err, msg)
	}
	return fmt.Errorf("waiter process %d ended without a report; stderr: %s", i, msg)
}

// RunProcs runs the ContendedProcs scenario for backend b: o.Waiters
// processes (this executable, started again with ChildEnv=1), each with its
// own backend, contend for one key for o.Warmup and then o.Duration; the
// figures are those of Run's contended scenarios, computed from the
// processes' reports, with hand-offs from the previous holder's Release
// call (HandoffReleaseCalled). Requests are summed over the processes'
// clients; allocations are not measured (-1). Every child is gone when it
// returns.
func RunProcs(ctx context.Context, b BackendInfo, o Options) (Result, error) {
	n := o.Waiters
	res := Result{
		Backend:       b.Name,
		Scenario:      ContendedProcs,
		Goroutines:    n,
		Hold:          o.Hold,
		HandoffFrom:   HandoffReleaseCalled,
		ReqPerOp:      -1,
		SrvCallsPerOp: -1,
		AllocsPerOp:   -1,
		BytesPerOp:    -1,
	}
	if o.Target == nil {
		return res, errors.New("contended-procs needs a Redis target")
	}
	if o.TTL <= 0 {
		o.TTL = 10 * time.Second
	}
	exe, err := os.Executable()
	if err != nil {
		return res, err
	}
	prefix := runPrefix(o, b, ContendedProcs)
	cfg := childConfig{Backend: b.Name, Addr: o.Target.Addr, URL: o.Target.URL, Kind: o.Target.Kind,
		Version: o.Target.Version, Key: prefix + ":key", TTL: o.TTL, Hold: o.Hold}

	children := make([]*child, 0, n)
	defer func() {
		// Closing stdin ends every child; those that do not end within
		// childLinger are killed.
		for _, c := range children {
			c.stdin.Close()
		}
		deadline := time.NewTimer(childLinger)
		defer deadline.Stop()
		expired := false
		for _, c := range children {
			if !expired {
				select {
				case <-c.done:
				case <-deadline.C:
					expired = true
				}
			}
			if expired {
				select {
				case <-c.done:
				default:
					c.cmd.Process.Kill()
					<-c.done
				}
			}
			c.cmd.Wait()
		}
	}()
	for i := range n {
		c := &child{
			stderr:   &tailBuffer{max: 4096},
			ready:    make(chan struct{}),
			reported: make(chan struct{}),
			done:     make(chan struct{}),
		}
		var stdout io.Reader
		c.cmd, c.stdin, stdout, err = startSelf(ctx, exe, c.stderr)
		if err != nil {
			return res, fmt.Errorf("start waiter process: %w", err)
		}
		children = append(children, c)
		go c.read(stdout)
		cc := cfg
		cc.WarmKey = fmt.Sprintf("%s:warm:%d", prefix, i)
		if err := writeLine(c.stdin, cc); err != nil {
			return res, fmt.Errorf("waiter process %d: %w", i, err)
		}
	}
	readyBy := time.After(childReadyTimeout)
	for i, c := range children {
		select {
		case <-c.ready:
		case <-c.done:
			return res, c.failure(i)
		case <-readyBy:
			return res, fmt.Errorf("waiter process %d not ready after %s", i, childReadyTimeout)
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}

	// Server counters from a connection of the parent's own.
	admin, err := o.Target.Admin()
	if err != nil {
		return res, err
	}
	defer admin.Close()
	sctx := context.WithoutCancel(ctx)
	begin := time.Now().Add(childStartDelay)
	g := childGo{Begin: begin.UnixNano(), Start: begin.Add(o.Warmup).UnixNano()}
	g.Stop = g.Start + int64(o.Duration)
	for i, c := range children {
		if err := writeLine(c.stdin, g); err != nil {
			return res, fmt.Errorf("waiter process %d: %w", i, err)
		}
	}
	select {
	case <-time.After(time.Until(time.Unix(0, g.Start))):
	case <-ctx.Done():
		return res, ctx.Err()
	}
	statsBefore, serr := ReadCommandStats(sctx, admin)
	reportBy := time.After(time.Until(time.Unix(0, g.Stop)) + childLinger)
	for i, c := range children {
		select {
		case <-c.reported:
		case <-c.done:
			return res, c.failure(i)
		case <-reportBy:
			return res, fmt.Errorf("waiter process %d: no report %s after the end", i, childLinger)
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}
	var stats CommandStats
	if serr == nil {
		after, err := ReadCommandStats(sctx, admin)
		if serr = err; err == nil {
			stats = after.Sub(statsBefore)
		}
	}

	reports := make([][]childLine, n)
	req := &RequestStats{ByCmd: map[string]uint64{}}
	for i, c := range children {
		reports[i] = c.acqs
		r := c.report
		res.Errors += r.Errors
		if res.FirstErr == "" {
			res.FirstErr = r.FirstErr
		}
		if r.Req == nil || req == nil {
			req = nil
			continue
		}
		req.Total += r.Req.Total
		req.Bad += r.Req.Bad
		for k, v := range r.Req.ByCmd {
			req.ByCmd[k] += v
		}
	}
	mergeAcquisitions(&res, reports, g.Start, g.Stop)
	if err := res.finish(b.Name, req, stats, serr == nil); err != nil {
		return res, err
	}
	return res, nil
}

// mergeAcquisitions fills res's counts, wait latencies, hand-offs and
// Jain's index from every waiter's acquisitions (perWaiter[i] are waiter
// i's): those whose Acquire returned in [start, stop) count. Holders
// exclude each other, so ordering all acquisitions by when Acquire returned
// is the order the key went round; a hand-off is the gap from one holder's
// Release call to the next one's Acquire return (Early counts the negative
// gaps, which only clocks that disagree can give).
func mergeAcquisitions(res *Result, perWaiter [][]childLine, start, stop int64) {
	type acq struct {
		childLine
		in bool
	}
	var all []acq
	var lat, gap Histogram
	res.Counts = make([]uint64, len(perWaiter))
	for i, as := range perWaiter {
		for _, a := range as {
			in := a.A >= start && a.A < stop
			if in {
				res.Counts[i]++
				res.Ops++
				lat.Record(time.Duration(a.W))
			}
			all = append(all, acq{a, in})
		}
	}
	slices.SortFunc(all, func(x, y acq) int {
		switch {
		case x.A < y.A:
			return -1
		case x.A > y.A:
			return 1
		}
		return 0
	})
	for i := 1; i < len(all); i++ {
		prev, next := all[i-1], all[i]
		if !next.in || prev.R == 0 {
			continue
		}
		d := next.A - prev.R
		if d < 0 {
			res.Early++
			d = 0
		}
		gap.Record(time.Duration(d))
	}
	res.Elapsed = time.Duration(stop - start)
	res.Latency = percentiles(&lat)
	h := percentiles(&gap)
	res.Handoff = &h
	res.Jain = Jain(res.Counts)
}

// startSelf starts exe again as a child (ChildEnv=1), its stderr going to
// stderr, and returns it with its stdin and stdout.
func startSelf(ctx context.Context, exe string, stderr io.Writer) (
	*exec.Cmd, io.WriteCloser, io.Reader, error) {
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), ChildEnv+"=1")
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, err
	}
	return cmd, stdin, stdout, nil
}

func writeLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.b))
}
