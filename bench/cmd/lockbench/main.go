// Command lockbench measures Redis lock libraries side by side on one Redis:
// this project's lockredis (and the in-process lockmem), a raw floor (one
// SET NX PX plus one compare-and-delete EVALSHA on rueidis), and the peers
// go-redsync/redsync, bsm/redislock and rueidis's rueidislock.
//
// Usage:
//
//	go run ./cmd/lockbench [flags]
//
// With no -addr and no REDIS_URL it starts redis-server from PATH on a free
// 127.0.0.1 port for the run; without redis-server it falls back to an
// in-process miniredis and warns that the figures then mean nothing.
//
// Three scenarios run for every backend: "uncontended" (-goroutines
// goroutines, each on its own keys: pairs/s and the latency of one
// Acquire+Release), "contended" (-waiters goroutines sharing one backend on
// one key, holding it for -hold: acquisitions/s, the hand-off gap from a
// Release returning to the next Acquire returning, Jain's fairness index)
// and "contended-clients" (for each count in -clients, that many
// goroutines on one key, each with a backend and so a client of its own;
// the hand-off gap runs from the previous Release being called). A fourth,
// "contended-procs", runs only when -scenarios names it: contended-clients
// with every waiter a separate process (this executable started again).
// All report Redis requests per operation (req: commands the clients sent,
// counted on the client side, a script invocation once), server-side command
// calls per operation (srv-calls: INFO commandstats, commands run inside
// scripts included) and allocations per operation. -rounds N runs every
// backend N times per scenario, backends taking turns, and reports the
// medians. The output is an aligned table, or JSON with -json; -plot out.png
// draws the latency percentiles.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauthed/lock/bench/harness"
)

func main() {
	if harness.IsChild() {
		// A contended-procs waiter, started by another lockbench.
		if err := harness.RunChild(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "lockbench waiter:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "lockbench:", err)
		}
		stop()
		os.Exit(2)
	}
}

// config is the parsed command line.
type config struct {
	addr, url string
	opts      harness.Options
	scenarios []string
	backends  []string
	// clients are the waiter counts of contended-clients and
	// contended-procs; clientsDuration their measured time.
	clients         []int
	clientsDuration time.Duration
	json            bool
	plot            string
	rttSamples      int
	rounds          int
	progress        bool
}

func parse(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("lockbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &config{}
	fs.StringVar(&c.addr, "addr", "", "Redis host:port (default: REDIS_URL,"+
		" else a redis-server started from PATH, else miniredis)")
	fs.DurationVar(&c.opts.Duration, "duration", time.Second,
		"measured time per backend per scenario and round")
	fs.DurationVar(&c.opts.Warmup, "warmup", 0,
		"unmeasured warm-up per backend per scenario (default duration/10, at most 300ms)")
	fs.IntVar(&c.opts.Goroutines, "goroutines", 50, "uncontended: goroutines, each on its own keys")
	fs.IntVar(&c.opts.Waiters, "waiters", 8, "contended: goroutines waiting on one key")
	clients := fs.String("clients", "8,64", "contended-clients, contended-procs:"+
		" comma-separated waiter counts, each waiter with its own client (or process)")
	fs.DurationVar(&c.clientsDuration, "clients-duration", 0, "contended-clients, contended-procs:"+
		" measured time per backend per waiter count and round (default half of -duration)")
	fs.DurationVar(&c.opts.Hold, "hold", 100*time.Microsecond,
		"contended: how long a holder keeps the key")
	fs.DurationVar(&c.opts.TTL, "ttl", 10*time.Second, "lease time of every acquisition")
	scen := fs.String("scenarios", strings.Join(harness.Scenarios, ","),
		"comma-separated scenarios (also: "+harness.ContendedProcs+", one process per waiter)")
	back := fs.String("backends", strings.Join(harness.Backends(), ","), "comma-separated backends")
	fs.BoolVar(&c.json, "json", false, "write JSON instead of the table")
	fs.StringVar(&c.plot, "plot", "", "also draw latency percentiles per backend into this PNG file")
	fs.IntVar(&c.rounds, "rounds", 3, "run each scenario this many rounds,"+
		" backends taking turns in a rotating order; report medians")
	fs.IntVar(&c.rttSamples, "rtt-samples", 2000, "PINGs for the round-trip measurement")
	fs.BoolVar(&c.progress, "progress", true, "show a progress line on stderr")
	fs.StringVar(&c.opts.MongoURI, "mongo", "", "MongoDB URI for the optional lockmongo backend "+
		"(default: an embedded FerretDB; name lockmongo in -backends to run it)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if c.addr == "" {
		c.url = os.Getenv("REDIS_URL")
	}
	if c.opts.Duration <= 0 {
		return nil, fmt.Errorf("-duration must be positive")
	}
	if c.opts.Warmup == 0 {
		c.opts.Warmup = min(c.opts.Duration/10, 300*time.Millisecond)
	}
	if c.opts.Goroutines <= 0 || c.opts.Waiters <= 0 {
		return nil, fmt.Errorf("-goroutines and -waiters must be positive")
	}
	if c.clientsDuration < 0 {
		return nil, fmt.Errorf("-clients-duration must not be negative")
	}
	if c.clientsDuration == 0 {
		c.clientsDuration = c.opts.Duration / 2
	}
	for _, f := range split(*clients) {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("-clients: %q is not a positive count", f)
		}
		c.clients = append(c.clients, n)
	}
	if c.rounds <= 0 {
		return nil, fmt.Errorf("-rounds must be positive")
	}
	if c.opts.Hold < 0 {
		return nil, fmt.Errorf("-hold must not be negative")
	}
	for _, s := range split(*scen) {
		ok := false
		for _, known := range harness.AllScenarios {
			ok = ok || s == known
		}
		if !ok {
			return nil, fmt.Errorf("unknown scenario %q (have %s)",
				s, strings.Join(harness.AllScenarios, ", "))
		}
		c.scenarios = append(c.scenarios, s)
	}
	for _, b := range split(*back) {
		if _, err := harness.Lookup(b); err != nil {
			return nil, err
		}
		c.backends = append(c.backends, b)
	}
	if len(c.scenarios) == 0 || len(c.backends) == 0 {
		return nil, fmt.Errorf("nothing to run: -scenarios and -backends must name at least one each")
	}
	if len(c.runs()) == 0 {
		return nil, fmt.Errorf("nothing to run:" +
			" no backend applies to the scenarios, or -clients is empty")
	}
	// Report order, whatever order -scenarios gave.
	slices.SortStableFunc(c.scenarios, func(a, b string) int {
		return slices.Index(harness.AllScenarios, a) - slices.Index(harness.AllScenarios, b)
	})
	return c, nil
}

// scenarioRun is one scenario at one waiter count, with the backends that
// apply to it.
type scenarioRun struct {
	scenario string
	opts     harness.Options
	backends []string
}

// runs expands the scenarios: the per-waiter-client ones once per -clients
// count, with -clients-duration.
func (c *config) runs() []scenarioRun {
	var out []scenarioRun
	for _, sc := range c.scenarios {
		var backends []string
		for _, name := range c.backends {
			if b, _ := harness.Lookup(name); harness.Applies(b, sc) {
				backends = append(backends, name)
			}
		}
		if len(backends) == 0 {
			continue
		}
		if sc != harness.ContendedClients && sc != harness.ContendedProcs {
			out = append(out, scenarioRun{scenario: sc, opts: c.opts, backends: backends})
			continue
		}
		for _, n := range c.clients {
			o := c.opts
			o.Waiters = n
			o.Duration = c.clientsDuration
			o.Warmup = min(o.Warmup, o.Duration/2)
			out = append(out, scenarioRun{scenario: sc, opts: o, backends: backends})
		}
	}
	return out
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parse(args, stderr)
	if err != nil {
		return err
	}
	target, err := harness.Resolve(c.addr, c.url, stderr)
	if err != nil {
		return err
	}
	defer target.Close()
	c.opts.Target = target
	c.opts.KeyPrefix = fmt.Sprintf("lockbench:%d", time.Now().UnixNano())

	rtt, err := harness.PingRTT(ctx, target, c.rttSamples)
	if err != nil {
		return fmt.Errorf("round trip: %w", err)
	}
	rep := harness.NewReport(target, rtt, c.opts)
	rep.Rounds = c.rounds
	rep.ClientsDuration = c.clientsDuration
	runs := c.runs()
	floorChannel := c.opts.KeyPrefix + ":floor"
	floor, err := harness.PushFloor(ctx, target, floorChannel, 1000, c.opts.Hold, false)
	if err != nil {
		rep.Notes = append(rep.Notes, fmt.Sprintf("push floor not measured: %v", err))
	}
	rep.PushFloor = floor
	procs := func(r scenarioRun) bool { return r.scenario == harness.ContendedProcs }
	if slices.ContainsFunc(runs, procs) {
		floor, err := harness.PushFloor(ctx, target, floorChannel, 1000, c.opts.Hold, true)
		if err != nil {
			rep.Notes = append(rep.Notes, fmt.Sprintf("push floor across processes not measured: %v", err))
		}
		rep.PushFloorProcs = floor
	}
	total := 0
	for _, r := range runs {
		total += len(r.backends) * c.rounds
	}
	prog := newProgress(stderr, c.progress, total)
	for _, r := range runs {
		sc := r.scenario
		name := sc
		if sc == harness.ContendedClients || sc == harness.ContendedProcs {
			name = fmt.Sprintf("%s %d", sc, r.opts.Waiters)
		}
		byBackend := make([][]harness.Result, len(r.backends))
		for round := 0; round < c.rounds; round++ {
			// Backends take turns, each round starting one later, so
			// that none always runs first or last on a noisy machine.
			for k := range r.backends {
				i := (k + round) % len(r.backends)
				b, _ := harness.Lookup(r.backends[i])
				label := r.backends[i]
				if c.rounds > 1 {
					label = fmt.Sprintf("%s (round %d/%d)", label, round+1, c.rounds)
				}
				prog.begin(name, label, r.opts.Warmup+r.opts.Duration)
				res, err := harness.Run(ctx, b, sc, r.opts)
				prog.end()
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err != nil {
					// One backend failing (a peer whose waiters time out
					// under 64 processes, say) must not end the run: note
					// it, leave its row out, and go on.
					fmt.Fprintf(stderr, "lockbench: %s, %s: %v\n", name, r.backends[i], err)
					rep.Notes = append(rep.Notes,
						fmt.Sprintf("%s: %s did not complete: %v", name, r.backends[i], err))
					continue
				}
				byBackend[i] = append(byBackend[i], res)
			}
		}
		for _, rounds := range byBackend {
			if len(rounds) > 0 {
				rep.Results = append(rep.Results, harness.Median(rounds))
			}
		}
	}
	prog.done()
	for _, name := range c.backends {
		b, _ := harness.Lookup(name)
		rep.Notes = append(rep.Notes, name+": "+b.Note)
	}
	if target.Miniredis() {
		rep.Notes = append(rep.Notes, harness.MiniredisWarning)
	}
	rep.Evaluate()
	if c.json {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.WriteTable(stdout)
	}
	if err != nil {
		return err
	}
	if c.plot != "" {
		if err := rep.WritePlot(c.plot); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		fmt.Fprintf(stderr, "lockbench: wrote %s\n", c.plot)
	}
	return nil
}

// progress shows which backend is running: on a terminal one line redrawn
// four times a second, elsewhere one line per backend and scenario.
type progress struct {
	w       io.Writer
	on, tty bool
	total   int

	mu      sync.Mutex
	n       int
	label   string
	each    time.Duration
	started time.Time
	stop    chan struct{}
	wg      sync.WaitGroup
}

func newProgress(w io.Writer, on bool, total int) *progress {
	p := &progress{w: w, on: on, total: total}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) line() string {
	el := time.Since(p.started).Truncate(100 * time.Millisecond)
	return fmt.Sprintf("lockbench: [%d/%d] %s %s/%s", p.n, p.total, p.label, el, p.each)
}

func (p *progress) begin(scenario, backend string, each time.Duration) {
	if !p.on {
		return
	}
	p.mu.Lock()
	p.n++
	p.each = each
	p.label = scenario + " " + backend
	p.started = time.Now()
	p.mu.Unlock()
	if !p.tty {
		fmt.Fprintf(p.w, "lockbench: [%d/%d] %s\n", p.n, p.total, p.label)
		return
	}
	p.stop = make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			p.mu.Lock()
			fmt.Fprintf(p.w, "\r\033[K%s", p.line())
			p.mu.Unlock()
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
		}
	}()
}

func (p *progress) end() {
	if p.on && p.tty && p.stop != nil {
		close(p.stop)
		p.wg.Wait()
		p.stop = nil
	}
}

func (p *progress) done() {
	if p.on && p.tty {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
