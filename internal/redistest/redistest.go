// Package redistest starts real redis-server processes for tests and
// benchmarks: a single server on a free 127.0.0.1 port (Start, StartServer)
// or a Redis Cluster of several masters (StartCluster, StartServerCluster).
//
// The redis-server and redis-cli binaries are taken from PATH. When they are
// missing, Start and StartCluster fail the test (they never skip it): install
// them with `apt-get install redis-server`.
//
// Servers run without persistence (--save "" --appendonly no), listen on
// 127.0.0.1 only, and are tied to the calling process: on Linux each child is
// started with Pdeathsig=SIGKILL from a goroutine locked to its own OS thread
// for the child's whole life, so the server dies even if the test binary is
// killed. Servers from Start and StartCluster are also stopped in tb.Cleanup.
//
// Each running server owns one goroutine (blocked reaping its process) that
// ends when the server stops, so goleak.VerifyTestMain, or a goleak check
// made after the test's cleanups, finds none; a check deferred inside a test
// runs before its cleanups and would see it.
//
// Start, StartCluster, Restart and Cli report failure with tb.Fatalf, so
// they must be called from the test's goroutine.
package redistest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// readyTimeout bounds how long a starting server may take to answer PING.
	readyTimeout = 10 * time.Second
	// stopTimeout bounds how long a server may take to exit after SIGTERM
	// before it is sent SIGKILL.
	stopTimeout = 5 * time.Second
	// cliTimeout bounds one redis-cli run.
	cliTimeout = 30 * time.Second
	// startAttempts is how often a start is retried on a fresh port when
	// another process took the chosen port first.
	startAttempts = 5
	// logName is the server's log file (its stdout and stderr) in its dir.
	logName = "redis.log"
)

// installHint is appended to every "binary not found" error.
const installHint = "install it with `apt-get install redis-server` " +
	"(tests need a real Redis; they are not skipped)"

// Server is one redis-server process listening on Addr. It is created by
// Start or StartServer and must not be copied. Its methods are safe for
// concurrent use.
type Server struct {
	// Addr is "127.0.0.1:port". It stays the same across Restart.
	Addr string

	port    int
	dir     string   // the server's working dir (--dir), removed by Close
	bin     string   // path of redis-server
	args    []string // argv after the binary, the same for every (re)start
	cluster bool     // started with --cluster-enabled yes

	mu     sync.Mutex
	p      *proc // the running process, nil while stopped
	closed bool
}

// proc is one started redis-server process.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // cmd.Wait's result, valid after done is closed
}

// Start starts a redis-server on a free 127.0.0.1 port with
// --save "" --appendonly no and extraArgs appended (so they override the
// defaults), waits until it answers PING, and stops it in tb.Cleanup.
//
// On failure (redis-server not on PATH, the server did not come up within
// 10s) it calls tb.Fatalf with the server's log; nothing is left running.
// Like every tb.Fatalf caller it must run on the test's goroutine.
func Start(tb testing.TB, extraArgs ...string) *Server {
	tb.Helper()
	s, err := StartServer(extraArgs...)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("%v", err)
		}
	})
	return s
}

// StartServer is Start for programs without a testing.TB (benchmark tools).
// On success the caller owns the server and must call Close, which also
// removes its temporary directory. On failure it returns an error and
// leaves nothing running.
func StartServer(extraArgs ...string) (*Server, error) {
	s, err := startServer(false, extraArgs)
	if err != nil {
		return nil, fmt.Errorf("redistest: %w", err)
	}
	return s, nil
}

// startServer picks a free port (and, for cluster nodes, a free cluster bus
// port at port+10000), starts the server and waits for PING. It retries on
// a fresh port when the server could not bind because another process took
// the port between our check and its bind.
func startServer(cluster bool, extraArgs []string) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found on PATH: %v; %s", err, installHint)
	}
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		port, err := freePort(cluster)
		if err != nil {
			return nil, err
		}
		dir, err := os.MkdirTemp("", "redistest-"+strconv.Itoa(port)+"-")
		if err != nil {
			return nil, err
		}
		args := []string{
			"--port", strconv.Itoa(port),
			"--bind", "127.0.0.1",
			"--save", "",
			"--appendonly", "no",
			"--daemonize", "no",
			"--protected-mode", "no",
			"--dir", dir,
		}
		if cluster {
			args = append(args,
				"--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
				"--cluster-node-timeout", "5000",
			)
		}
		s := &Server{
			Addr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			port:    port,
			dir:     dir,
			bin:     bin,
			args:    append(args, extraArgs...),
			cluster: cluster,
		}
		err = s.startLocked()
		if err == nil {
			return s, nil
		}
		os.RemoveAll(dir)
		lastErr = err
		if !errors.Is(err, errAddrInUse) {
			break
		}
	}
	return nil, lastErr
}

// errAddrInUse marks a start that failed because the port was taken.
var errAddrInUse = errors.New("address already in use")

// startLocked starts the process and waits until it answers PING. The
// caller holds s.mu (or owns s exclusively). On failure the process is
// stopped and s.p is nil; the error includes the server's log, and wraps
// errAddrInUse when the server could not bind its ports.
func (s *Server) startLocked() error {
	logf, err := os.OpenFile(filepath.Join(s.dir, logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	// The child gets its own copy of the descriptor; an *os.File (not a
	// buffer) as Stdout means os/exec starts no copying goroutines.
	defer logf.Close()
	logStart, _ := logf.Seek(0, io.SeekEnd)

	cmd := exec.Command(s.bin, s.args...)
	cmd.Dir = s.dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = sysProcAttr()
	p, err := spawn(cmd)
	if err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	if err := waitReady(s.Addr, p, readyTimeout); err != nil {
		stop(p)
		log := s.logSince(logStart)
		if strings.Contains(log, "Address already in use") {
			err = fmt.Errorf("%w (%v)", errAddrInUse, err)
		}
		return fmt.Errorf("redis-server on %s: %w\n--- redis-server log ---\n%s", s.Addr, err, log)
	}
	s.p = p
	return nil
}

// logSince returns the server's log written after offset (at most the last
// 8 KiB of it).
func (s *Server) logSince(offset int64) string {
	b, err := os.ReadFile(filepath.Join(s.dir, logName))
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	if offset <= int64(len(b)) {
		b = b[offset:]
	}
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	return string(b)
}

// spawn starts cmd from a new goroutine locked to its OS thread and reaps it
// there.
//
// Pdeathsig is delivered when the *thread* that forked the child exits, not
// when the process does (see os/exec and prctl(2) PR_SET_PDEATHSIG). A Go
// thread exits when a goroutine returns while locked to it, so forking from
// an arbitrary goroutine could kill the server the moment some unrelated
// locked goroutine ends on that thread. Here the forking goroutine holds its
// thread (no other goroutine can run on it, let alone end it) until the
// child has exited; only then does the goroutine return, still locked, and
// the runtime retires the thread — harmless, the child is already gone.
// The thread (and goroutine) thus live exactly as long as the server.
func spawn(cmd *exec.Cmd) (*proc, error) {
	p := &proc{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, on purpose: see above
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// waitReady polls addr with PING until it answers +PONG, the process exits,
// or timeout passes.
func waitReady(addr string, p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		select {
		case <-p.done:
			return fmt.Errorf("exited before answering PING: %v", p.err)
		default:
		}
		reply, err := do(addr, time.Second, "PING")
		if err == nil && reply == "PONG" {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("PING answered %q", reply)
		}
		lastErr = err
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer to PING within %v: %v", timeout, lastErr)
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM, waits up to stopTimeout, then sends SIGKILL and waits
// again. It only signals p's own process (os.Process uses a pidfd where the
// kernel has one, so a reused PID is never hit). It returns nil once the
// process has exited.
func stop(p *proc) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
	}
	return kill(p)
}

// kill sends SIGKILL and waits until the process has been reaped.
func kill(p *proc) error {
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
		return fmt.Errorf("redis-server pid %d did not exit after SIGKILL", p.cmd.Process.Pid)
	}
}

// Close stops the server (SIGTERM, then SIGKILL after 5s) and removes its
// directory. It is idempotent: later calls return nil and do nothing. On
// error (the process did not exit even after SIGKILL) the server is still
// marked closed.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var err error
	if s.p != nil {
		err = stop(s.p)
		s.p = nil
	}
	if rmErr := os.RemoveAll(s.dir); err == nil && rmErr != nil {
		err = rmErr
	}
	if err != nil {
		return fmt.Errorf("redistest: close %s: %w", s.Addr, err)
	}
	return nil
}

// Restart stops the server (if it is running) and starts it again with the
// same arguments on the same port, then waits until it answers PING. All
// data is lost (there is no persistence); a cluster node keeps its
// nodes.conf, so it rejoins its cluster with the same ID and slots.
//
// It retries for a few seconds if the port is briefly taken. On failure, or
// if the server was closed, it calls tb.Fatalf and the server is left
// stopped.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		tb.Fatalf("redistest: Restart of closed server %s", s.Addr)
	}
	if s.p != nil {
		err := stop(s.p)
		s.p = nil
		if err != nil {
			tb.Fatalf("redistest: restart %s: %v", s.Addr, err)
		}
	}
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		if err = s.startLocked(); !errors.Is(err, errAddrInUse) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		tb.Fatalf("redistest: restart: %v", err)
	}
}

// Kill sends SIGKILL to the server, as a crash would, and waits until it has
// exited. The server stays stopped (connections are refused) until Restart.
// Kill on a stopped or closed server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p != nil {
		_ = kill(s.p)
		s.p = nil
	}
}

// Pid returns the process ID of the running server, or 0 while it is
// stopped (after Kill or Close).
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return 0
	}
	return s.p.cmd.Process.Pid
}

// Port returns the server's TCP port (the port of Addr).
func (s *Server) Port() int { return s.port }

// Cli runs `redis-cli -h 127.0.0.1 -p PORT args...` and returns its standard
// output with surrounding white space trimmed. Replies are printed raw (no
// quotes, no "(integer)"); a nil reply is the empty string. Note that
// redis-cli prints an error reply ("ERR ...") and still exits with status 0,
// so callers check the text.
//
// If redis-cli is missing, cannot connect, or exits with a non-zero status,
// Cli calls tb.Fatalf with its output. It must run on the test's goroutine.
func (s *Server) Cli(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := cli(append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(s.port)}, args...)...)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	return out
}

// cli runs redis-cli with args and returns its trimmed stdout.
func cli(args ...string) (string, error) {
	bin, err := exec.LookPath("redis-cli")
	if err != nil {
		return "", fmt.Errorf("redis-cli not found on PATH: %v; %s", err, installHint)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("redis-cli %s: %v\nstdout: %s\nstderr: %s",
			strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return strings.TrimSpace(stdout.String()), nil
}

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago. With
// bus set (cluster nodes) the port is at most 55535 and port+10000, the
// cluster bus port, was free too.
func freePort(bus bool) (int, error) {
	var lastErr error
	for i := 0; i < 100; i++ {
		port, err := listenFree(0)
		if err != nil {
			lastErr = err
			continue
		}
		if !bus {
			return port, nil
		}
		if port > 65535-10000 {
			continue
		}
		if _, err := listenFree(port + 10000); err != nil {
			lastErr = err
			continue
		}
		return port, nil
	}
	return 0, fmt.Errorf("no free port on 127.0.0.1: %v", lastErr)
}

// listenFree listens on 127.0.0.1:port (0 = any), closes the listener and
// returns the port.
func listenFree(port int) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
