package main

// End-to-end tests: TestMain builds the lockctl binary once; each test starts
// a real redis-server (internal/redistest, which fails, never skips, without
// one), takes locks with lockredis, runs the binary as a subprocess and
// compares its output, with tokens replaced by names and times by T.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/gen"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
	"go.uber.org/goleak"
)

// bin is the lockctl binary built by TestMain.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lockctl-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "lockctl")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build lockctl: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		// rueidis's cluster client closes connections to nodes dropped from
		// its slot map in a goroutine that sleeps 5s first, and schedules a
		// slot-map refresh when a connection closes in one that sleeps a
		// random delay first; neither watches Client.Close (as in
		// lockredis's TestMain) and both end on their own: not ours.
		err := goleak.Find(
			goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*clusterClient)._refresh.func2"),
			goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is one run of the binary.
type result struct {
	stdout, stderr string
	code           int
}

// env is a test's Redis and the URL lockctl reaches it at.
type env struct {
	s   *redistest.Server
	url string
}

func start(t *testing.T) env {
	t.Helper()
	s := redistest.Start(t)
	return env{s: s, url: "redis://" + s.Addr}
}

// runBin runs lockctl with args and stdin, REDIS_URL and REDISCLI_AUTH
// removed from its environment and extra ("K=V") added.
func runBin(t *testing.T, stdin string, extra []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REDIS_URL=") && !strings.HasPrefix(kv, "REDISCLI_AUTH=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, extra...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("lockctl %q: %v", args, err)
	}
	if strings.Contains(r.stderr, "goroutine ") || strings.Contains(r.stderr, "panic") {
		t.Fatalf("lockctl %q crashed:\n%s", args, r.stderr)
	}
	return r
}

// lockctl runs lockctl -u URL args with no input.
func (e env) lockctl(t *testing.T, args ...string) result {
	t.Helper()
	return runBin(t, "", nil, append([]string{"-u", e.url}, args...)...)
}

// manager returns a lockredis Manager on e, closed in t.Cleanup.
func (e env) manager(t *testing.T) *lockredis.Manager {
	t.Helper()
	m, err := lockredis.New(lockredis.Options{
		ClientOption: rueidis.ClientOption{InitAddress: []string{e.s.Addr}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// take acquires key on m for ttl or fails the test.
func take(t *testing.T, m *lockredis.Manager, key string, ttl time.Duration) lock.Lease {
	t.Helper()
	l, ok, err := m.TryAcquire(context.Background(), key, ttl)
	if err != nil || !ok {
		t.Fatalf("TryAcquire(%q) = %v, %v", key, ok, err)
	}
	return l
}

// bgWaiter is an Acquire in the background, in a Manager of its own (as a
// waiter in another process would be); done delivers its lease.
type bgWaiter struct {
	token string
	done  chan lock.Lease
}

// wait starts an Acquire of key and returns once it stands in key's line at
// place n (the line's length is n); the Acquire ends with the test.
func (e env) wait(t *testing.T, key string, ttl time.Duration, n int) *bgWaiter {
	t.Helper()
	m := e.manager(t)
	ctx, cancel := context.WithCancel(context.Background())
	w := &bgWaiter{done: make(chan lock.Lease, 1)}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if l, err := m.Acquire(ctx, key, ttl); err == nil {
			w.done <- l
		}
	}()
	t.Cleanup(func() { cancel(); <-stopped })
	line := lockredis.LockKey("klauthed:", key) + ":line"
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if got := e.s.Cli(t, "ZCARD", line); got == strconv.Itoa(n) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiter %d never joined the line of %q", n, key)
		}
	}
	w.token = strings.Fields(e.s.Cli(t, "ZRANGE", line, "-1", "-1"))[0]
	return w
}

// got waits for w's Acquire to return its lease.
func (w *bgWaiter) got(t *testing.T) lock.Lease {
	t.Helper()
	select {
	case l := <-w.done:
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("waiter did not get the key within 10s")
		return nil
	}
}

var (
	durRE   = regexp.MustCompile(`\b(ttl|place|ttl left) (-?[0-9][0-9.]*(ms|µs|ns|h|m|s))+`)
	clockRE = regexp.MustCompile(`(?m)^[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3} `)
)

// norm replaces tokens (whole and shortened) by their names, remaining
// times by T and watch's clock by nothing.
func norm(s string, names map[string]string) string {
	for tok, name := range names {
		s = strings.ReplaceAll(s, tok, "<"+name+">")
		s = strings.ReplaceAll(s, short(tok), "<"+name+">")
	}
	s = durRE.ReplaceAllString(s, "$1 T")
	return clockRE.ReplaceAllString(s, "")
}

func want(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s:\n--- got ---\n%s--- want ---\n%s", what, got, want)
	}
}

func wantCode(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
}

func TestInspect_heldWithLineAndFree(t *testing.T) {
	e := start(t)
	h := take(t, e.manager(t), "orders/42", time.Minute)
	w1 := e.wait(t, "orders/42", 30*time.Second, 1)
	w2 := e.wait(t, "orders/42", 20*time.Second, 2)
	names := map[string]string{string(h.Token()): "H", w1.token: "W1", w2.token: "W2"}

	r := e.lockctl(t, "inspect", "orders/42", "never/locked")
	wantCode(t, r, exitNotHeld)
	want(t, "inspect", norm(r.stdout, names), `orders/42  held by <H>  ttl T  fence 1
  line: 2 waiting
    1. <W1>  ttl T  place T
    2. <W2>  ttl T  place T
never/locked  free  fence 0
`)
	r = e.lockctl(t, "inspect", "orders/42")
	wantCode(t, r, exitOK)

	// --json after the key, -u from REDIS_URL.
	r = runBin(t, "", []string{"REDIS_URL=" + e.url}, "inspect", "orders/42", "--json")
	wantCode(t, r, exitOK)
	var st struct {
		Key, Token string
		RedisKey   string `json:"redis_key"`
		Held       bool
		TTLMs      int64 `json:"ttl_ms"`
		Fence      uint64
		LineLength int64 `json:"line_length"`
		Line       []struct {
			Token   string
			TTLMs   int64 `json:"ttl_ms"`
			PlaceMs int64 `json:"place_ms"`
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("--json output %q: %v", r.stdout, err)
	}
	if st.Key != "orders/42" || st.RedisKey != "klauthed:{orders/42}" || !st.Held ||
		st.Token != string(h.Token()) || st.Fence != 1 || st.TTLMs <= 0 || st.TTLMs > 60000 ||
		st.LineLength != 2 || len(st.Line) != 2 {
		t.Fatalf("--json = %+v", st)
	}
	for i, w := range []struct {
		tok string
		ttl int64
	}{{w1.token, 30000}, {w2.token, 20000}} {
		if l := st.Line[i]; l.Token != w.tok || l.TTLMs != w.ttl || l.PlaceMs <= 0 {
			t.Errorf("line[%d] = %+v, want token %s ttl %d and a live place", i, l, w.tok, w.ttl)
		}
	}
}

// TestInspect_waiterNobodyHears: a waiter whose strict channel has no
// subscriber (its process gone) shows as not heard, in text and JSON; a
// waiter that a Manager keeps subscribed does not.
func TestInspect_waiterNobodyHears(t *testing.T) {
	e := start(t)
	key := "orders/7"
	h := take(t, e.manager(t), key, time.Minute)
	base := lockredis.LockKey("klauthed:", key)
	keys := gen.AcquireKeys{LockKey: base, FenceKey: base + ":fence", LineKey: base + ":line",
		LineDeadlinesKey: base + ":line:deadlines", LineArgsKey: base + ":line:args"}
	dead := string(lock.NewToken())
	m := e.manager(t)
	res, err := gen.Acquire(context.Background(), m.Client(), keys, gen.AcquireArgs{
		Token: dead, TTL: time.Minute, LineTTL: time.Minute, Channel: "klauthed:wake:gone!"})
	if err != nil || res.Acquired || res.Position != 1 {
		t.Fatalf("a dead waiter's acquire = %+v, %v; want a place in line", res, err)
	}
	w := e.wait(t, key, 20*time.Second, 2)
	names := map[string]string{string(h.Token()): "H", dead: "D", w.token: "W"}
	r := e.lockctl(t, "inspect", key)
	wantCode(t, r, exitOK)
	want(t, "inspect", norm(r.stdout, names), `orders/7  held by <H>  ttl T  fence 1
  line: 2 waiting
    1. <D>  ttl T  place T  not heard (nobody subscribed to its channel: releases skip it)
    2. <W>  ttl T  place T
`)
	r = e.lockctl(t, "inspect", key, "--json")
	var st struct {
		Line []struct {
			Token string
			Heard *bool
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("--json output %q: %v", r.stdout, err)
	}
	if len(st.Line) != 2 || st.Line[0].Heard == nil || *st.Line[0].Heard {
		t.Fatalf("--json line = %+v, want the first waiter with heard false", st.Line)
	}
	if hw := st.Line[1].Heard; hw != nil && !*hw {
		t.Fatalf("--json: the subscribed Manager's waiter shows heard false")
	}
	// An operator whose ACL refuses PUBSUB NUMSUB still inspects the key;
	// whether its waiters are heard is left unsaid.
	e.s.Cli(t, "ACL", "SETUSER", "ops", "reset", "on", ">pw", "~klauthed:*", "-@all",
		"+hello", "+ping", "+multi", "+exec", "+get", "+pttl", "+zcard", "+zrange",
		"+zmscore", "+hmget", "+time")
	r = e.lockctl(t, "--user", "ops", "--pass", "pw", "inspect", key)
	wantCode(t, r, exitOK)
	want(t, "inspect without pubsub|numsub", norm(r.stdout, names),
		`orders/7  held by <H>  ttl T  fence 1
  line: 2 waiting
    1. <D>  ttl T  place T
    2. <W>  ttl T  place T
`)
}

func TestList_limitPatternAndOddKeys(t *testing.T) {
	e := start(t)
	m := e.manager(t)
	names := map[string]string{}
	for _, k := range []string{"job/1", "job/2", "job/3", "job/4", "job/5", "other/1", "}odd"} {
		names[string(take(t, m, k, time.Minute).Token())] = strings.ToUpper(k)
	}
	take(t, m, "gone", time.Minute).Release(context.Background()) // leaves a fence only

	r := e.lockctl(t, "list", "--limit", "3")
	wantCode(t, r, exitOK)
	lines := strings.Split(strings.TrimSpace(norm(r.stdout, names)), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "KEY") ||
		!strings.HasPrefix(lines[1], "job/1 ") || !strings.HasPrefix(lines[3], "job/3 ") ||
		lines[4] != "4 more not shown (--limit 3)" {
		t.Errorf("list --limit 3:\n%s", r.stdout)
	}

	r = e.lockctl(t, "list", "job/*")
	wantCode(t, r, exitOK)
	if n := strings.Count(r.stdout, "\njob/"); n != 5 || strings.Contains(r.stdout, "more") {
		t.Errorf("list job/*: %d rows\n%s", n, r.stdout)
	}

	r = e.lockctl(t, "list", "--json", "job/[12]")
	wantCode(t, r, exitOK)
	var got []struct{ Key, Token string }
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got) != 2 ||
		got[0].Key != "job/1" || got[1].Key != "job/2" || names[got[0].Token] != "JOB/1" {
		t.Errorf("list --json job/[12] = %s (%v)", r.stdout, err)
	}

	r = e.lockctl(t, "list", "}*")
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, "\n}odd ") || strings.Count(r.stdout, "\n") != 2 {
		t.Errorf("list '}*':\n%s", r.stdout)
	}

	r = e.lockctl(t, "list", "gone")
	wantCode(t, r, exitOK)
	want(t, "list gone", r.stdout, "no locks held under klauthed: matching gone\n")
}

// TestWatch_handOffAndExpiry watches a key through two hand-offs down its
// line and the last holder's expiry.
func TestWatch_handOffAndExpiry(t *testing.T) {
	e := start(t)
	h := take(t, e.manager(t), "w", time.Minute)
	w1 := e.wait(t, "w", time.Minute, 1)
	w2 := e.wait(t, "w", 700*time.Millisecond, 2)
	names := map[string]string{string(h.Token()): "H", w1.token: "W1", w2.token: "W2"}

	wt := startWatch(t, "-u", e.url, "watch", "w", "--count", "7", "--for", "20s")
	wt.next(t, 1) // the state: watching

	// Each change waits until watch printed the previous one: watch shows
	// what it reads after each push, and changes faster than a read
	// coalesce (the fence then tells how many acquisitions it missed).
	bg := context.Background()
	if err := h.Release(bg); err != nil {
		t.Fatal(err)
	}
	l1 := w1.got(t)
	wt.next(t, 3) // released, acquired, line
	if err := l1.Release(bg); err != nil {
		t.Fatal(err)
	}
	w2.got(t) // and let it expire
	wt.wait(t)
	want(t, "watch", norm(wt.out.String(), names), `state     w held by <H> fence 1 ttl T line 2
released  w by <H> fence 1
acquired  w by <W1> fence 2 ttl T
line      w 1 waiting <W2>
released  w by <W1> fence 2
acquired  w by <W2> fence 3 ttl T
line      w 0 waiting
expired   w by <W2> fence 3
`)
}

func TestWatch_json(t *testing.T) {
	e := start(t)
	m := e.manager(t)
	wt := startWatch(t, "watch", "j", "--json", "--count", "3", "--for", "20s", "-u", e.url)
	wt.next(t, 1)
	ctx := context.Background()
	l := take(t, m, "j", time.Minute)
	wt.next(t, 1)
	if err := l.Refresh(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	wt.next(t, 1)
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	wt.wait(t)
	var events []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(wt.out.String()), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		events = append(events, ev)
	}
	if len(events) != 4 || events[0]["event"] != "state" ||
		events[1]["event"] != "acquired" || events[1]["token"] != string(l.Token()) ||
		events[1]["fence"] != 1.0 || events[2]["event"] != "refreshed" ||
		events[2]["ttl_ms"].(float64) <= 60000 || events[3]["event"] != "released" ||
		events[3]["token"] != string(l.Token()) {
		t.Errorf("watch --json events = %v", events)
	}
}

// watcher is a running `lockctl watch`; out collects its output lines.
type watcher struct {
	cmd    *exec.Cmd
	lines  chan string
	out    strings.Builder
	stderr bytes.Buffer
	cancel context.CancelFunc
}

func startWatch(t *testing.T, args ...string) *watcher {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	w := &watcher{cmd: exec.CommandContext(ctx, bin, args...), lines: make(chan string, 64),
		cancel: cancel}
	w.cmd.Stderr = &w.stderr
	out, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		close(w.lines)
	}()
	t.Cleanup(func() {
		cancel()
		for range w.lines {
		}
		_ = w.cmd.Wait()
	})
	return w
}

// next waits for n more lines of output.
func (w *watcher) next(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case l, ok := <-w.lines:
			if !ok {
				t.Fatalf("watch ended early:\n%s%s", w.out.String(), w.stderr.String())
			}
			w.out.WriteString(l + "\n")
		case <-time.After(10 * time.Second):
			t.Fatalf("watch printed nothing new for 10s:\n%s", w.out.String())
		}
	}
}

// wait collects the rest of the output and waits for watch to exit 0.
func (w *watcher) wait(t *testing.T) {
	t.Helper()
	for l := range w.lines {
		w.out.WriteString(l + "\n")
	}
	if err := w.cmd.Wait(); err != nil {
		t.Fatalf("watch: %v\n%s%s", err, w.out.String(), w.stderr.String())
	}
}

func TestWatch_forEndsQuietly(t *testing.T) {
	e := start(t)
	r := e.lockctl(t, "watch", "--for", "200ms", "idle")
	wantCode(t, r, exitOK)
	want(t, "watch idle", norm(r.stdout, nil), "state     idle free fence 0 line 0\n")
}

func TestRelease_force(t *testing.T) {
	e := start(t)
	m := e.manager(t)
	l := take(t, m, "stuck", time.Minute)
	tok := string(l.Token())
	fence := func() string { return e.s.Cli(t, "GET", "klauthed:{stuck}:fence") }

	for _, answer := range []string{"n\n", ""} {
		r := runBin(t, answer, nil, "-u", e.url, "release", "--force", "stuck")
		wantCode(t, r, exitDeclined)
		if !strings.Contains(r.stderr, "stuck is held by "+tok+" (fence 1, ttl ") ||
			!strings.Contains(r.stderr, "Remove the lock? [y/N] lockctl: not confirmed; nothing removed") {
			t.Errorf("answer %q: stderr:\n%s", answer, r.stderr)
		}
		if got := e.s.Cli(t, "GET", "klauthed:{stuck}"); got != tok {
			t.Fatalf("after answer %q the lock holds %q, want the token", answer, got)
		}
	}

	r := runBin(t, "y\n", nil, "-u", e.url, "release", "--force", "stuck")
	wantCode(t, r, exitOK)
	want(t, "release", norm(r.stdout, map[string]string{tok: "H"}),
		"removed stuck (klauthed:{stuck}): token <H>, fence 1, ttl left T; "+
			"the fence counter is unchanged\n")
	if got := e.s.Cli(t, "EXISTS", "klauthed:{stuck}"); got != "0" {
		t.Errorf("lock still exists after release --force")
	}
	if got := fence(); got != "1" {
		t.Errorf("fence = %q after release --force, want 1 (untouched)", got)
	}
	if err := l.Refresh(context.Background(), time.Minute); err == nil {
		t.Errorf("the old holder could still refresh")
	}

	r = e.lockctl(t, "release", "--force", "--yes", "stuck")
	wantCode(t, r, exitNotHeld)
	want(t, "release of a free key", r.stderr, "lockctl: stuck is not held; nothing removed\n")

	r = e.lockctl(t, "release", "stuck")
	wantCode(t, r, exitUsage)
}

// TestRelease_forceWithLine: --yes --json, and the line's head gets the key
// afterwards by itself (its keep-alive), with the next fence.
func TestRelease_forceWithLine(t *testing.T) {
	e := start(t)
	h := take(t, e.manager(t), "q", time.Minute)
	w := e.wait(t, "q", time.Minute, 1)
	r := e.lockctl(t, "release", "q", "--force", "--yes", "--json")
	wantCode(t, r, exitOK)
	var got releaseJSON
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("%q: %v", r.stdout, err)
	}
	if !got.Removed || got.Token != string(h.Token()) || got.Fence != 1 || got.LineLen != 1 ||
		got.TTLMs <= 0 || got.Name != "klauthed:{q}" {
		t.Errorf("release --json = %+v", got)
	}
	if l := w.got(t); l.Fence() != 2 {
		t.Errorf("the head got the key with fence %d, want 2", l.Fence())
	}
	r = e.lockctl(t, "release", "--force", "--yes", "q")
	wantCode(t, r, exitOK)
	want(t, "release text", norm(r.stdout, map[string]string{w.token: "W"}),
		"removed q (klauthed:{q}): token <W>, fence 2, ttl left T; the fence counter is unchanged\n")
}

func TestErrors_notALock(t *testing.T) {
	e := start(t)
	e.s.Cli(t, "HSET", "klauthed:{h}", "a", "b")
	e.s.Cli(t, "SET", "klauthed:{s}", "two words", "PX", "60000")
	e.s.Cli(t, "SET", "klauthed:{f}:fence", "x")
	e.s.Cli(t, "SET", "klauthed:{l}:line", "x")
	for _, c := range []struct{ key, want string }{
		{"h", "lockctl: h is not a klauthed lock: klauthed:{h} is a hash\n"},
		{"s", `lockctl: s is not a klauthed lock: klauthed:{s} holds "two words", ` +
			"not a token (tokens are printable ASCII without spaces)\n"},
		{"f", `lockctl: f is not a klauthed lock: ` +
			`klauthed:{f}:fence holds "x", not a fence counter` + "\n"},
		{"l", "lockctl: l is not a klauthed lock: klauthed:{l}:line is a string\n"},
	} {
		r := e.lockctl(t, "inspect", c.key)
		wantCode(t, r, exitErr)
		want(t, "inspect "+c.key, r.stderr, c.want)
		r = e.lockctl(t, "release", "--force", "--yes", c.key)
		wantCode(t, r, exitErr)
		want(t, "release "+c.key, r.stderr, c.want)
	}
	r := e.lockctl(t, "watch", "h", "--count", "1")
	wantCode(t, r, exitErr)
	want(t, "watch h", r.stderr, "lockctl: h is not a klauthed lock: klauthed:{h} is a hash\n")
	if got := e.s.Cli(t, "TYPE", "klauthed:{h}"); got != "hash" {
		t.Errorf("release touched a non-lock: TYPE = %s", got)
	}
}

func TestErrors_connection(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	for _, args := range [][]string{
		{"-u", "redis://" + addr, "inspect", "k"},
		{"-u", "redis://" + addr, "list"},
		{"-u", "redis://" + addr, "watch", "k"},
	} {
		r := runBin(t, "", nil, args...)
		wantCode(t, r, exitErr)
		if !strings.HasPrefix(r.stderr, "lockctl: cannot connect to "+addr+": ") ||
			strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%q: stderr %q", args, r.stderr)
		}
	}
	// -h and -p override REDIS_URL's address.
	host, _, _ := net.SplitHostPort(addr)
	e := start(t)
	r := runBin(t, "", []string{"REDIS_URL=redis://" + addr}, "inspect", "k")
	wantCode(t, r, exitErr)
	_, ePort, _ := net.SplitHostPort(e.s.Addr)
	r = runBin(t, "", []string{"REDIS_URL=redis://" + addr}, "-h", host, "-p", ePort, "inspect", "k")
	wantCode(t, r, exitNotHeld)
}

func TestErrors_acl(t *testing.T) {
	e := start(t)
	// ops may connect and read but not GET or SCAN.
	e.s.Cli(t, "ACL", "SETUSER", "ops", "reset", "on", ">pw", "~klauthed:*", "-@all",
		"+hello", "+ping", "+multi", "+exec", "+pttl", "+zcard", "+zrange")
	r := e.lockctl(t, "--user", "ops", "--pass", "pw", "inspect", "k")
	wantCode(t, r, exitErr)
	if !strings.HasPrefix(r.stderr, `lockctl: the Redis user "ops" may not run GET: NOPERM`) {
		t.Errorf("inspect as ops: %q", r.stderr)
	}
	r = runBin(t, "", []string{"REDISCLI_AUTH=pw"}, "-u", "redis://ops@"+e.s.Addr, "list")
	wantCode(t, r, exitErr)
	if !strings.HasPrefix(r.stderr, `lockctl: the Redis user "ops" may not run SCAN: NOPERM`) {
		t.Errorf("list as ops: %q", r.stderr)
	}
	r = runBin(t, "", nil, "-u", "redis://ops:wrong@"+e.s.Addr, "inspect", "k")
	wantCode(t, r, exitErr)
	wantMsg := `lockctl: ` + e.s.Addr + ` refused the login of user "ops": WRONGPASS`
	if !strings.HasPrefix(r.stderr, wantMsg) {
		t.Errorf("wrong password: %q", r.stderr)
	}
	if strings.Contains(r.stderr, "wrong") {
		t.Errorf("the password was printed: %q", r.stderr)
	}
	// watch also needs client-side caching, which ops may not turn on.
	r = e.lockctl(t, "--user", "ops", "--pass", "pw", "watch", "k", "--count", "1")
	wantCode(t, r, exitErr)
	wantMsg = `lockctl: the Redis user "ops" may not run CLIENT|TRACKING: NOPERM`
	if !strings.HasPrefix(r.stderr, wantMsg) {
		t.Errorf("watch as ops: %q", r.stderr)
	}
}

func TestErrors_usage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "lockctl: no command given\n"},
		{[]string{"frob"},
			`lockctl: unknown command "frob" (want inspect, list, watch or release)` + "\n"},
		{[]string{"inspect"}, "lockctl: inspect needs at least one KEY\n"},
		{[]string{"--bogus", "list"}, "lockctl: flag provided but not defined: -bogus\n"},
		{[]string{"list", "--limit", "x"},
			`lockctl: invalid value "x" for flag -limit: parse error` + "\n"},
		{[]string{"watch", "a", "b"}, "lockctl: watch needs exactly one KEY\n"},
		{[]string{"release", "k"}, "lockctl: release needs --force: it frees the key " +
			"while its holder may still believe it holds it\n"},
		{[]string{"-u", "ftp://x", "list"}, "lockctl: bad Redis URL: redis: invalid URL scheme: ftp\n"},
		{[]string{"--prefix", "a{", "list"}, "lockctl: --prefix must not contain braces\n"},
	} {
		r := runBin(t, "", nil, c.args...)
		wantCode(t, r, exitUsage)
		want(t, fmt.Sprintf("%q", c.args), r.stderr, c.want+"Run 'lockctl --help' for usage.\n")
	}
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"inspect", "-help"}} {
		r := runBin(t, "", nil, args...)
		wantCode(t, r, exitOK)
		if !strings.Contains(r.stdout, "Exit codes:") || r.stderr != "" {
			t.Errorf("%q: stdout %q stderr %q", args, r.stdout, r.stderr)
		}
	}
}

// TestCluster_listAndInspect: with -c, list scans every master and inspect's
// transaction goes to the key's master.
func TestCluster_listAndInspect(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	m, err := lockredis.New(lockredis.Options{
		ClientOption: rueidis.ClientOption{InitAddress: c.Addrs},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	for i := range 12 { // 12 keys spread over the 3 masters' slots
		take(t, m, fmt.Sprintf("c/%02d", i), time.Minute)
	}
	r := runBin(t, "", nil, "-c", "-u", "redis://"+c.Addrs[0], "list", "--json")
	wantCode(t, r, exitOK)
	var got []struct{ Key string }
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got) != 12 ||
		got[0].Key != "c/00" || got[11].Key != "c/11" {
		t.Errorf("list -c = %s (%v)", r.stdout, err)
	}
	r = runBin(t, "", nil, "-c", "-u", "redis://"+c.Addrs[0], "inspect", "c/00", "c/07")
	wantCode(t, r, exitOK)
	if strings.Count(r.stdout, "held by") != 2 {
		t.Errorf("inspect -c:\n%s", r.stdout)
	}
}
