package lockredis_test

import (
	"errors"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
)

// startPair starts a primary and a replica of it (real redis-server
// processes) and waits until the primary counts the replica as online, so
// that WAIT can count its acknowledgements.
func startPair(t *testing.T) (primary, replica *redistest.Server) {
	t.Helper()
	// No diskless-sync delay: the replica's first sync starts at once
	// instead of after the default 5s.
	primary = redistest.Start(t, "--repl-diskless-sync-delay", "0")
	replica = redistest.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(primary.Port()))
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := replica.Cli(t, "INFO", "replication")
		p := primary.Cli(t, "INFO", "replication")
		if strings.Contains(r, "master_link_status:up") && strings.Contains(p, "state=online") {
			return primary, replica
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica never came up:\nreplica: %s\nprimary: %s", r, p)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pause stops the server's process with SIGSTOP, as a replica that hangs
// (GC pause, swapped out, network stalled) would: the primary still counts
// it as connected, but it acknowledges nothing. The returned func resumes
// it; it is also called in t.Cleanup, before the server is closed.
func pause(t *testing.T, s *redistest.Server) (resume func()) {
	t.Helper()
	pid := s.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %d: %v", pid, err)
	}
	resumed := false
	resume = func() {
		if !resumed {
			resumed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	return resume
}

// TestFailover_WaitReplicas_lockSurvivesPromotion: with WaitReplicas=1 the
// lock and its fence are on the replica as soon as Acquire returns (read on
// the replica without any sleep), so after the primary dies and the replica
// is promoted, a Manager on it sees the key held and hands out a greater
// fence only after the lease's expiry.
func TestFailover_WaitReplicas_lockSurvivesPromotion(t *testing.T) {
	primary, replica := startPair(t)
	m := waitManager(t, primary.Addr, 1, 5*time.Second)
	const key, ttl = "promoted", 2 * time.Second
	l, err := m.Acquire(ctxT(t), key, ttl)
	if err != nil {
		t.Fatalf("Acquire with WaitReplicas=1 = %v", err)
	}
	lk := lockredis.LockKey(lockredis.DefaultPrefix, key)
	if got := replica.Cli(t, "GET", lk); got != string(l.Token()) {
		t.Fatalf("replica GET %s right after Acquire = %q, want the lease's token %q", lk, got, l.Token())
	}
	if got := replica.Cli(t, "GET", lk+":fence"); got != strconv.FormatUint(l.Fence(), 10) {
		t.Fatalf("replica GET fence right after Acquire = %q, want %d", got, l.Fence())
	}

	primary.Kill()
	if got := replica.Cli(t, "REPLICAOF", "NO", "ONE"); got != "OK" {
		t.Fatalf("REPLICAOF NO ONE = %q", got)
	}
	m2 := newManager(t, []string{replica.Addr}, lockredis.Options{})
	if l2, ok, err := m2.TryAcquire(ctxT(t), key, ttl); err != nil || ok {
		t.Fatalf("TryAcquire on the promoted replica = %v, %v, %v; "+
			"want held by the first lease", l2, ok, err)
	}
	l2, err := m2.Acquire(ctxT(t), key, ttl) // waits for the first lease's expiry
	if err != nil {
		t.Fatalf("Acquire on the promoted replica = %v", err)
	}
	if l2.Fence() <= l.Fence() {
		t.Fatalf("fence after promotion = %d, want > %d (the fence before the failover)",
			l2.Fence(), l.Fence())
	}
}

// TestFailover_WaitReplicas_notAcknowledged: when the only replica cannot
// acknowledge (its process is stopped) or fewer replicas exist than asked
// for, TryAcquire and Acquire return ErrNotReplicated after about
// WaitTimeout, and the lock they briefly took is not left held.
func TestFailover_WaitReplicas_notAcknowledged(t *testing.T) {
	primary, replica := startPair(t)
	const waitTimeout = 100 * time.Millisecond
	lk := func(key string) string { return lockredis.LockKey(lockredis.DefaultPrefix, key) }

	check := func(t *testing.T, m *lockredis.Manager, key, want string) {
		t.Helper()
		start := time.Now()
		_, ok, err := m.TryAcquire(ctxT(t), key, time.Minute)
		took := time.Since(start)
		if !errors.Is(err, lockredis.ErrNotReplicated) || ok {
			t.Fatalf("TryAcquire = %v, %v; want ErrNotReplicated", ok, err)
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not carry the counts %q", err, want)
		}
		t.Logf("TryAcquire took %v: %v", took, err)
		// WAIT itself returns at WaitTimeout; the upper bound only catches
		// a hang, not slowness.
		if took < waitTimeout || took > 10*time.Second {
			t.Errorf("TryAcquire took %v, want about WaitTimeout %v", took, waitTimeout)
		}
		if got := primary.Cli(t, "EXISTS", lk(key)); got != "0" {
			t.Fatalf("EXISTS %s on the primary after ErrNotReplicated = %s, want 0 (released)", lk(key), got)
		}
		if _, err := m.Acquire(ctxT(t), key, time.Minute); !errors.Is(err, lockredis.ErrNotReplicated) {
			t.Fatalf("Acquire = %v; want ErrNotReplicated", err)
		}
		if got := primary.Cli(t, "EXISTS", lk(key)); got != "0" {
			t.Fatalf("EXISTS %s on the primary after Acquire's ErrNotReplicated = %s, want 0", lk(key), got)
		}
	}

	t.Run("more replicas asked than exist", func(t *testing.T) {
		m := waitManager(t, primary.Addr, 2, waitTimeout)
		// How many of the one replica's acks arrived in time varies.
		check(t, m, "two", " of 2 replicas acknowledged within 100ms")
	})
	t.Run("replica stopped", func(t *testing.T) {
		m := waitManager(t, primary.Addr, 1, waitTimeout)
		resume := pause(t, replica)
		check(t, m, "stopped", "0 of 1 replicas acknowledged within 100ms")
		resume()
		// Once the replica acknowledges again the same Manager succeeds
		// (a generous WaitTimeout is not needed: the replica catches up).
		m2 := waitManager(t, primary.Addr, 1, 5*time.Second)
		l, ok, err := m2.TryAcquire(ctxT(t), "stopped", time.Minute)
		if err != nil || !ok {
			t.Fatalf("TryAcquire after the replica resumed = %v, %v", ok, err)
		}
		if got := replica.Cli(t, "GET", lk("stopped")); got != string(l.Token()) {
			t.Fatalf("replica GET after acknowledged TryAcquire = %q, want %q", got, l.Token())
		}
	})
}

// TestRefresh_WaitReplicas: an acknowledged Refresh is on the replica when
// it returns; one the replica cannot acknowledge returns ErrNotReplicated
// and leaves the lease held and extended on the primary.
func TestRefresh_WaitReplicas(t *testing.T) {
	primary, replica := startPair(t)
	m := waitManager(t, primary.Addr, 1, 2*time.Second)
	const key = "refresh"
	lk := lockredis.LockKey(lockredis.DefaultPrefix, key)
	l, err := m.Acquire(ctxT(t), key, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	pttl := func(s *redistest.Server) int64 {
		t.Helper()
		n, err := strconv.ParseInt(s.Cli(t, "PTTL", lk), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if err := l.Refresh(ctxT(t), time.Minute); err != nil {
		t.Fatalf("Refresh with WaitReplicas=1 = %v", err)
	}
	if got := pttl(replica); got <= 5000 {
		t.Fatalf("replica PTTL right after Refresh(1m) = %dms, want > 5000 (the refresh replicated)", got)
	}

	resume := pause(t, replica)
	err = l.Refresh(ctxT(t), time.Hour)
	if !errors.Is(err, lockredis.ErrNotReplicated) || errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Refresh with the replica stopped = %v; want ErrNotReplicated, not ErrNotHeld", err)
	}
	if got := pttl(primary); got <= int64(time.Minute/time.Millisecond) {
		t.Fatalf("primary PTTL after unacknowledged Refresh(1h) = %dms, "+
			"want > 60000 (extended, left as is)", got)
	}
	if got := primary.Cli(t, "GET", lk); got != string(l.Token()) {
		t.Fatalf("primary GET after unacknowledged Refresh = %q, want the lease's token", got)
	}
	resume()
	if err := l.Refresh(ctxT(t), time.Hour); err != nil {
		t.Fatalf("Refresh after the replica resumed = %v", err)
	}
	if got := pttl(replica); got <= int64(time.Minute/time.Millisecond) {
		t.Fatalf("replica PTTL after acknowledged Refresh(1h) = %dms, want > 60000", got)
	}
	if err := l.Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// TestNew_WaitOptionsValidated: negative WaitReplicas or WaitTimeout is
// lock.ErrInvalidOptions, before any connection is made.
func TestNew_WaitOptionsValidated(t *testing.T) {
	for _, o := range []lockredis.Options{
		{WaitReplicas: -1}, {WaitReplicas: 1, WaitTimeout: -time.Millisecond},
	} {
		o.ClientOption.InitAddress = []string{"127.0.0.1:1"}
		if m, err := lockredis.New(o); !errors.Is(err, lock.ErrInvalidOptions) {
			if m != nil {
				m.Close()
			}
			t.Errorf("New(WaitReplicas %d, WaitTimeout %v) = %v; want ErrInvalidOptions",
				o.WaitReplicas, o.WaitTimeout, err)
		}
	}
}

// waitManager returns a Manager on addr whose writes wait, for up to
// timeout, until replicas replicas have acknowledged them.
func waitManager(
	t *testing.T, addr string, replicas int, timeout time.Duration,
) *lockredis.Manager {
	t.Helper()
	opts := lockredis.Options{WaitReplicas: replicas, WaitTimeout: timeout}
	return newManager(t, []string{addr}, opts)
}
