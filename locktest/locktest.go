// Package locktest is the conformance suite for lock.Manager backends, in
// the spirit of golang.org/x/net/nettest: a backend describes how to make
// managers and how to move its time forward, and Run checks every rule of
// package lock against it, each case as its own subtest.
//
//	func TestConformance(t *testing.T) {
//		locktest.Run(t, locktest.Backend{
//			New:     func(t *testing.T) lock.Manager { ... },
//			Advance: func(t *testing.T, m lock.Manager, d time.Duration) { ... },
//			...
//		})
//	}
//
// Every case uses keys of its own (the subtest's name and a random suffix),
// so the suite can share one Redis with other tests. Cases move time only
// through Backend.Advance, by at most a few Backend.Unit each, and their
// "promptly" bounds are generous (seconds): they check correctness, not
// speed, and must not flake on a loaded machine.
package locktest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/klauthed/lock"
)

// Backend tells Run how to drive one lock backend.
type Backend struct {
	// New returns a fresh Manager. The backend registers its Close in
	// t.Cleanup. Required.
	New func(t *testing.T) lock.Manager

	// Peer returns another Manager on the same store as m, as a second
	// process would have it (lockredis: its own connection); lockmem returns
	// m itself. The backend closes it in t.Cleanup. Nil means m itself.
	Peer func(t *testing.T, m lock.Manager) lock.Manager

	// Advance moves the backend's time forward by d: a fake clock's Advance
	// (lockmem), miniredis FastForward, time.Sleep for a real Redis. When it
	// returns, leases whose TTL ended within d must be over. Required.
	Advance func(t *testing.T, m lock.Manager, d time.Duration)

	// Close closes a Manager made by New; used by the closed-manager cases.
	// Closing twice must be harmless. Required.
	Close func(m lock.Manager) error

	// Nil is a typed nil Manager, e.g. (*lockmem.Manager)(nil); its calls
	// must return lock.ErrClosed. Required.
	Nil lock.Manager

	// MaxTTL is the longest TTL the backend accepts. Zero means lock.MaxTTL.
	MaxTTL time.Duration

	// Slow says each call takes milliseconds (a database, or a test server
	// running in the test binary under -race): cases that make hundreds of
	// calls make a fifth as many, so they finish within their deadlines.
	Slow bool

	// Unit is a TTL short enough to test expiry quickly yet long enough to be
	// reliable: lockmem 1s (on a fake clock), a real Redis about 100ms.
	// Leases meant to expire get TTL Unit; leases that must not expire during
	// a case get at least 20 Units. Required.
	Unit time.Duration
}

// prompt bounds how long a case waits for something that should happen at
// once (a waiter woken by a release). It is a correctness bound, not a
// performance one.
const prompt = 2 * time.Second

// Run runs every conformance case against b, each as a subtest of t with a
// fresh Manager from b.New and keys of its own. It fails t at once if b
// lacks a required field.
func Run(t *testing.T, b Backend) {
	t.Helper()
	switch {
	case b.New == nil:
		t.Fatal("locktest: Backend.New is nil")
	case b.Advance == nil:
		t.Fatal("locktest: Backend.Advance is nil")
	case b.Close == nil:
		t.Fatal("locktest: Backend.Close is nil")
	case b.Nil == nil:
		t.Fatal("locktest: Backend.Nil is nil")
	case b.Unit <= 0:
		t.Fatal("locktest: Backend.Unit must be positive")
	}
	if b.MaxTTL == 0 {
		b.MaxTTL = lock.MaxTTL
	}
	if b.Peer == nil {
		b.Peer = func(_ *testing.T, m lock.Manager) lock.Manager { return m }
	}
	s := &suite{b: b}
	for _, c := range s.cases() {
		t.Run(c.name, c.fn)
	}
}

type suite struct{ b Backend }

type tcase struct {
	name string
	fn   func(t *testing.T)
}

func (s *suite) cases() []tcase {
	return []tcase{
		{"MutualExclusion/TryAcquire", s.testExclusionTryAcquire},
		{"MutualExclusion/Goroutines", s.testExclusionGoroutines},
		{"Fence/IncreasesAcrossRelease", s.testFenceAcrossRelease},
		{"Fence/IncreasesAcrossExpiry", s.testFenceAcrossExpiry},
		{"Fence/IncreasesAcrossPeers", s.testFenceAcrossPeers},
		{"Lease/KeyAndToken", s.testKeyAndToken},
		{"Expiry/KeyFreeAfterTTL", s.testExpiry},
		{"Refresh/Extends", s.testRefreshExtends},
		{"Refresh/AfterExpiry", s.testRefreshAfterExpiry},
		{"Refresh/AfterAnotherTook", s.testRefreshAfterAnotherTook},
		{"Refresh/BadTTL", s.testRefreshBadTTL},
		{"StaleHolder/ReleaseDoesNotFreeNext", s.testStaleRelease},
		{"StaleHolder/RefreshDoesNotExtendNext", s.testStaleRefresh},
		{"Wait/WakesOnRelease", s.testWakeOnRelease},
		{"Wait/WakesOnPeerRelease", s.testWakeOnPeerRelease},
		{"Wait/WakesOnExpiry", s.testWakeOnExpiry},
		{"Fairness/FIFOAcrossManagers", s.testFIFOAcrossManagers},
		{"Fairness/NoStarvation", s.testNoStarvation},
		{"Fairness/TryAcquireDoesNotJumpTheLine", s.testTryAcquireNoJump},
		{"Context/DeadlineExceeded", s.testContextDeadline},
		{"Context/Canceled", s.testContextCanceled},
		{"Context/AlreadyDone", s.testContextAlreadyDone},
		{"Release/Twice", s.testReleaseTwice},
		{"Release/AfterExpiry", s.testReleaseAfterExpiry},
		{"BadInput/Key", s.testBadKey},
		{"BadInput/TTL", s.testBadTTL},
		{"BadInput/TTLLimits", s.testTTLLimits},
		{"BadInput/NilManager", s.testNilManager},
		{"BadInput/NilContext", s.testNilContext},
		{"BadInput/NilLease", s.testNilLease},
		{"BadInput/ClosedManager", s.testClosedManager},
		{"BadInput/CloseWakesWaiters", s.testCloseWakesWaiters},
		{"OddKeys", s.testOddKeys},
		{"Run/HoldsAndReleases", s.testRunHolds},
		{"Run/ReturnsFnError", s.testRunFnError},
		{"Run/CancelsWhenLost", s.testRunCancelsWhenLost},
	}
}

// key returns a key no other case or run uses: the test's name and 64
// random bits.
func key(t *testing.T) string {
	t.Helper()
	var b [8]byte
	rand.Read(b[:])
	return t.Name() + "#" + hex.EncodeToString(b[:])
}

// long is a TTL that does not run out during a case.
func (s *suite) long() time.Duration { return min(60*s.b.Unit, s.b.MaxTTL) }

// expire advances the backend's time just past one Unit, so a lease taken
// with TTL Unit before the call has expired when it returns.
func (s *suite) expire(t *testing.T, m lock.Manager) {
	t.Helper()
	s.b.Advance(t, m, s.b.Unit+s.b.Unit/10)
}

// ctx returns a context for one call that ends with the test.
func ctx(t *testing.T) context.Context {
	t.Helper()
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// mustTake takes key on m with TryAcquire and fails t if it cannot.
func mustTake(t *testing.T, m lock.Manager, key string, ttl time.Duration) lock.Lease {
	t.Helper()
	l, ok, err := m.TryAcquire(ctx(t), key, ttl)
	if err != nil || !ok || l == nil {
		t.Fatalf("TryAcquire(%q, %v) = %v, %v, %v; want a lease", key, ttl, l, ok, err)
	}
	if l.Key() != key {
		t.Fatalf("lease.Key() = %q, want %q", l.Key(), key)
	}
	return l
}

// mustBeHeld fails t unless a TryAcquire of key on m finds it held.
func mustBeHeld(t *testing.T, m lock.Manager, key string) {
	t.Helper()
	l, ok, err := m.TryAcquire(ctx(t), key, time.Second)
	if err != nil || ok || l != nil {
		if ok && l != nil {
			release(t, l)
		}
		t.Fatalf("TryAcquire(%q) on a held key = %v, %v, %v; want nil, false, nil", key, l, ok, err)
	}
}

// mustBeFree fails t unless key can be taken on m; it releases what it took.
func mustBeFree(t *testing.T, m lock.Manager, key string) {
	t.Helper()
	release(t, mustTake(t, m, key, time.Second))
}

// mustBeFreeSoon fails t unless key can be taken on m within prompt. It is
// for keys whose last user gave up waiting: a backend may clean up after an
// Acquire that returned at its context's end in the background, so a key
// handed to that caller meanwhile is free again only a moment later.
func mustBeFreeSoon(t *testing.T, m lock.Manager, key string) {
	t.Helper()
	deadline := time.Now().Add(prompt)
	for {
		l, ok, err := m.TryAcquire(ctx(t), key, time.Second)
		if err != nil {
			t.Fatalf("TryAcquire(%q) = %v", key, err)
		}
		if ok {
			release(t, l)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("key %q still held %v after its last waiter gave up", key, prompt)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// release releases l and fails t on an error.
func release(t *testing.T, l lock.Lease) {
	t.Helper()
	if err := l.Release(ctx(t)); err != nil {
		t.Fatalf("Release(%q) = %v, want nil", l.Key(), err)
	}
}

// result is what an Acquire in a goroutine returned.
type result struct {
	lease lock.Lease
	err   error
}

// acquireAsync starts m.Acquire(ctx, key, ttl) in a goroutine and returns
// the channel its result arrives on. The goroutine has ended when the test
// (and its cleanups) end, and a lease it got is released then.
func acquireAsync(
	t *testing.T, c context.Context, m lock.Manager, key string, ttl time.Duration,
) <-chan result {
	t.Helper()
	c, cancel := context.WithCancel(c)
	ch := make(chan result, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l, err := m.Acquire(c, key, ttl)
		ch <- result{l, err}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return ch
}

// await waits up to prompt for an Acquire result and fails t if none comes.
func await(t *testing.T, ch <-chan result, what string) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(prompt):
		t.Fatalf("%s: Acquire did not return within %v", what, prompt)
		return result{}
	}
}

// settle gives a goroutine that was just started a moment to block in
// Acquire. Nothing depends on it for correctness: an Acquire that starts
// late finds the key free and must succeed all the same.
func settle() { time.Sleep(20 * time.Millisecond) }

func isErr(err, target error) bool { return errors.Is(err, target) }

// fenceAfter fails t unless next > prev.
func fenceAfter(t *testing.T, prev, next uint64, how string) {
	t.Helper()
	if next <= prev {
		t.Fatalf("fence %s = %d, want > %d", how, next, prev)
	}
}

// oddKeys are keys that trip naive key handling: Redis Cluster hash tags,
// multi-byte UTF-8, invalid UTF-8, NUL bytes, and length. Each pair differs
// only in the odd bytes and must name independent locks.
func oddKeyPairs(prefix string) [][2]string {
	long := strings.Repeat("k", 4096-len(prefix)-1)
	return [][2]string{
		{prefix + "{", prefix + "}"},
		{"{" + prefix, "}" + prefix},
		{prefix + "{a}b{c}", prefix + "{a}b{d}"},
		{"{a}b{c}" + prefix, "{a}c{c}" + prefix},
		{prefix + "{}", prefix + "{}{}"},
		{prefix + "ключ-🔒", prefix + "ключ-🔓"},
		{prefix + "\xff\xfe", prefix + "\xff\xff"},
		{prefix + "a\x00b", prefix + "a\x00c"},
		{prefix + "a\x00", prefix + "a"},
		{prefix + long + "x", prefix + long + "y"},
	}
}
