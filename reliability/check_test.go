package reliability

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/klauthed/lock"
)

// These tests feed the checker histories with one known flaw each, so the
// fault suite's "violations=0" is known to be able to say otherwise.

func lease(h *history, client int, key string, fence uint64, call, end time.Duration) *leaseRec {
	r := &leaseRec{client: client, key: key, fence: fence,
		token: lock.Token("t" + string(rune('a'+client))), ttl: time.Second,
		acqCall: h.origin.Add(call), acqEnd: h.origin.Add(end)}
	h.addLease(r)
	return r
}

func TestCheck_cleanHistoryPasses(t *testing.T) {
	h, g := newHistory(), newRegister()
	a := lease(h, 0, "k", 1, 0, 10*time.Millisecond)
	a.release = &callRec{
		start: h.origin.Add(100 * time.Millisecond), end: h.origin.Add(110 * time.Millisecond),
	}
	lease(h, 1, "k", 2, 50*time.Millisecond, 120*time.Millisecond)
	if v := check(h, g, time.Second); v.violations() != 0 || v.porcupine != "ok" {
		t.Fatalf("clean history: %+v", v)
	}
}

func TestCheck_detectsOverlappingLeases(t *testing.T) {
	h, g := newHistory(), newRegister()
	lease(h, 0, "k", 1, 0, 10*time.Millisecond)                     // held until >= 1s
	lease(h, 1, "k", 2, 500*time.Millisecond, 510*time.Millisecond) // granted while the first is held
	v := check(h, g, time.Second)
	if len(v.overlaps) != 1 {
		t.Fatalf("overlaps = %q, want one", v.overlaps)
	}
}

func TestCheck_detectsFencesAgainstRealTime(t *testing.T) {
	h, g := newHistory(), newRegister()
	a := lease(h, 0, "k", 5, 0, 10*time.Millisecond)
	a.release = &callRec{start: h.origin.Add(20 * time.Millisecond)}
	lease(h, 1, "k", 3, 30*time.Millisecond, 40*time.Millisecond) // later, smaller fence
	v := check(h, g, time.Second)
	if len(v.fenceOrder) == 0 || v.porcupine != "illegal" {
		t.Fatalf("fenceOrder = %q, porcupine = %s; want a finding from both", v.fenceOrder, v.porcupine)
	}
}

func TestCheck_detectsUntoldStaleWriter(t *testing.T) {
	h, g := newHistory(), newRegister()
	a := lease(h, 0, "k", 1, 0, 10*time.Millisecond)
	b := lease(h, 1, "k", 2, 0, 20*time.Millisecond)
	ctx := context.Background()
	g.write(ctx, b)
	g.write(ctx, a) // rejected: a newer fence was accepted, and a was not told
	v := check(h, g, time.Second)
	if v.rejected != 1 || len(v.untold) != 1 || !strings.Contains(v.untold[0], "fence 1") {
		t.Fatalf("rejected = %d, untold = %q; want the stale write found", v.rejected, v.untold)
	}

	// A holder that was told does not write at all.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if g.write(cctx, a) {
		t.Fatal("register let a holder whose context is done write")
	}
}

func TestCheck_detectsHang(t *testing.T) {
	h, g := newHistory(), newRegister()
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	dl, _ := ctx.Deadline()
	h.op("Acquire", 0, ctx, dl.Add(3*time.Second))
	if v := check(h, g, time.Second); len(v.hangs) != 1 {
		t.Fatalf("hangs = %q, want one", v.hangs)
	}
}
