package gen_test

import (
	"context"
	"testing"
	"time"

	"github.com/klauthed/lock/gen"
	"github.com/klauthed/lock/internal/redistest"
)

// TestBatch_recoversAfterScriptFlush sends every script through a Batch
// together with WAIT on a real Redis whose script cache was flushed: each
// script call meets NOSCRIPT, Do re-sends it as EVAL followed by the WAIT,
// and the Pendings hold the scripts' real replies and WAIT's.
func TestBatch_recoversAfterScriptFlush(t *testing.T) {
	s := redistest.Start(t)
	c := newClient(t, s.Addr, true)
	ctx := context.Background()
	lk, _ := keys(t)
	for round := range 2 { // after SCRIPT FLUSH, then with the scripts loaded
		s.Cli(t, "SCRIPT", "FLUSH")
		if round == 1 {
			for _, sc := range gen.Scripts {
				s.Cli(t, "SCRIPT", "LOAD", sc.Source)
			}
		}
		b := gen.NewBatch(c)
		in0 := b.Inspect(lk)
		acq := b.Acquire(acquireKeys(lk), gen.AcquireArgs{Token: "tok", TTL: time.Minute})
		ref := b.Refresh(lk, "tok", time.Hour)
		in1 := b.Inspect(lk)
		rel := b.Release(gen.ReleaseKeys(acquireKeys(lk)), "tok", "")
		wait := b.Add(c.B().Wait().Numreplicas(0).Timeout(1).Build())
		if _, err := acq.Result(); err == nil {
			t.Fatal("Pending.Result before Do: no error")
		}
		b.Do(ctx)
		if r, err := in0.Result(); err != nil || r.Held {
			t.Fatalf("round %d: Inspect(free) = %+v, %v", round, r, err)
		}
		if r, err := acq.Result(); err != nil || !r.Acquired || r.Fence != uint64(round+1) {
			t.Fatalf("round %d: Acquire = %+v, %v", round, r, err)
		}
		if r, err := ref.Result(); err != nil || !r.Refreshed {
			t.Fatalf("round %d: Refresh = %+v, %v", round, r, err)
		}
		if r, err := in1.Result(); err != nil || r.Token != "tok" || r.TTL <= time.Minute {
			t.Fatalf("round %d: Inspect(held) = %+v, %v; want tok with the refreshed TTL", round, r, err)
		}
		if r, err := rel.Result(); err != nil || !r.Released {
			t.Fatalf("round %d: Release = %+v, %v", round, r, err)
		}
		res, err := wait.Result()
		if n, _ := res.AsInt64(); err != nil || n != 0 {
			t.Fatalf("round %d: WAIT = %v, %v", round, res, err)
		}
		for _, sc := range gen.Scripts {
			if got := s.Cli(t, "SCRIPT", "EXISTS", sc.SHA1); got != "1" {
				t.Fatalf("round %d: SCRIPT EXISTS %s = %s, want 1", round, sc.Name, got)
			}
		}
	}
}
