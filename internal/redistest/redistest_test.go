package redistest

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newClient returns a rueidis client on addrs, closed in t.Cleanup.
func newClient(t *testing.T, addrs ...string) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: addrs})
	if err != nil {
		t.Fatalf("rueidis.NewClient(%v): %v", addrs, err)
	}
	t.Cleanup(c.Close)
	return c
}

// waitGone fails t unless the process pid has exited within 5s.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// refused reports whether a TCP connection to addr is refused.
func refused(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return true
	}
	c.Close()
	return false
}

func TestStart_answersPINGThroughRueidis(t *testing.T) {
	s := Start(t)
	if !strings.HasPrefix(s.Addr, "127.0.0.1:") || s.Addr == "127.0.0.1:6379" {
		t.Fatalf("Addr = %q, want 127.0.0.1 and a free port", s.Addr)
	}
	c := newClient(t, s.Addr)
	got, err := c.Do(context.Background(), c.B().Ping().Build()).ToString()
	if err != nil || got != "PONG" {
		t.Fatalf("PING = %q, %v; want PONG", got, err)
	}
}

func TestStart_noPersistenceAndLoopbackOnly(t *testing.T) {
	s := Start(t)
	for _, tc := range []struct{ param, want string }{
		{"save", "save"}, // trailing empty value trimmed
		{"appendonly", "appendonly\nno"},
		{"bind", "bind\n127.0.0.1"},
	} {
		if got := s.Cli(t, "CONFIG", "GET", tc.param); got != tc.want {
			t.Errorf("CONFIG GET %s = %q, want %q", tc.param, got, tc.want)
		}
	}
}

func TestStart_extraArgsOverrideDefaults(t *testing.T) {
	s := Start(t, "--appendonly", "yes", "--maxmemory", "12345678")
	if got := s.Cli(t, "CONFIG", "GET", "appendonly"); got != "appendonly\nyes" {
		t.Errorf("CONFIG GET appendonly = %q, want yes", got)
	}
	if got := s.Cli(t, "CONFIG", "GET", "maxmemory"); got != "maxmemory\n12345678" {
		t.Errorf("CONFIG GET maxmemory = %q, want 12345678", got)
	}
}

func TestStart_serversGetDistinctPorts(t *testing.T) {
	a, b := Start(t), Start(t)
	if a.Addr == b.Addr {
		t.Fatalf("both servers on %s", a.Addr)
	}
	a.Cli(t, "SET", "k", "a")
	if got := b.Cli(t, "GET", "k"); got != "" {
		t.Fatalf("second server sees k = %q; servers are not separate", got)
	}
}

func TestServer_Cli(t *testing.T) {
	s := Start(t)
	if got := s.Cli(t, "SET", "k", "v w"); got != "OK" {
		t.Fatalf("SET = %q, want OK", got)
	}
	if got := s.Cli(t, "GET", "k"); got != "v w" {
		t.Fatalf("GET = %q, want %q", got, "v w")
	}
	if got := s.Cli(t, "GET", "missing"); got != "" {
		t.Fatalf("GET missing = %q, want empty", got)
	}
	if got := s.Cli(t, "INCR", "n"); got != "1" {
		t.Fatalf("INCR = %q, want 1", got)
	}
}

func TestServer_Cli_failsWhenServerDown(t *testing.T) {
	s := Start(t)
	s.Kill()
	msg := fatalMessage(t, func(tb testing.TB) { s.Cli(tb, "PING") })
	if !strings.Contains(msg, "redis-cli") {
		t.Fatalf("Fatalf message %q does not name redis-cli", msg)
	}
}

func TestServer_Restart_losesDataKeepsPort(t *testing.T) {
	s := Start(t)
	addr, pid := s.Addr, s.Pid()
	s.Cli(t, "SET", "k", "v")
	s.Restart(t)
	if s.Addr != addr {
		t.Fatalf("Addr after Restart = %q, want %q", s.Addr, addr)
	}
	if s.Pid() == pid || s.Pid() == 0 {
		t.Fatalf("Pid after Restart = %d, want a new process (old %d)", s.Pid(), pid)
	}
	waitGone(t, pid)
	if got := s.Cli(t, "GET", "k"); got != "" {
		t.Fatalf("GET k after Restart = %q, want empty (data lost)", got)
	}
}

func TestServer_Restart_reconnectsRueidis(t *testing.T) {
	s := Start(t)
	c := newClient(t, s.Addr)
	ctx := context.Background()
	if err := c.Do(ctx, c.B().Set().Key("k").Value("v").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	s.Restart(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := c.Do(ctx, c.B().Get().Key("k").Build()).Error()
		if rueidis.IsRedisNil(err) {
			return // reconnected, and the key is gone
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET after Restart: %v, want a nil reply", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServer_Kill_stopsUntilRestart(t *testing.T) {
	s := Start(t)
	pid := s.Pid()
	s.Kill()
	if s.Pid() != 0 {
		t.Fatalf("Pid after Kill = %d, want 0", s.Pid())
	}
	waitGone(t, pid)
	if !refused(s.Addr) {
		t.Fatalf("%s still accepts connections after Kill", s.Addr)
	}
	s.Kill() // no-op
	s.Restart(t)
	if got := s.Cli(t, "PING"); got != "PONG" {
		t.Fatalf("PING after Kill+Restart = %q", got)
	}
}

func TestServer_Close_stopsProcessIdempotently(t *testing.T) {
	s, err := StartServer()
	if err != nil {
		t.Fatal(err)
	}
	pid := s.Pid()
	if pid == 0 || processGone(pid) {
		t.Fatalf("Pid = %d, want a running process", pid)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitGone(t, pid)
	if !refused(s.Addr) {
		t.Fatalf("%s still accepts connections after Close", s.Addr)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if s.Pid() != 0 {
		t.Fatalf("Pid after Close = %d, want 0", s.Pid())
	}
}

func TestServer_Restart_failsAfterClose(t *testing.T) {
	s, err := StartServer()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	msg := fatalMessage(t, func(tb testing.TB) { s.Restart(tb) })
	if !strings.Contains(msg, "closed") {
		t.Fatalf("Fatalf message %q does not say the server is closed", msg)
	}
}

func TestStart_failsWithoutRedisServer(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	msg := fatalMessage(t, func(tb testing.TB) { Start(tb) })
	if !strings.Contains(msg, "apt-get install redis-server") {
		t.Fatalf("Fatalf message %q does not say how to install redis-server", msg)
	}
	_, err := StartServer()
	if err == nil || !strings.Contains(err.Error(), "redis-server not found") {
		t.Fatalf("StartServer error = %v, want redis-server not found", err)
	}
}

// fatalTB records the first Fatalf and ends the calling goroutine, as
// testing.T does, without failing the real test.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// fatalMessage runs fn on its own goroutine with a TB whose Fatalf is
// recorded, and returns the message; it fails t if fn did not call Fatalf.
func fatalMessage(t *testing.T, fn func(tb testing.TB)) string {
	t.Helper()
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	if f.msg == "" {
		t.Fatal("Fatalf was not called")
	}
	return f.msg
}
