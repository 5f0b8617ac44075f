package harness

import (
	"context"
	"testing"
	"time"

	"github.com/klauthed/lock/internal/redistest"
)

// TestPushFloor measures the floor in both modes on a real redis-server:
// each sample needs the subscriber (a client here, or a process started
// through TestMain) to see a message published after the sample began, so a
// subscriber that sees nothing fails the call, and the median is positive
// and well below the 1s a lost message would take.
func TestPushFloor(t *testing.T) {
	srv := redistest.Start(t)
	target := &Target{Addr: srv.Addr, Kind: "addr"}
	for _, procs := range []bool{false, true} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		d, err := PushFloor(ctx, target, "TestPushFloor", 50, 100*time.Microsecond, procs)
		cancel()
		if err != nil {
			t.Fatalf("procs=%v: %v", procs, err)
		}
		if d <= 0 || d >= time.Second {
			t.Errorf("procs=%v: floor %v, want in (0, 1s)", procs, d)
		}
	}
}
