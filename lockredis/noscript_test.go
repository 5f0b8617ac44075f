package lockredis_test

import (
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
)

// TestScriptFlush_everyCallPathRecovers flushes the server's script cache
// before each call path of lockredis, so each first meets NOSCRIPT, which
// gen handles: the single calls (acquire, refresh, release), the batch of
// a script and WAIT (acquire and refresh with WaitReplicas), and the
// release that hands the key to a waiter in line.
func TestScriptFlush_everyCallPathRecovers(t *testing.T) {
	t.Run("single calls", func(t *testing.T) {
		s := redistest.Start(t)
		m := newManager(t, []string{s.Addr}, lockredis.Options{})
		s.Cli(t, "SCRIPT", "FLUSH")
		l, err := m.Acquire(ctxT(t), "single", time.Minute)
		if err != nil {
			t.Fatalf("Acquire after SCRIPT FLUSH = %v", err)
		}
		s.Cli(t, "SCRIPT", "FLUSH")
		if err := l.Refresh(ctxT(t), time.Hour); err != nil {
			t.Fatalf("Refresh after SCRIPT FLUSH = %v", err)
		}
		s.Cli(t, "SCRIPT", "FLUSH")
		if err := l.Release(ctxT(t)); err != nil {
			t.Fatalf("Release after SCRIPT FLUSH = %v", err)
		}
		if got := s.Cli(t, "EXISTS", lockredis.LockKey(lockredis.DefaultPrefix, "single")); got != "0" {
			t.Fatalf("lock key after Release: EXISTS = %s", got)
		}
	})
	t.Run("batched with WAIT", func(t *testing.T) {
		primary, replica := startPair(t)
		m := newManager(t, []string{primary.Addr},
			lockredis.Options{WaitReplicas: 1, WaitTimeout: 5 * time.Second})
		lk := lockredis.LockKey(lockredis.DefaultPrefix, "batched")
		primary.Cli(t, "SCRIPT", "FLUSH")
		l, ok, err := m.TryAcquire(ctxT(t), "batched", time.Minute)
		if err != nil || !ok {
			t.Fatalf("TryAcquire with WaitReplicas after SCRIPT FLUSH = %v, %v", ok, err)
		}
		if got := replica.Cli(t, "GET", lk); got != string(l.Token()) {
			t.Fatalf("replica GET right after TryAcquire = %q, want %q", got, l.Token())
		}
		primary.Cli(t, "SCRIPT", "FLUSH")
		if err := l.Refresh(ctxT(t), time.Hour); err != nil {
			t.Fatalf("Refresh with WaitReplicas after SCRIPT FLUSH = %v", err)
		}
		if got := replica.Cli(t, "PTTL", lk); len(got) < 7 { // an hour is 3600000 ms
			t.Fatalf("replica PTTL right after Refresh(1h) = %s", got)
		}
	})
	t.Run("release hands the key to a waiter", func(t *testing.T) {
		s := redistest.Start(t)
		m1 := newManager(t, []string{s.Addr}, lockredis.Options{})
		m2 := newManager(t, []string{s.Addr}, lockredis.Options{})
		l1, err := m1.Acquire(ctxT(t), "handoff", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan lock.Lease, 1)
		errc := make(chan error, 1)
		go func() {
			l, err := m2.Acquire(ctxT(t), "handoff", time.Minute)
			if err != nil {
				errc <- err
				return
			}
			got <- l
		}()
		line := lockredis.LockKey(lockredis.DefaultPrefix, "handoff") + ":line"
		for deadline := time.Now().Add(10 * time.Second); s.Cli(t, "EXISTS", line) != "1"; {
			if time.Now().After(deadline) {
				t.Fatal("the waiter never joined the line")
			}
			time.Sleep(5 * time.Millisecond)
		}
		s.Cli(t, "SCRIPT", "FLUSH")
		if err := l1.Release(ctxT(t)); err != nil {
			t.Fatalf("Release after SCRIPT FLUSH = %v", err)
		}
		select {
		case l2 := <-got:
			if l2.Fence() != l1.Fence()+1 {
				t.Fatalf("waiter's fence = %d, want %d", l2.Fence(), l1.Fence()+1)
			}
		case err := <-errc:
			t.Fatalf("waiter's Acquire = %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("the waiter did not get the key")
		}
	})
}
