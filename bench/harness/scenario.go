package harness

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// Scenario names.
const (
	// Uncontended: Goroutines goroutines, each acquiring and releasing its
	// own keys (four per goroutine, in turn) as fast as it can. Reports
	// acquire+release pairs per second and the latency of one pair.
	Uncontended = "uncontended"
	// Contended: Waiters goroutines all Acquire one key, hold it for Hold,
	// Release it, and go again. Reports acquisitions per second, the
	// hand-off gap (from the previous holder's Release returning) and
	// fairness.
	Contended = "contended"
	// ContendedClients is Contended with every waiter goroutine on a
	// backend of its own (its own client, connections and client-side
	// caching), as waiters in different processes are: requests are summed
	// over all those clients, and the hand-off gap runs from the moment
	// the previous holder CALLED Release, since with separate clients no
	// waiter can be handed the key before the releaser's request is sent.
	// Only for backends on Redis (BackendInfo.NeedsRedis).
	ContendedClients = "contended-clients"
	// ContendedProcs is ContendedClients with every waiter a separate OS
	// process: the running executable started again Waiters times (see
	// RunChild), reporting its acquisitions to Run on its stdout. Not in
	// Scenarios: it needs an executable that calls RunChild, which
	// lockbench is and a test binary is only when its TestMain says so.
	ContendedProcs = "contended-procs"
)

// Scenarios lists the in-process scenarios in report order; ContendedProcs
// comes after them when it runs.
var Scenarios = []string{Uncontended, Contended, ContendedClients}

// AllScenarios is Scenarios and ContendedProcs, in report order.
var AllScenarios = []string{Uncontended, Contended, ContendedClients, ContendedProcs}

// Applies reports whether backend b runs in scenario: the scenarios with a
// client per waiter need the waiters to meet on one Redis, which in-process
// backends (lockmem) have no way to do.
func Applies(b BackendInfo, scenario string) bool {
	return b.NeedsRedis || (scenario != ContendedClients && scenario != ContendedProcs)
}

// perWaiter reports whether scenario gives every waiter its own client.
func perWaiter(scenario string) bool {
	return scenario == ContendedClients || scenario == ContendedProcs
}

// isContended reports whether scenario is one of the one-key scenarios.
func isContended(scenario string) bool { return scenario == Contended || perWaiter(scenario) }

// Options configures one Run.
type Options struct {
	Target *Target
	// Goroutines is the uncontended scenario's goroutine count.
	Goroutines int
	// Waiters is the contended scenarios' waiter count (goroutines, or
	// processes in ContendedProcs).
	Waiters int
	// Hold is how long a contended holder keeps the key: time.Sleep from
	// 1ms up; below that a yielding busy wait, because Go's sleeps on Linux
	// round short durations up to about a millisecond.
	Hold time.Duration
	// TTL is the lease time of every acquisition.
	TTL time.Duration
	// Duration is the measured phase's length, used when Ops is 0.
	Duration time.Duration
	// Ops, when > 0, ends the measured phase after that many pairs
	// (uncontended) or acquisitions (contended) instead of after Duration:
	// the go test benchmarks pass b.N.
	Ops uint64
	// Warmup is an unmeasured phase run first, on other keys, so
	// connections, script caches and pools are warm.
	Warmup time.Duration
	// KeyPrefix makes this run's keys unique on a shared server.
	KeyPrefix string
	// MongoURI is passed to backends as Config.MongoURI.
	MongoURI string
	// Measure, when set, is called just before the measured phase starts
	// (start=true) and just after it ends (start=false): the go test
	// benchmarks start and stop their timer there.
	Measure func(start bool)
}

// Percentiles of a latency distribution.
type Percentiles struct {
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p999_ns"`
	Max  time.Duration `json:"max_ns"`
	Mean time.Duration `json:"mean_ns"`
	N    uint64        `json:"n"`
}

func percentiles(h *Histogram) Percentiles {
	return Percentiles{
		P50: h.Quantile(0.5), P90: h.Quantile(0.9), P99: h.Quantile(0.99), P999: h.Quantile(0.999),
		Max: h.Max(), Mean: h.Mean(), N: h.Count(),
	}
}

// Result is one backend in one scenario.
type Result struct {
	Backend    string        `json:"backend"`
	Scenario   string        `json:"scenario"`
	Goroutines int           `json:"goroutines"`
	Hold       time.Duration `json:"hold_ns,omitempty"`
	Elapsed    time.Duration `json:"elapsed_ns"`
	// Ops is acquire+release pairs (uncontended) or acquisitions
	// (contended) completed in the measured phase.
	Ops       uint64  `json:"ops"`
	OpsPerSec float64 `json:"ops_per_sec"`
	// RoundOpsPerSec is each round's OpsPerSec when the result is the
	// Median of several rounds.
	RoundOpsPerSec []float64 `json:"rounds_ops_per_sec,omitempty"`
	Errors         uint64    `json:"errors"`
	FirstErr       string    `json:"first_error,omitempty"`
	// Latency is the time of one Acquire+Release pair (uncontended) or of
	// one Acquire, waiting included (contended).
	Latency Percentiles `json:"latency"`
	// Handoff (contended scenarios) is the gap from the previous holder's
	// Release to the moment the next holder's Acquire returned; HandoffFrom
	// says which moment of the Release: HandoffReleaseReturned (Contended)
	// or HandoffReleaseCalled (ContendedClients, ContendedProcs). When the
	// next holder's Acquire returns first (possible after a Release
	// returned: the server frees the key before the releaser reads its
	// reply) the gap counts as 0; Early says how often.
	Handoff     *Percentiles `json:"handoff,omitempty"`
	HandoffFrom string       `json:"handoff_from,omitempty"`
	Early       uint64       `json:"handoff_early,omitempty"`
	// Jain (contended) is Jain's fairness index over per-goroutine
	// acquisition counts.
	Jain   float64  `json:"jain,omitempty"`
	Counts []uint64 `json:"per_goroutine,omitempty"`
	// ReqPerOp is requests per pair or acquisition: the commands the
	// backend's clients sent to Redis over the measured phase, counted on
	// the client side by parsing what they wrote (RequestCounter); a script
	// invocation is one request. ReqByCmd splits it by command name. -1
	// when a connection wrote something that is not a RESP request.
	ReqPerOp float64            `json:"req_per_op"`
	ReqByCmd map[string]float64 `json:"req_by_command,omitempty"`
	// SrvCallsPerOp is server-side command calls per pair or acquisition
	// from INFO commandstats deltas: it also counts the commands Lua
	// scripts run inside Redis, and leaves out the harness's INFO calls.
	// -1 when the server reports no counters.
	SrvCallsPerOp float64            `json:"srv_calls_per_op"`
	SrvCallsByCmd map[string]float64 `json:"srv_calls_by_command,omitempty"`
	// AllocsPerOp and BytesPerOp are runtime.MemStats Mallocs and
	// TotalAlloc deltas over the measured phase divided by Ops: everything
	// the process allocated, the backend's background goroutines included.
	// -1 in ContendedProcs, whose waiters are other processes.
	AllocsPerOp float64 `json:"allocs_per_op"`
	BytesPerOp  float64 `json:"bytes_per_op"`
}

// Handoff definitions (Result.HandoffFrom).
const (
	HandoffReleaseReturned = "release returned"
	HandoffReleaseCalled   = "release called"
)

// Run sets up backend b, runs scenario for a warm-up and then a measured
// phase, closes the backend, and returns the figures. In ContendedClients
// it sets up one backend per waiter, all counted by one RequestCounter;
// ContendedProcs is RunProcs. It returns an error when the backend cannot
// be set up, does not apply to the scenario (Applies), or the measured
// phase completed nothing.
func Run(ctx context.Context, b BackendInfo, scenario string, o Options) (Result, error) {
	if o.TTL <= 0 {
		o.TTL = 10 * time.Second
	}
	n := o.Goroutines
	switch scenario {
	case Uncontended:
	case Contended, ContendedClients, ContendedProcs:
		n = o.Waiters
	default:
		return Result{}, fmt.Errorf("unknown scenario %q", scenario)
	}
	if n <= 0 {
		return Result{}, fmt.Errorf("%s: need at least one goroutine", scenario)
	}
	if !Applies(b, scenario) {
		return Result{}, fmt.Errorf("%s %s: an in-process backend has no client per waiter",
			b.Name, scenario)
	}
	if scenario == ContendedProcs {
		return RunProcs(ctx, b, o)
	}
	res := Result{Backend: b.Name, Scenario: scenario, Goroutines: n, ReqPerOp: -1, SrvCallsPerOp: -1}
	if isContended(scenario) {
		res.Hold = o.Hold
		res.HandoffFrom = HandoffReleaseReturned
		if perWaiter(scenario) {
			res.HandoffFrom = HandoffReleaseCalled
		}
	}
	reqs := NewRequestCounter()
	nbe := 1
	if perWaiter(scenario) {
		nbe = n
	}
	bes := make([]Backend, 0, nbe)
	defer func() {
		for _, be := range bes {
			be.Close()
		}
	}()
	for range nbe {
		be, err := b.New(Config{Target: o.Target, TTL: o.TTL, Requests: reqs, MongoURI: o.MongoURI})
		if err != nil {
			return res, fmt.Errorf("%s: set up: %w", b.Name, err)
		}
		bes = append(bes, be)
	}
	prefix := runPrefix(o, b, scenario)
	relCalled := res.HandoffFrom == HandoffReleaseCalled

	if o.Warmup > 0 {
		p := &phase{
			bes:       bes,
			o:         o,
			n:         n,
			keyPrefix: prefix + ":warm",
			duration:  o.Warmup,
			relCalled: relCalled,
		}
		p.run(ctx, scenario)
	}

	// Command counters come from a connection of the harness's own, opened
	// before the snapshot so its handshake is not counted.
	var admin *statsReader
	if o.Target != nil {
		if c, err := o.Target.Admin(); err == nil {
			defer c.Close()
			admin = &statsReader{ctx: context.WithoutCancel(ctx), c: c}
		}
	}
	var statsBefore CommandStats
	statsOK := false
	if admin != nil {
		var err error
		statsBefore, err = admin.snapshot()
		statsOK = err == nil
	}

	reqBefore := reqs.Snapshot()

	p := &phase{
		bes:       bes,
		o:         o,
		n:         n,
		keyPrefix: prefix,
		duration:  o.Duration,
		limit:     o.Ops,
		relCalled: relCalled,
	}
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	if o.Measure != nil {
		o.Measure(true)
	}
	p.run(ctx, scenario)
	if o.Measure != nil {
		o.Measure(false)
	}
	runtime.ReadMemStats(&m1)
	req := reqs.Snapshot().Sub(reqBefore)
	var stats CommandStats
	if statsOK {
		after, err := admin.snapshot()
		if err == nil {
			stats = after.Sub(statsBefore)
		} else {
			statsOK = false
		}
	}

	res.Elapsed = p.elapsed
	res.Errors = p.errs.Load()
	if e := p.firstErr.Load(); e != nil {
		res.FirstErr = (*e).Error()
	}
	var lat, gap Histogram
	for i := range p.workers {
		w := &p.workers[i]
		res.Ops += w.count
		lat.Merge(&w.lat)
		gap.Merge(&w.gap)
		res.Early += w.early
		if isContended(scenario) {
			res.Counts = append(res.Counts, w.count)
		}
	}
	res.Latency = percentiles(&lat)
	if isContended(scenario) {
		h := percentiles(&gap)
		res.Handoff = &h
		res.Jain = Jain(res.Counts)
	}
	if err := res.finish(b.Name, &req, stats, statsOK); err != nil {
		return res, err
	}
	res.AllocsPerOp = float64(m1.Mallocs-m0.Mallocs) / float64(res.Ops)
	res.BytesPerOp = float64(m1.TotalAlloc-m0.TotalAlloc) / float64(res.Ops)
	return res, nil
}

// runPrefix gives every Run keys of its own: a lease left behind by an
// acquire cut off at the end of an earlier phase (some backends cannot undo
// one) must not make a later round wait out its TTL.
func runPrefix(o Options, b BackendInfo, scenario string) string {
	return o.KeyPrefix + ":" + b.Name + ":" + scenario[:1] + ":" +
		strconv.FormatUint(runSeq.Add(1), 10)
}

// finish fills the rates and per-operation counts from res.Ops and
// res.Elapsed; req may be nil (not counted). It fails when nothing
// completed.
func (res *Result) finish(
	backend string,
	req *RequestStats,
	stats CommandStats,
	statsOK bool,
) error {
	if res.Ops == 0 {
		if res.FirstErr != "" {
			return fmt.Errorf("%s %s: nothing completed: %s", backend, res.Scenario, res.FirstErr)
		}
		return fmt.Errorf("%s %s: nothing completed", backend, res.Scenario)
	}
	if res.Elapsed > 0 {
		res.OpsPerSec = float64(res.Ops) / res.Elapsed.Seconds()
	}
	if req != nil && req.Bad == 0 {
		res.ReqPerOp = float64(req.Total) / float64(res.Ops)
		res.ReqByCmd = perOp(req.ByCmd, res.Ops)
	}
	if statsOK {
		res.SrvCallsPerOp = float64(stats.Total) / float64(res.Ops)
		if stats.Calls != nil {
			res.SrvCallsByCmd = perOp(stats.Calls, res.Ops)
		}
	}
	return nil
}

func perOp(counts map[string]uint64, ops uint64) map[string]float64 {
	out := map[string]float64{}
	for name, c := range counts {
		out[name] = float64(c) / float64(ops)
	}
	return out
}

// worker is one goroutine's private tallies; padded so neighbours do not
// share cache lines.
type worker struct {
	count uint64
	early uint64
	lat   Histogram
	gap   Histogram
	_     [64]byte
}

// handoff is the slot for the hand-off after acquisition number seq:
// rel is when that holder's Release returned, acq when the next holder's
// Acquire returned (nanoseconds since the phase began, 0 = not yet).
// Whichever side writes second records the gap; claimed makes sure only one
// does.
type handoff struct {
	rel, acq atomic.Int64
	claimed  atomic.Bool
}

const ringSize = 1 << 12

type phase struct {
	// bes are the backends; worker i uses bes[i%len(bes)].
	bes       []Backend
	o         Options
	n         int
	keyPrefix string
	duration  time.Duration
	limit     uint64
	// relCalled: hand-offs count from the moment Release is called, not
	// from when it returned.
	relCalled bool

	start    time.Time
	stop     atomic.Bool
	issued   atomic.Uint64 // uncontended: pairs started (for limit)
	seq      atomic.Uint64 // contended: acquisitions, in lock order
	ring     []handoff
	errs     atomic.Uint64
	firstErr atomic.Pointer[error]
	workers  []worker
	elapsed  time.Duration
}

// runSeq numbers the Runs of this process, to keep their keys apart.
var runSeq atomic.Uint64

func (p *phase) fail(err error) {
	p.errs.Add(1)
	p.firstErr.CompareAndSwap(nil, &err)
}

func (p *phase) since() int64 {
	// +1 so that 0 stays "not yet".
	return int64(time.Since(p.start)) + 1
}

func (p *phase) run(parent context.Context, scenario string) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	p.workers = make([]worker, p.n)
	if isContended(scenario) {
		p.ring = make([]handoff, ringSize)
	}
	var wg sync.WaitGroup
	p.start = time.Now()
	var stopAt time.Time
	var once sync.Once
	halt := func() {
		once.Do(func() {
			stopAt = time.Now()
			p.stop.Store(true)
			cancel() // wakes waiters blocked in Acquire
		})
	}
	if p.limit == 0 {
		t := time.AfterFunc(p.duration, halt)
		defer t.Stop()
	}
	go func() {
		<-parent.Done()
		halt()
	}()
	for i := 0; i < p.n; i++ {
		wg.Add(1)
		go func(w *worker, id int) {
			defer wg.Done()
			be := p.bes[id%len(p.bes)]
			if isContended(scenario) {
				p.contended(ctx, w, be, halt)
			} else {
				p.uncontended(ctx, w, be, id)
			}
		}(&p.workers[i], i)
	}
	wg.Wait()
	halt()
	p.elapsed = stopAt.Sub(p.start)
}

func (p *phase) uncontended(ctx context.Context, w *worker, be Backend, id int) {
	var keys [4]string
	for i := range keys {
		keys[i] = p.keyPrefix + ":" + strconv.Itoa(id) + ":" + strconv.Itoa(i)
	}
	release := context.WithoutCancel(ctx)
	for i := 0; !p.stop.Load(); i++ {
		if p.limit > 0 && p.issued.Add(1) > p.limit {
			return // the others finish theirs; run halts when all are back
		}
		t0 := time.Now()
		h, err := be.Acquire(ctx, keys[i&3], p.o.TTL)
		if err != nil {
			if !p.stop.Load() {
				p.fail(err)
			}
			continue
		}
		err = h.Release(release)
		d := time.Since(t0)
		if err != nil {
			p.fail(err)
			continue
		}
		if p.stop.Load() {
			return // finished after the end: not counted
		}
		w.lat.Record(d)
		w.count++
	}
}

func (p *phase) contended(ctx context.Context, w *worker, be Backend, halt func()) {
	key := p.keyPrefix + ":key"
	release := context.WithoutCancel(ctx)
	for !p.stop.Load() {
		t0 := time.Now()
		h, err := be.Acquire(ctx, key, p.o.TTL)
		if err != nil {
			if !p.stop.Load() && ctx.Err() == nil {
				p.fail(err)
				time.Sleep(time.Millisecond) // no hot loop on a broken backend
			}
			continue
		}
		acqAt := p.since()
		counted := !p.stop.Load()
		seq := p.seq.Add(1)
		// This holder owns slot seq until it releases; reset it for the
		// hand-off that follows its own release.
		mine := &p.ring[seq%ringSize]
		mine.rel.Store(0)
		mine.acq.Store(0)
		mine.claimed.Store(false)
		if seq > 1 {
			prev := &p.ring[(seq-1)%ringSize]
			prev.acq.Store(acqAt)
			p.claim(prev, w)
		}
		if counted {
			w.count++
			w.lat.Record(time.Since(t0))
		}
		if p.limit > 0 && seq >= p.limit {
			halt()
		}
		hold(p.o.Hold)
		if p.relCalled {
			mine.rel.Store(p.since())
		}
		err = h.Release(release)
		if !p.relCalled {
			mine.rel.Store(p.since())
		}
		p.claim(mine, w)
		if err != nil && !errors.Is(err, context.Canceled) {
			p.fail(err)
		}
	}
}

// claim records the gap of slot s once both sides are in, exactly once.
func (p *phase) claim(s *handoff, w *worker) {
	rel, acq := s.rel.Load(), s.acq.Load()
	if rel == 0 || acq == 0 || p.stop.Load() || !s.claimed.CompareAndSwap(false, true) {
		return
	}
	gap := acq - rel
	if gap < 0 {
		w.early++
		gap = 0
	}
	w.gap.Record(time.Duration(gap))
}

type statsReader struct {
	ctx context.Context
	c   rueidis.Client
}

func (s *statsReader) snapshot() (CommandStats, error) { return ReadCommandStats(s.ctx, s.c) }

// hold keeps the key for d; see Options.Hold.
func hold(d time.Duration) {
	if d <= 0 {
		return
	}
	if d >= time.Millisecond {
		time.Sleep(d)
		return
	}
	for end := time.Now().Add(d); time.Now().Before(end); {
		runtime.Gosched()
	}
}
