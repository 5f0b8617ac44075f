package reliability

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
)

// The queued waiters of the fault suite (issue 11): hotClients Managers,
// each with its own client as separate processes would have, contend for
// one hot key with short critical sections and long lock.Run contexts, so
// that most of their Acquire calls wait in the key's line in Redis and get
// the key by a hand-off. One wait in hotCancelEvery is cancelled mid-wait.
// They connect to redis-server directly: the faults that hit them are the
// server-side ones (CLIENT KILL of their connections, the Pub/Sub one
// included, CLIENT PAUSE, DEBUG SLEEP, SIGSTOP, SCRIPT FLUSH, restart).
const (
	hotKey         = "hot"
	hotClients     = 5
	hotWait        = 4 * time.Second // each hot lock.Run's context
	hotCancelEvery = 4
	// afterCancel is how long a hot client whose wait was cancelled stays
	// away, so that the line shows whether its entry left.
	afterCancel = 1500 * time.Millisecond
	// leaveBound is how soon a cancelled waiter's entry must be out of the
	// line: lockredis's CleanupTimeout (the bound of the background
	// release that takes it out) plus slack. An entry left to expire
	// lasts up to LineTTL (3s) instead.
	leaveBound = lockredis.DefaultCleanupTimeout + 800*time.Millisecond
	// starveHandoffs: a waiter that timed out while the key changed hands
	// this many times during its wait starved (in FIFO order it would have
	// been served after at most hotClients-1 of them).
	starveHandoffs = 2 * hotClients
)

// newHotManagers starts the hot clients' Managers on addr, named waiterN
// in CLIENT LIST, and learns each one's hand-off channel (the new channel
// in PUBSUB CHANNELS after it started), so that line entries can be told
// apart by Manager. It must run before any other Manager subscribes.
func newHotManagers(t *testing.T, srv *redistest.Server) ([]*lockredis.Manager, []string) {
	t.Helper()
	var ms []*lockredis.Manager
	var chans []string
	for i := 0; i < hotClients; i++ {
		m, err := lockredis.New(lockredis.Options{ClientOption: rueidis.ClientOption{
			InitAddress: []string{srv.Addr},
			ClientName:  fmt.Sprintf("waiter%d", i),
			Dialer:      net.Dialer{Timeout: time.Second},
		}})
		if err != nil {
			t.Fatalf("lockredis.New: %v", err)
		}
		t.Cleanup(func() { m.Close() })
		deadline := time.Now().Add(5 * time.Second)
		for {
			all := strings.Fields(srv.Cli(t, "PUBSUB", "CHANNELS", lockredis.DefaultPrefix+"wake:*"))
			all = slices.DeleteFunc(all, func(c string) bool { return slices.Contains(chans, c) })
			if len(all) == 1 {
				chans = append(chans, all[0])
				break
			}
			if len(all) > 1 || time.Now().After(deadline) {
				t.Fatalf("hot Manager %d: new hand-off channels %q, want exactly one", i, all)
			}
			time.Sleep(5 * time.Millisecond)
		}
		ms = append(ms, m)
	}
	return ms, chans
}

// lineWatch samples the hot key's line every few milliseconds with a plain
// client: which tokens were ever queued (and on which Manager's channel),
// and whether a cancelled waiter's entry left the line.
type lineWatch struct {
	admin rueidis.Client
	chans []string // hot client i's hand-off channel

	mu              sync.Mutex
	seen            map[string]bool   // tokens ever seen in the line
	pending         map[int]time.Time // hot client -> when its cancelled wait returned
	left            map[string]int    // "prompt" / "late": cancelled entries gone
	stuck           []string          // cancelled entries still there after LineTTL
	sampled, failed int
}

func newLineWatch(addr string, chans []string) (*lineWatch, error) {
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: []string{addr}, DisableCache: true, ClientName: "linewatch",
	})
	if err != nil {
		return nil, err
	}
	return &lineWatch{admin: c, chans: chans, seen: map[string]bool{},
		pending: map[int]time.Time{}, left: map[string]int{}}, nil
}

// cancelled notes that hot client i's wait was cancelled at at.
func (w *lineWatch) cancelled(i int, at time.Time) {
	w.mu.Lock()
	w.pending[i] = at
	w.mu.Unlock()
}

// run samples until ctx ends.
func (w *lineWatch) run(ctx context.Context) {
	name := lockredis.LockKey(lockredis.DefaultPrefix, hotKey)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		sctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		res := w.admin.DoMulti(sctx,
			w.admin.B().Zrange().Key(name+":line").Min("0").Max("-1").Build(),
			w.admin.B().Hgetall().Key(name+":line:args").Build())
		cancel()
		line, err1 := res[0].AsStrSlice()
		args, err2 := res[1].AsStrMap()
		now := time.Now()
		w.mu.Lock()
		if err1 != nil || err2 != nil {
			w.failed++
			w.mu.Unlock()
			continue
		}
		w.sampled++
		present := map[string]bool{}
		for _, tok := range line {
			w.seen[tok] = true
			if _, ch, ok := strings.Cut(args[tok], " "); ok {
				present[ch] = true
			}
		}
		for i, at := range w.pending {
			switch {
			case !present[w.chans[i]] && now.Sub(at) <= leaveBound:
				w.left["prompt"]++
				delete(w.pending, i)
			case !present[w.chans[i]]:
				w.left["late"]++
				delete(w.pending, i)
			case now.Sub(at) > lockredis.DefaultLineTTL+time.Second:
				w.stuck = append(w.stuck, fmt.Sprintf(
					"hot client %d: its cancelled wait's entry still in line %v later", i, now.Sub(at)))
				delete(w.pending, i)
			}
		}
		w.mu.Unlock()
	}
}

// killWaiters kills every connection of the hot clients, found by name in
// CLIENT LIST, one by one with CLIENT KILL ID, and returns how many it
// killed and how many of them were Pub/Sub connections (sub=1).
func killWaiters(t *testing.T, srv *redistest.Server) (killed, pubsub int) {
	t.Helper()
	for _, line := range strings.Split(srv.Cli(t, "CLIENT", "LIST"), "\n") {
		f := map[string]string{}
		for _, kv := range strings.Fields(line) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				f[k] = v
			}
		}
		if !strings.HasPrefix(f["name"], "waiter") {
			continue
		}
		if srv.Cli(t, "CLIENT", "KILL", "ID", f["id"]) == "1" {
			killed++
			if f["sub"] != "0" {
				pubsub++
			}
		}
	}
	return killed, pubsub
}

// lineKeysLeft returns the line keys of keys that still hold a place in
// line: the line itself, or an args entry other than the "gone" mark a
// given-up token keeps until its place would have lapsed.
func lineKeysLeft(t *testing.T, srv *redistest.Server, keys []string) []string {
	t.Helper()
	var out []string
	for _, k := range keys {
		name := lockredis.LockKey(lockredis.DefaultPrefix, k)
		if srv.Cli(t, "EXISTS", name+":line") != "0" {
			out = append(out, name+":line")
		}
		for _, v := range strings.Fields(srv.Cli(t, "HVALS", name+":line:args")) {
			if v != "gone" && !strings.HasPrefix(v, "klauthed:wake:") {
				out = append(out, name+":line:args")
				break
			}
		}
	}
	return out
}

// span is one wait of a hot client that ended by its deadline.
type span struct{ start, end time.Time }

// starved returns, for each hot wait that ended by its deadline, a finding
// if the hot key changed hands starveHandoffs times or more during it.
func starved(h *history, clients []*client) (timedOut int, out []string) {
	for _, c := range clients {
		for _, s := range c.timedOut {
			timedOut++
			n := 0
			for _, r := range h.leases {
				if r.key == hotKey && r.client != c.id && r.acqEnd.After(s.start) && r.acqEnd.Before(s.end) {
					n++
				}
			}
			if n >= starveHandoffs {
				out = append(out, fmt.Sprintf("client %d waited %v from %v for %q and timed out "+
					"while the key changed hands %d times", c.id, s.end.Sub(s.start).Round(time.Millisecond),
					s.start.Sub(h.origin).Round(time.Millisecond), hotKey, n))
			}
		}
	}
	return timedOut, out
}
