package reliability

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/klauthed/lock"
	"github.com/klauthed/lock/gen"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
)

// ctxT returns a context for a few calls that ends with the test.
func ctxT(tb testing.TB) context.Context {
	tb.Helper()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return c
}

// newManager returns a Manager on addr, closed in t.Cleanup.
func newManager(tb testing.TB, addr string, opts lockredis.Options) *lockredis.Manager {
	tb.Helper()
	opts.ClientOption.InitAddress = []string{addr}
	if opts.ClientOption.Dialer.Timeout == 0 {
		opts.ClientOption.Dialer.Timeout = time.Second
	}
	m, err := lockredis.New(opts)
	if err != nil {
		tb.Fatalf("lockredis.New(%s) = %v", addr, err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// take takes key on m or fails tb.
func take(tb testing.TB, m lock.Manager, key string, ttl time.Duration) lock.Lease {
	tb.Helper()
	l, ok, err := m.TryAcquire(ctxT(tb), key, ttl)
	if err != nil || !ok {
		tb.Fatalf("TryAcquire(%q) = %v, %v, %v; want a lease", key, l, ok, err)
	}
	return l
}

// retry calls f until it returns an error other than a transport error
// (the first calls after a reconnect or a proxy switch may fail once), or
// 5s pass, and returns f's last error.
func retry(f func() error) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := f()
		if err == nil || errors.Is(err, lock.ErrNotHeld) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pair is a primary and a replica of real redis-server processes. The
// replica replicates through link, an in-process toxiproxy, so a test can
// hold replication back; clients reach the primary through front, which a
// test re-points at the replica on failover, as Sentinel or a DNS switch
// would.
type pair struct {
	primary, replica *redistest.Server
	link, front      *toxiproxy.Proxy
}

func startPair(t *testing.T) *pair {
	t.Helper()
	toxi := newToxiServer()
	p := &pair{primary: redistest.Start(t)}
	p.link = newProxy(t, toxi, "replication", p.primary.Addr)
	host, port, _ := net.SplitHostPort(p.link.Listen)
	p.replica = redistest.Start(t, "--replicaof", host, port)
	p.front = newProxy(t, toxi, "front", p.primary.Addr)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.replica.Cli(t, "INFO", "replication"), "master_link_status:up") {
		if time.Now().After(deadline) {
			t.Fatalf("replica %s did not link to its primary within 10s:\n%s",
				p.replica.Addr, p.replica.Cli(t, "INFO", "replication"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

// waitReplicated waits until the replica holds value under name.
func (p *pair) waitReplicated(t *testing.T, name, value string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.replica.Cli(t, "GET", name) != value {
		if time.Now().After(deadline) {
			t.Fatalf("replica never got %s=%q", name, value)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// failover promotes the replica with REPLICAOF NO ONE, cuts the
// replication link (bytes it still holds back are never delivered) and
// points front at the new primary.
func (p *pair) failover(t *testing.T) {
	t.Helper()
	if got := p.replica.Cli(t, "REPLICAOF", "NO", "ONE"); got != "OK" {
		t.Fatalf("REPLICAOF NO ONE = %q", got)
	}
	p.link.Stop()
	proxy := &toxiproxy.Proxy{Listen: p.front.Listen, Upstream: p.replica.Addr, Enabled: true}
	if err := p.front.Update(proxy); err != nil {
		t.Fatalf("re-point front proxy at the replica: %v", err)
	}
}

// failoverCase is one way of taking a lock before a failover. To add the
// replica-acknowledgement variant, add a case with
// opts: lockredis.Options{WaitReplicas: 1, ...} and lag: true whose check
// asserts that the acquire failed (no replica confirmed) instead of
// granting a lease the promoted replica forgets.
type failoverCase struct {
	name string
	opts lockredis.Options
	// lag holds replication back (a 10s latency on the replication link)
	// from just before the acquire until the failover.
	lag bool
}

type failoverResult struct {
	held          lock.Lease // the lease granted on the old primary
	onReplica     bool       // the promoted replica had the lock key
	newOK         bool       // a new client could take the key on the new primary
	newFence      uint64     // the fence it got
	refreshErr    error      // the old holder's first Refresh after the failover
	oldFenceAfter string     // the fence counter on the new primary before the new acquire
}

// TestFailover_replicaPromoted measures what a lock and its fence become
// when the replica is promoted with REPLICAOF NO ONE, with Redis's
// asynchronous replication and no acknowledgement from the replica:
//
//   - replicaCaughtUp: the replica had applied the acquire before the
//     promotion. Asserted (guaranteed: the data is on the new primary): the
//     lock survives (a new client cannot take it, the old holder can
//     refresh it) and the next fence is larger than the old holder's.
//   - replicaLagging: the acquire had not reached the replica. Asserted:
//     the promoted replica does not have the lock, the old holder's next
//     Refresh reports lock.ErrNotHeld (so lock.Run cancels its function),
//     and its Release does not free the new holder. Measured and logged:
//     a new client takes the lock at once (two holders until the old one
//     refreshes), and the new fence is not larger than the old holder's
//     (it repeats it): fencing does not protect storage across such a
//     failover.
func TestFailover_replicaPromoted(t *testing.T) {
	cases := []failoverCase{
		{name: "replicaCaughtUp"},
		{name: "replicaLagging", lag: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := startPair(t)
			r := runFailover(t, p, tc)
			t.Logf("%s: lock on promoted replica=%v, new client acquired=%v with fence %d "+
				"(old holder's fence %d, counter on new primary was %q), old holder's Refresh: %v",
				tc.name, r.onReplica, r.newOK, r.newFence, r.held.Fence(), r.oldFenceAfter, r.refreshErr)
			switch {
			case !tc.lag:
				if !r.onReplica || r.newOK {
					t.Errorf("caught-up replica: lock on replica=%v, new client acquired=%v; "+
						"want the lock kept", r.onReplica, r.newOK)
				}
				if r.refreshErr != nil {
					t.Errorf("old holder's Refresh on the promoted replica = %v, want nil", r.refreshErr)
				}
				if r.newFence <= r.held.Fence() {
					t.Errorf("fence after the old lease's release = %d, want > %d", r.newFence, r.held.Fence())
				}
			default:
				if r.onReplica {
					t.Fatal("setup: the lagging replica had the lock key before promotion; " +
						"replication was not held back")
				}
				if !errors.Is(r.refreshErr, lock.ErrNotHeld) {
					t.Errorf("old holder's Refresh after failover = %v, want ErrNotHeld", r.refreshErr)
				}
				if !r.newOK {
					t.Errorf("new client could not take the forgotten lock")
				}
				if r.newOK && r.newFence > r.held.Fence() {
					t.Logf("note: the fence still grew (%d > %d)", r.newFence, r.held.Fence())
				} else if r.newOK {
					t.Logf("MEASURED: two holders of %q with fences %d (old primary) and %d "+
						"(promoted replica): fencing does not survive an unacknowledged failover",
						"k", r.held.Fence(), r.newFence)
				}
			}
		})
	}
}

// runFailover takes "k" once and releases it (so the fence counter exists
// on both nodes), takes it again (with replication held back if tc.lag),
// fails over, and reports what the new primary knows.
func runFailover(t *testing.T, p *pair, tc failoverCase) failoverResult {
	t.Helper()
	c := ctxT(t)
	const ttl = time.Minute
	old := newManager(t, p.front.Listen, tc.opts)
	lockKey := lockredis.LockKey(lockredis.DefaultPrefix, "k")

	first := take(t, old, "k", ttl)
	if err := first.Release(c); err != nil {
		t.Fatal(err)
	}
	p.waitReplicated(t, lockKey+":fence", "1")

	if tc.lag {
		addToxic(t, p.link, `{"type":"latency","stream":"downstream","attributes":{"latency":10000}}`)
	}
	var r failoverResult
	r.held = take(t, old, "k", ttl)
	if !tc.lag {
		p.waitReplicated(t, lockKey, string(r.held.Token()))
	} else {
		time.Sleep(100 * time.Millisecond) // would be plenty without the toxic
	}
	r.onReplica = p.replica.Cli(t, "GET", lockKey) == string(r.held.Token())
	p.failover(t)

	r.refreshErr = retry(func() error { return r.held.Refresh(c, ttl) })
	r.oldFenceAfter = p.replica.Cli(t, "GET", lockKey+":fence")

	// A new client goes straight to the promoted replica.
	fresh := newManager(t, p.replica.Addr, lockredis.Options{})
	l, ok, err := fresh.TryAcquire(c, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	r.newOK = ok
	if ok {
		r.newFence = l.Fence()
		// The old lease's Release must not free the new holder.
		if err := r.held.Release(c); err != nil {
			t.Fatalf("old holder's Release after failover: %v", err)
		}
		ins, err := gen.Inspect(c, fresh.Client(), lockKey)
		if err != nil || ins.Token != string(l.Token()) {
			t.Errorf("after the old holder's Release the key holds %+v, %v; "+
				"want the new holder's token", ins, err)
		}
		return r
	}
	// The lock survived: the old holder releases it, and the next
	// acquisition gets a larger fence.
	if err := r.held.Release(c); err != nil {
		t.Fatalf("old holder's Release after failover: %v", err)
	}
	l = take(t, fresh, "k", ttl)
	r.newFence = l.Fence()
	return r
}

// TestFailover_primaryKilledRightAfterAcquire kills the primary (SIGKILL)
// the moment the acquire returns and promotes the replica. Whether the lock
// survives depends on whether the replication stream left the primary
// before it died, which nothing in asynchronous replication guarantees; the
// test only logs what happened. What is asserted is what holds either way:
// the old holder's Refresh on the new primary either succeeds (the lock
// survived) or reports ErrNotHeld, never anything else, and a new client
// either gets the lock or sees it held.
func TestFailover_primaryKilledRightAfterAcquire(t *testing.T) {
	p := startPair(t)
	c := ctxT(t)
	old := newManager(t, p.front.Listen, lockredis.Options{})
	held := take(t, old, "k", time.Minute)
	p.primary.Kill()
	p.failover(t)
	err := retry(func() error { return held.Refresh(c, time.Minute) })
	if err != nil && !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("old holder's Refresh after failover = %v, want nil or ErrNotHeld", err)
	}
	fresh := newManager(t, p.replica.Addr, lockredis.Options{})
	_, ok, err2 := fresh.TryAcquire(c, "k", time.Minute)
	if err2 != nil {
		t.Fatal(err2)
	}
	if (err == nil) == ok {
		t.Errorf("old holder's Refresh = %v but a new client acquired=%v; "+
			"want exactly one holder on the new primary", err, ok)
	}
	t.Logf("MEASURED: primary killed right after the acquire: lock survived=%v "+
		"(old holder's Refresh: %v)", err == nil, err)
}

// TestRestart_withoutPersistence_resetsFences documents what a restart of a
// redis-server without persistence (the default in these tests, and common
// for caches) does: every lease is gone, the holder's next Refresh reports
// lock.ErrNotHeld, and the fence counter starts again from 1, so storage
// that remembered fence 2 rejects the next holders until the counter passes
// it. Fences only grow while Redis keeps its data.
func TestRestart_withoutPersistence_resetsFences(t *testing.T) {
	s := redistest.Start(t)
	c := ctxT(t)
	m := newManager(t, s.Addr, lockredis.Options{})
	l1 := take(t, m, "k", time.Minute)
	if err := l1.Release(c); err != nil {
		t.Fatal(err)
	}
	l2 := take(t, m, "k", time.Minute)
	if l2.Fence() != 2 {
		t.Fatalf("second fence = %d, want 2", l2.Fence())
	}
	s.Restart(t)
	err := retry(func() error { return l2.Refresh(c, time.Minute) })
	if !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Refresh after a restart without persistence = %v, want ErrNotHeld", err)
	}
	var l3 lock.Lease
	if err := retry(func() error {
		var ok bool
		var err error
		l3, ok, err = m.TryAcquire(c, "k", time.Minute)
		if err == nil && !ok {
			err = errors.New("held")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if l3.Fence() != 1 {
		t.Fatalf("fence after a restart without persistence = %d, "+
			"want 1 (the counter was lost)", l3.Fence())
	}
}

// TestRestart_withAOF_keepsLeasesAndFences: with appendonly yes and
// appendfsync always, a restart keeps leases (with their absolute expiry)
// and fence counters: the holder can refresh, others still see the key
// held, and the next fence is larger.
func TestRestart_withAOF_keepsLeasesAndFences(t *testing.T) {
	s := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	c := ctxT(t)
	m := newManager(t, s.Addr, lockredis.Options{})
	other := newManager(t, s.Addr,
		lockredis.Options{ClientOption: rueidis.ClientOption{DisableCache: true}})
	l := take(t, m, "k", time.Minute)
	s.Restart(t)
	if err := retry(func() error { return l.Refresh(c, time.Minute) }); err != nil {
		t.Fatalf("Refresh after a restart with AOF = %v, want nil", err)
	}
	var ok bool
	if err := retry(func() error {
		var err error
		_, ok, err = other.TryAcquire(c, "k", time.Minute)
		return err
	}); err != nil || ok {
		t.Fatalf("another client's TryAcquire after the restart = %v, %v; "+
			"want the key still held", ok, err)
	}
	if err := l.Release(c); err != nil {
		t.Fatal(err)
	}
	n := take(t, other, "k", time.Minute)
	if n.Fence() <= l.Fence() {
		t.Fatalf("fence after restart = %d, want > %d", n.Fence(), l.Fence())
	}
}
