package lockredis_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
)

// childWaiterEnv, when set to "addr key ttl lineTTL", makes the test binary
// a waiting process (see childWaiter) instead of running tests.
const childWaiterEnv = "LOCKREDIS_TEST_CHILD_WAITER"

// childWaiter is a separate process with its own Manager that waits for a
// key, prints "acquired FENCE" when it holds it, and then holds it until it
// is killed. It exits when its stdin closes (the test binary died).
func childWaiter() {
	f := strings.Fields(os.Getenv(childWaiterEnv))
	ttl, _ := time.ParseDuration(f[2])
	lineTTL, _ := time.ParseDuration(f[3])
	m, err := lockredis.New(lockredis.Options{
		ClientOption: clientOption(f[0]), LineTTL: lineTTL,
	})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		os.Exit(0)
	}()
	l, err := m.Acquire(context.Background(), f[1], ttl)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("acquired", l.Fence())
	select {}
}

// startChildWaiter starts a waiting process for key and returns it; it is
// killed in t.Cleanup.
func startChildWaiter(
	t *testing.T, addr, key string, ttl, lineTTL time.Duration,
) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		fmt.Sprintf("%s=%s %s %s %s", childWaiterEnv, addr, key, ttl, lineTTL))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	return cmd, bufio.NewScanner(out)
}

// lineOf returns the tokens in key's line, head first.
func lineOf(t *testing.T, s *redistest.Server, key string) []string {
	t.Helper()
	out := s.Cli(t, "ZRANGE", lockredis.LockKey(lockredis.DefaultPrefix, key)+":line", "0", "-1")
	if out == "" {
		return nil
	}
	return strings.Fields(out)
}

// waitLineLen waits until key's line has n entries.
func waitLineLen(t *testing.T, s *redistest.Server, key string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		line := lineOf(t, s, key)
		if len(line) == n {
			return line
		}
		if time.Now().After(deadline) {
			t.Fatalf("line of %q = %q, want %d entries", key, line, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitHeard waits until the line's head has a strict channel (scripts/
// README.md, "Tokens and channels"): its Manager was subscribed when it last
// kept its place, so a release skips it once nobody hears that channel.
func waitHeard(t *testing.T, s *redistest.Server, key string) {
	t.Helper()
	args := lockredis.LockKey(lockredis.DefaultPrefix, key) + ":line:args"
	deadline := time.Now().Add(5 * time.Second)
	for {
		line := lineOf(t, s, key)
		if len(line) > 0 && strings.HasSuffix(s.Cli(t, "HGET", args, line[0]), "!") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the head of %q never registered a strict channel", key)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// heldAt starts an Acquire of key on m and delivers when it returned the
// lease (which it then releases); a failed Acquire delivers nothing.
func heldAt(ctx context.Context, m *lockredis.Manager, key string) <-chan time.Time {
	got := make(chan time.Time, 1)
	go func() {
		l, err := m.Acquire(ctx, key, time.Minute)
		if err == nil {
			got <- time.Now()
			_ = l.Release(context.Background())
		}
	}()
	return got
}

// TestLine_killedHeadOfLine: a waiting process at the head of the line is
// killed (SIGKILL) while another holds the key. Its connections close with
// it, so nobody hears its strict channel, and the holder's release hands
// the key straight to the next waiter (another process's Manager), not to
// the dead one, whose TTL (a minute) would otherwise keep the key.
func TestLine_killedHeadOfLine(t *testing.T) {
	s := redistest.Start(t)
	const deadTTL = time.Minute
	a := newManager(t, []string{s.Addr}, lockredis.Options{})
	b := newManager(t, []string{s.Addr}, lockredis.Options{})
	c := ctxT(t)
	key := "line-kill"
	h := take(t, a, key, time.Minute)
	child, _ := startChildWaiter(t, s.Addr, key, deadTTL, lockredis.DefaultLineTTL)
	waitLineLen(t, s, key, 1)
	waitHeard(t, s, key)
	got := heldAt(c, b, key)
	waitLineLen(t, s, key, 2)
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	released := time.Now()
	if err := h.Release(c); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-got:
		t.Logf("next waiter held the key %v after the release (killed head's TTL %v)",
			at.Sub(released), deadTTL)
	case <-time.After(10 * time.Second):
		t.Fatalf("next waiter did not get the key within 10s of the release: "+
			"it went to the killed head (TTL %v)", deadTTL)
	}
}

// TestLine_headKilledAfterHandOff: the key is handed to a waiting process
// that is stopped (SIGSTOP: its connections stay open, so it hears), which
// is then killed (SIGKILL) before it could use it. The key is free again
// when the dead waiter's TTL ends, and the next waiter (another process's
// Manager) holds it within LineTTL/3 of that: the stated bound.
func TestLine_headKilledAfterHandOff(t *testing.T) {
	s := redistest.Start(t)
	const (
		deadTTL = 400 * time.Millisecond
		lineTTL = 600 * time.Millisecond
	)
	a := newManager(t, []string{s.Addr}, lockredis.Options{LineTTL: lineTTL})
	b := newManager(t, []string{s.Addr}, lockredis.Options{LineTTL: lineTTL})
	c := ctxT(t)
	key := "line-kill-handed"
	h := take(t, a, key, time.Minute)
	child, _ := startChildWaiter(t, s.Addr, key, deadTTL, lineTTL)
	childToken := waitLineLen(t, s, key, 1)[0]
	got := heldAt(c, b, key)
	waitLineLen(t, s, key, 2)
	if err := child.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	if err := h.Release(c); err != nil {
		t.Fatal(err)
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	holder := s.Cli(t, "GET", lockredis.LockKey(lockredis.DefaultPrefix, key))
	if holder != childToken {
		t.Fatalf("after the release the key holds %q, want the stopped head %q", holder, childToken)
	}
	bound := deadTTL + lineTTL/3 + 200*time.Millisecond
	select {
	case at := <-got:
		took := at.Sub(released)
		t.Logf("next waiter held the key %v after the release to the killed head (bound %v)", took, bound)
		if took > bound {
			t.Fatalf("next waiter got the key after %v, want <= %v", took, bound)
		}
	case <-time.After(bound + 2*time.Second):
		t.Fatalf("next waiter did not get the key within %v of the release", bound+2*time.Second)
	}
}

// TestLine_stoppedWaiterLeaves: a waiting process that is stopped (SIGSTOP)
// stops keeping its place; after LineTTL it is out of the line, and the
// holder's release goes straight to the next waiter. When it is continued,
// it joins again at the tail and gets the key after the others.
func TestLine_stoppedWaiterLeaves(t *testing.T) {
	s := redistest.Start(t)
	const lineTTL = 300 * time.Millisecond
	a := newManager(t, []string{s.Addr}, lockredis.Options{LineTTL: lineTTL})
	b := newManager(t, []string{s.Addr}, lockredis.Options{LineTTL: lineTTL})
	c := ctxT(t)
	key := "line-stop"
	h := take(t, a, key, time.Minute)
	child, out := startChildWaiter(t, s.Addr, key, time.Minute, lineTTL)
	first := waitLineLen(t, s, key, 1)
	got := make(chan lock.Lease, 1)
	go func() {
		l, err := b.Acquire(c, key, time.Minute)
		if err == nil {
			got <- l
		}
	}()
	waitLineLen(t, s, key, 2)
	if err := child.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	line := waitLineLen(t, s, key, 1)
	left := time.Since(stopped)
	if line[0] == first[0] {
		t.Fatalf("the stopped waiter %q is still in line %q", first[0], line)
	}
	t.Logf("stopped waiter left the line %v after SIGSTOP (LineTTL %v)", left, lineTTL)
	if left > lineTTL+lineTTL/3+200*time.Millisecond {
		t.Fatalf("stopped waiter left the line after %v, want <= LineTTL + LineTTL/3", left)
	}
	if err := h.Release(c); err != nil {
		t.Fatal(err)
	}
	var next lock.Lease
	select {
	case next = <-got:
	case <-time.After(2 * time.Second):
		t.Fatal("the waiter behind the stopped one did not get the key")
	}
	if err := child.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitLineLen(t, s, key, 1) // the continued waiter joined again
	if err := next.Release(c); err != nil {
		t.Fatal(err)
	}
	done := make(chan string, 1)
	go func() {
		if out.Scan() {
			done <- out.Text()
		}
	}()
	select {
	case line := <-done:
		if !strings.HasPrefix(line, "acquired ") {
			t.Fatalf("continued waiter printed %q", line)
		}
		if f, _ := strconv.ParseUint(strings.TrimPrefix(line, "acquired "), 10, 64); f <= next.Fence() {
			t.Fatalf("continued waiter's fence %d, want > %d", f, next.Fence())
		}
	case <-time.After(3 * time.Second):
		t.Fatal("continued waiter did not get the key after the release")
	}
}

// TestLine_cancelledAndClosedWaitersLeave: a waiter whose context ends, and
// one whose Manager is closed, are out of the line at once (not after
// LineTTL), and the line's key vanishes when it is empty.
func TestLine_cancelledAndClosedWaitersLeave(t *testing.T) {
	s := redistest.Start(t)
	a := newManager(t, []string{s.Addr}, lockredis.Options{LineTTL: time.Minute})
	b := newManager(t, []string{s.Addr}, lockredis.Options{LineTTL: time.Minute})
	closing, err := lockredis.New(lockredis.Options{
		ClientOption: clientOption(s.Addr), LineTTL: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	key := "line-leave"
	h := take(t, a, key, time.Minute)
	cctx, cancel := context.WithCancel(ctxT(t))
	errs := make(chan error, 2)
	go func() { _, err := b.Acquire(cctx, key, time.Minute); errs <- err }()
	waitLineLen(t, s, key, 1)
	go func() { _, err := closing.Acquire(ctxT(t), key, time.Minute); errs <- err }()
	waitLineLen(t, s, key, 2)
	cancel()
	waitLineLen(t, s, key, 1)
	if err := closing.Close(); err != nil {
		t.Fatal(err)
	}
	waitLineLen(t, s, key, 0)
	for range 2 {
		if err := <-errs; err == nil {
			t.Fatal("a waiter that gave up got the key")
		}
	}
	lk := lockredis.LockKey(lockredis.DefaultPrefix, key)
	if n := s.Cli(t, "EXISTS", lk+":line"); n != "0" {
		t.Fatalf("the line's key remains after it emptied")
	}
	// What remains until the places would have lapsed are the marks of the
	// two given-up tokens (so a late acquire with one cannot rejoin).
	if vals := strings.Fields(s.Cli(t, "HVALS", lk+":line:args")); len(vals) != 2 ||
		vals[0] != "gone" || vals[1] != "gone" {
		t.Fatalf("line args after both waiters gave up = %q, want two \"gone\" marks", vals)
	}
	if err := h.Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if n := s.Cli(t, "EXISTS", lk); n != "0" {
		t.Fatalf("key held after the last holder released with nobody in line")
	}
}

func clientOption(addr string) rueidis.ClientOption {
	return rueidis.ClientOption{InitAddress: []string{addr}}
}

// splitClient is a rueidis client whose dedicated connections (the
// Manager's subscription) go to another server than its commands (the
// scripts), as behind a proxy that keeps subscriptions away from the
// servers running the scripts.
type splitClient struct {
	rueidis.Client
	sub rueidis.Client
}

func (c splitClient) Dedicate() (rueidis.DedicatedClient, func()) { return c.sub.Dedicate() }

// TestLine_subscriptionTheScriptsCannotSee: a Manager whose subscription
// the scripts do not see (splitClient) would have its waiters skipped at
// every hand-off if it gave them its strict channel. It checks, finds
// nobody subscribed where the scripts run, and lets its waiters poll
// instead: they keep their place and are served in line order, ahead of a
// waiter that came later.
func TestLine_subscriptionTheScriptsCannotSee(t *testing.T) {
	scripts, elsewhere := redistest.Start(t), redistest.Start(t)
	newClient := func(addr string) rueidis.Client {
		c, err := rueidis.NewClient(rueidis.ClientOption{
			InitAddress: []string{addr}, DisableCache: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	split, err := lockredis.NewWithClient(
		splitClient{Client: newClient(scripts.Addr), sub: newClient(elsewhere.Addr)},
		lockredis.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { split.Close() })
	a := newManager(t, []string{scripts.Addr}, lockredis.Options{})
	b := newManager(t, []string{scripts.Addr}, lockredis.Options{})
	c := ctxT(t)
	key := "line-split"
	h := take(t, a, key, time.Minute)
	// The split Manager's subscription is up on the other server.
	deadline := time.Now().Add(5 * time.Second)
	for elsewhere.Cli(t, "PUBSUB", "CHANNELS", "*") == "" {
		if time.Now().After(deadline) {
			t.Fatal("the split Manager never subscribed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	first := heldAt(c, split, key)
	token := waitLineLen(t, scripts, key, 1)[0]
	second := heldAt(c, b, key)
	waitLineLen(t, scripts, key, 2)
	argsKey := lockredis.LockKey(lockredis.DefaultPrefix, key) + ":line:args"
	args := scripts.Cli(t, "HGET", argsKey, token)
	if strings.HasSuffix(args, "!") {
		t.Fatalf("the split Manager's waiter registered %q, a strict channel nobody hears", args)
	}
	if err := h.Release(c); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first:
	case <-second:
		t.Fatal("the later waiter got the key first: the split Manager's waiter was skipped")
	case <-time.After(10 * time.Second):
		t.Fatal("nobody got the key within 10s of the release")
	}
	select {
	case <-second:
	case <-time.After(10 * time.Second):
		t.Fatal("the second waiter did not get the key after the first")
	}
}
