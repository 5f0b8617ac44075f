package reliability

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/klauthed/lock"
)

// The history: every acquisition (one leaseRec), with its refreshes, its
// release and the writes its holder made through the fenced register, each
// with real-time bounds taken on this process's monotonic clock. The Redis
// server runs on the same machine, so its clock and ours advance at the same
// rate; expiry on the server's clock is bounded with our readings below.

// leaseRec is one acquisition and everything its holder did with it.
type leaseRec struct {
	id     int
	client int
	key    string
	token  lock.Token
	fence  uint64
	ttl    time.Duration

	acqCall time.Time // Acquire called (the grant is no earlier)
	acqEnd  time.Time // Acquire returned (the grant is no later)

	mu        sync.Mutex
	refreshes []callRec
	release   *callRec
	writes    []writeRec
	told      time.Time // fn saw its context cancelled with ErrNotHeld
	stolen    time.Time // the suite took the key from this lease (steal fault)
}

// callRec is one Refresh or Release call.
type callRec struct {
	start, end time.Time
	err        error
}

// writeRec is one write attempt through the fenced register.
type writeRec struct {
	at       time.Time // inside the register's lock, after the ctx check
	accepted bool
}

// opRec is any call made with a context, for the hang check.
type opRec struct {
	what     string
	client   int
	end      time.Time
	deadline time.Time // zero: the context had none
}

// history collects the records of one run. Safe for concurrent use.
type history struct {
	mu     sync.Mutex
	leases []*leaseRec
	ops    []opRec
	// acquires holds every successful Acquire as a porcupine operation.
	acquires []porcupine.Operation
	origin   time.Time
}

func newHistory() *history { return &history{origin: time.Now()} }

func (h *history) op(what string, client int, ctx context.Context, end time.Time) {
	dl, _ := ctx.Deadline()
	h.mu.Lock()
	h.ops = append(h.ops, opRec{what: what, client: client, end: end, deadline: dl})
	h.mu.Unlock()
}

func (h *history) addLease(r *leaseRec) {
	h.mu.Lock()
	r.id = len(h.leases)
	h.leases = append(h.leases, r)
	h.acquires = append(h.acquires, porcupine.Operation{
		ClientId: r.client,
		Input:    r.key,
		Call:     r.acqCall.Sub(h.origin).Nanoseconds(),
		Output:   r.fence,
		Return:   r.acqEnd.Sub(h.origin).Nanoseconds(),
	})
	h.mu.Unlock()
}

// recManager wraps a Manager and records every call into h.
type recManager struct {
	m      lock.Manager
	client int
	h      *history
}

func (r *recManager) TryAcquire(
	ctx context.Context, key string, ttl time.Duration,
) (lock.Lease, bool, error) {
	start := time.Now()
	l, ok, err := r.m.TryAcquire(ctx, key, ttl)
	end := time.Now()
	r.h.op("TryAcquire", r.client, ctx, end)
	if err != nil || !ok {
		return nil, ok, err
	}
	return r.wrap(l, key, ttl, start, end), true, nil
}

func (r *recManager) Acquire(
	ctx context.Context, key string, ttl time.Duration,
) (lock.Lease, error) {
	start := time.Now()
	l, err := r.m.Acquire(ctx, key, ttl)
	end := time.Now()
	r.h.op("Acquire", r.client, ctx, end)
	if err != nil {
		return nil, err
	}
	return r.wrap(l, key, ttl, start, end), nil
}

func (r *recManager) wrap(
	l lock.Lease, key string, ttl time.Duration, start, end time.Time,
) *recLease {
	rec := &leaseRec{client: r.client, key: key, token: l.Token(), fence: l.Fence(), ttl: ttl,
		acqCall: start, acqEnd: end}
	r.h.addLease(rec)
	return &recLease{Lease: l, rec: rec, h: r.h}
}

// recLease records Refresh and Release and passes Lost through, so lock.Run
// still watches the key.
type recLease struct {
	lock.Lease
	rec *leaseRec
	h   *history
}

var _ lock.Watcher = (*recLease)(nil)

func (l *recLease) Refresh(ctx context.Context, ttl time.Duration) error {
	start := time.Now()
	err := l.Lease.Refresh(ctx, ttl)
	end := time.Now()
	l.h.op("Refresh", l.rec.client, ctx, end)
	l.rec.mu.Lock()
	l.rec.refreshes = append(l.rec.refreshes, callRec{start: start, end: end, err: err})
	l.rec.mu.Unlock()
	return err
}

func (l *recLease) Release(ctx context.Context) error {
	start := time.Now()
	err := l.Lease.Release(ctx)
	end := time.Now()
	l.h.op("Release", l.rec.client, ctx, end)
	l.rec.mu.Lock()
	if l.rec.release == nil {
		l.rec.release = &callRec{start: start, end: end, err: err}
	}
	l.rec.mu.Unlock()
	return err
}

func (l *recLease) Lost() <-chan struct{} {
	if w, ok := l.Lease.(lock.Watcher); ok {
		return w.Lost()
	}
	return nil
}

// fencedRegister is the storage behind the lock, as in Kleppmann's fencing
// argument: per key it remembers the fence (and token) of the last write it
// accepted and rejects a write whose fence is older, or equal but from
// another acquisition. It also plays the honest client: a write whose
// holder's context is already done is not attempted at all (the holder was
// told it lost the lease), and that check happens under the register's lock,
// so "told" and "wrote" are ordered exactly.
type fencedRegister struct {
	mu       sync.Mutex
	last     map[string]regEntry
	accepted map[string][]regEntry // per key, in acceptance order
}

type regEntry struct {
	fence uint64
	token lock.Token
	at    time.Time
}

func newRegister() *fencedRegister {
	return &fencedRegister{last: map[string]regEntry{}, accepted: map[string][]regEntry{}}
}

// write attempts one write for the lease r. It returns false when the holder
// must stop: its context is done.
func (g *fencedRegister) write(ctx context.Context, r *leaseRec) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if ctx.Err() != nil {
		return false
	}
	now := time.Now()
	cur, seen := g.last[r.key]
	ok := !seen || r.fence > cur.fence || (r.fence == cur.fence && r.token == cur.token)
	if ok {
		e := regEntry{fence: r.fence, token: r.token, at: now}
		g.last[r.key] = e
		g.accepted[r.key] = append(g.accepted[r.key], e)
	}
	r.mu.Lock()
	r.writes = append(r.writes, writeRec{at: now, accepted: ok})
	r.mu.Unlock()
	return true
}

// interval is a span of real time during which one lease certainly held its
// key on the server.
type interval struct {
	lease      int
	start, end time.Time
}

// heldIntervals returns the spans in which r's lease certainly held its key
// on the Redis server, from what the client observed:
//
//   - the grant happened in [acqCall, acqEnd] and set PX ttl, so the key was
//     held from acqEnd until at least acqCall+ttl;
//   - a successful Refresh ran the script in [start, end] and set PX ttl, so
//     the key was held from end until at least start+ttl;
//   - nothing but our own Release deletes it (the suite injects no FLUSHALL,
//     and runs Redis with appendfsync always so a restart keeps the keys), so
//     every span is cut at the start of the Release, or where the suite
//     took the key from the lease on purpose (the steal fault).
//
// Spans that come out empty (a long wait, a slow reply) are dropped. These
// are lower bounds of the server's view: a lease may have held longer (the
// reply took time, a timed-out refresh still reached Redis), never shorter.
func heldIntervals(r *leaseRec) []interval {
	r.mu.Lock()
	defer r.mu.Unlock()
	cut := time.Time{}
	if r.release != nil {
		cut = r.release.start
	}
	if !r.stolen.IsZero() && (cut.IsZero() || r.stolen.Before(cut)) {
		cut = r.stolen
	}
	var out []interval
	add := func(s, e time.Time) {
		if !cut.IsZero() && e.After(cut) {
			e = cut
		}
		if s.Before(e) {
			out = append(out, interval{lease: r.id, start: s, end: e})
		}
	}
	add(r.acqEnd, r.acqCall.Add(r.ttl))
	for _, f := range r.refreshes {
		if f.err == nil {
			add(f.end, f.start.Add(r.ttl))
		}
	}
	return out
}

// verdict is what the checker found.
type verdict struct {
	overlaps    []string // two leases certainly valid at once on the server
	outOfOrder  []string // the register accepted a write with an older fence
	untold      []string // a holder wrote after a newer lease was granted, not told
	rejected    int      // writes the register rejected (each also an untold)
	fenceOrder  []string // an acquisition that finished before another began has the larger fence
	porcupine   string   // "ok", "illegal" or "unknown"
	hangs       []string
	writes      int
	stalledTold int
	stalled     int
}

func (v *verdict) violations() int {
	n := len(v.overlaps) + len(v.outOfOrder) + len(v.untold) + len(v.fenceOrder)
	if v.porcupine == "illegal" {
		n++
	}
	return n
}

// check runs every check over the history. slack is how far past its
// context's deadline a call may return before it counts as a hang.
func check(h *history, g *fencedRegister, slack time.Duration) *verdict {
	v := &verdict{}
	byKey := map[string][]*leaseRec{}
	for _, r := range h.leases {
		byKey[r.key] = append(byKey[r.key], r)
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)

	for _, k := range keys {
		leases := byKey[k]

		// 1. No two leases certainly held at once (sweep over spans sorted
		// by start, keeping the span that reaches furthest).
		var spans []interval
		for _, r := range leases {
			spans = append(spans, heldIntervals(r)...)
		}
		sort.Slice(spans, func(i, j int) bool { return spans[i].start.Before(spans[j].start) })
		var far *interval
		for i := range spans {
			s := &spans[i]
			if far != nil && s.start.Before(far.end) && s.lease != far.lease {
				a, b := h.leases[far.lease], h.leases[s.lease]
				v.overlaps = append(v.overlaps, fmt.Sprintf("key %q: lease fence %d (client %d) "+
					"held until >= %v while fence %d (client %d) held from %v",
					k, a.fence, a.client, far.end.Sub(h.origin), b.fence, b.client, s.start.Sub(h.origin)))
			}
			if far == nil || s.end.After(far.end) {
				far = s
			}
		}

		// 2. Fences follow real time: an acquisition that returned before
		// another was called has the smaller fence, and no two share one.
		sorted := append([]*leaseRec(nil), leases...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].fence < sorted[j].fence })
		for i := 1; i < len(sorted); i++ {
			if sorted[i].fence == sorted[i-1].fence {
				v.fenceOrder = append(v.fenceOrder,
					fmt.Sprintf("key %q: fence %d granted twice", k, sorted[i].fence))
			}
		}
		// For each lease, the earliest acqEnd among leases with a larger
		// fence: if that is before this lease's acqCall, order is broken.
		// The same suffix minimum serves the untold-writer check.
		minEndAfter := make([]time.Time, len(sorted)+1)
		for i := len(sorted) - 1; i >= 0; i-- {
			minEndAfter[i] = sorted[i].acqEnd
			if i+1 < len(sorted) && minEndAfter[i+1].Before(minEndAfter[i]) {
				minEndAfter[i] = minEndAfter[i+1]
			}
		}
		for i, r := range sorted {
			j := i + 1
			for j < len(sorted) && sorted[j].fence == r.fence {
				j++
			}
			if j >= len(sorted) {
				continue
			}
			next := minEndAfter[j]
			if next.Before(r.acqCall) {
				v.fenceOrder = append(v.fenceOrder, fmt.Sprintf(
					"key %q: fence %d acquired after a larger fence had been granted", k, r.fence))
			}
			// 3. A holder is told before it can write again: no write by r
			// after a lease with a larger fence was certainly granted.
			r.mu.Lock()
			for _, w := range r.writes {
				if !w.accepted {
					v.rejected++
				}
				if w.at.After(next) || !w.accepted {
					v.untold = append(v.untold, fmt.Sprintf("key %q: client %d wrote with fence %d "+
						"at %v (accepted=%v), after a newer lease was granted at <= %v, without being told",
						k, r.client, r.fence, w.at.Sub(h.origin), w.accepted, next.Sub(h.origin)))
				}
			}
			r.mu.Unlock()
		}
		for _, r := range leases {
			r.mu.Lock()
			v.writes += len(r.writes)
			r.mu.Unlock()
		}

		// 4. The register itself: accepted fences never go down.
		acc := g.accepted[k]
		for i := 1; i < len(acc); i++ {
			if acc[i].fence < acc[i-1].fence ||
				(acc[i].fence == acc[i-1].fence && acc[i].token != acc[i-1].token) {
				v.outOfOrder = append(v.outOfOrder,
					fmt.Sprintf("key %q: accepted fence %d after %d", k, acc[i].fence, acc[i-1].fence))
			}
		}
	}

	// 5. Linearizability of the acquisitions as a per-key fence counter.
	switch porcupine.CheckOperationsTimeout(fenceModel, h.acquires, 30*time.Second) {
	case porcupine.Ok:
		v.porcupine = "ok"
	case porcupine.Illegal:
		v.porcupine = "illegal"
	default:
		v.porcupine = "unknown"
	}

	// 6. Nothing returns later than its context's deadline plus slack.
	for _, o := range h.ops {
		if !o.deadline.IsZero() && o.end.Sub(o.deadline) > slack {
			v.hangs = append(v.hangs, fmt.Sprintf("client %d: %s returned %v after its deadline",
				o.client, o.what, o.end.Sub(o.deadline)))
		}
	}
	return v
}

// fenceModel is the sequential specification of acquisitions seen through
// their fences: per key, every successful acquisition returns a fence larger
// than every fence returned before it. A history is linearizable under this
// model exactly when the fences can be ordered consistently with real time.
var fenceModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(string)
			if _, ok := by[k]; !ok {
				keys = append(keys, k)
			}
			by[k] = append(by[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() any { return uint64(0) },
	Step: func(state, _, output any) (bool, any) {
		f := output.(uint64)
		if f > state.(uint64) {
			return true, f
		}
		return false, state
	},
	DescribeOperation: func(input, output any) string {
		return fmt.Sprintf("acquire(%v) -> fence %v", input, output)
	},
}

// errKind names the outcome of one lock.Run for the figures.
func errKind(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, lock.ErrNotHeld):
		return "lost"
	case errors.Is(err, lock.ErrNotAcquired):
		return "timeout"
	default:
		return "error"
	}
}
