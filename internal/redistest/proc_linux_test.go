package redistest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// processGone reports whether pid has exited: no /proc entry, or a zombie
// waiting for a parent (orphans are reparented to an init that may never
// reap them).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// Format: pid (comm) state ...; comm may contain spaces or ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

const childEnv = "REDISTEST_CHILD_PROCESS"

// TestServer_diesWithParentProcess starts a server in a child test process,
// kills that child with SIGKILL (so no cleanup runs) and checks the server
// goes too, through Pdeathsig.
func TestServer_diesWithParentProcess(t *testing.T) {
	if os.Getenv(childEnv) == "1" {
		s, err := StartServer()
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Printf("pid %d %s\n", s.Pid(), s.Addr)
		select {} // wait to be killed
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestServer_diesWithParentProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("reading child output: %v (got %q)", err, line)
	}
	var pid int
	var addr string
	if _, err := fmt.Sscanf(line, "pid %d %s", &pid, &addr); err != nil {
		t.Fatalf("child said %q: %v", line, err)
	}
	if processGone(pid) {
		t.Fatalf("server %d not running while child lives", pid)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	waitGone(t, pid)
	// Another package's test may already have a server on the freed port
	// (go test runs packages in parallel): only the dead server's own
	// process id there would be a failure.
	if !refused(addr) {
		host, port, _ := strings.Cut(addr, ":")
		info, err := cli("-h", host, "-p", port, "INFO", "server")
		for _, line := range strings.Split(info, "\n") {
			if err == nil && strings.TrimSpace(line) == fmt.Sprintf("process_id:%d", pid) {
				t.Fatalf("%s is still served by the killed child's server %d", addr, pid)
			}
		}
	}
}

// waitThreadGone fails t unless thread tid of this process has exited
// within 5s.
func waitThreadGone(t *testing.T, tid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid)); err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d still exists", tid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServer_survivesExitOfStartingThread calls StartServer on an OS thread
// that then exits. Pdeathsig fires when the thread that forked the child
// exits, so a server forked from the caller's thread would be killed.
func TestServer_survivesExitOfStartingThread(t *testing.T) {
	var (
		s   *Server
		err error
	)
	tid := onExitingThread(t, func() { s, err = StartServer() })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	waitThreadGone(t, tid)
	time.Sleep(100 * time.Millisecond) // let a death signal, if any, land
	if got := s.Cli(t, "PING"); got != "PONG" {
		t.Fatalf("PING = %q, want PONG", got)
	}
	if processGone(s.Pid()) {
		t.Fatal("server process is gone")
	}
}

// onExitingThread runs fn on a goroutine locked to an OS thread other than
// the main one, and lets that goroutine end while still locked, so the
// runtime terminates the thread (the main thread would be parked instead).
// It returns the thread's ID once fn has returned.
func onExitingThread(t *testing.T, fn func()) (tid int) {
	t.Helper()
	done := make(chan int)
	var run func()
	run = func() {
		runtime.LockOSThread() // never unlocked: the thread exits with us
		if syscall.Gettid() == syscall.Getpid() {
			// On the main thread: hold it, so the nested goroutine lands on
			// another thread, then release it.
			go run()
			runtime.UnlockOSThread()
			return
		}
		fn()
		done <- syscall.Gettid()
	}
	go run()
	return <-done
}
