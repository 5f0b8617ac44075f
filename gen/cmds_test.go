package gen_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/klauthed/lock/gen"
	"github.com/klauthed/lock/internal/redistest"
)

// TestCmds_batchWithNOSCRIPTFallback sends every NAMECmd in a DoMulti batch
// on a real Redis: after SCRIPT FLUSH the EVALSHA replies NOSCRIPT (passed
// on unchanged by ParseNAME), NAMEEvalCmd runs the script and loads it, and
// NAMECmd then works.
func TestCmds_batchWithNOSCRIPTFallback(t *testing.T) {
	s := redistest.Start(t)
	c := newClient(t, s.Addr, true)
	ctx := context.Background()
	lk, fk := keys(t)
	s.Cli(t, "SCRIPT", "FLUSH")

	noScript := func(what string, err error) {
		t.Helper()
		if re, ok := rueidis.IsRedisErr(err); !ok || !re.IsNoScript() {
			t.Fatalf("%s after SCRIPT FLUSH: err = %v, want NOSCRIPT", what, err)
		}
	}
	res := c.DoMulti(ctx, gen.AcquireCmd(c, lk, fk, lk+":line", lk+":line:deadlines", lk+":line:args", "tok", time.Minute, 0, ""), c.B().Wait().Numreplicas(0).Timeout(1).Build())
	_, err := gen.ParseAcquire(res[0])
	noScript("AcquireCmd", err)
	if n, err := res[1].AsInt64(); err != nil || n != 0 {
		t.Fatalf("WAIT 0 = %d, %v; want 0 replicas", n, err)
	}
	a, err := gen.ParseAcquire(c.DoMulti(ctx, gen.AcquireEvalCmd(c, lk, fk, lk+":line", lk+":line:deadlines", lk+":line:args", "tok", time.Minute, 0, ""))[0])
	if err != nil || a != (gen.AcquireResult{Acquired: true, Fence: 1, TTL: time.Minute}) {
		t.Fatalf("AcquireEvalCmd = %+v, %v; want {true 1 1m}", a, err)
	}
	a, err = gen.ParseAcquire(c.Do(ctx, gen.AcquireCmd(c, lk, fk, lk+":line", lk+":line:deadlines", lk+":line:args", "other", time.Minute, 0, "")))
	if err != nil || a.Acquired || a.TTL <= 0 {
		t.Fatalf("AcquireCmd(other) = %+v, %v; want not acquired with the holder's TTL", a, err)
	}

	_, err = gen.ParseRefresh(c.Do(ctx, gen.RefreshCmd(c, lk, "tok", time.Hour)))
	noScript("RefreshCmd", err)
	r, err := gen.ParseRefresh(c.Do(ctx, gen.RefreshEvalCmd(c, lk, "tok", time.Hour)))
	if err != nil || !r.Refreshed {
		t.Fatalf("RefreshEvalCmd = %+v, %v; want refreshed", r, err)
	}
	if pttl := s.Cli(t, "PTTL", lk); len(pttl) < 7 { // an hour is 3600000 ms
		t.Fatalf("PTTL after refresh to 1h = %s", pttl)
	}

	_, err = gen.ParseInspect(c.Do(ctx, gen.InspectCmd(c, lk)))
	noScript("InspectCmd", err)
	in, err := gen.ParseInspect(c.Do(ctx, gen.InspectEvalCmd(c, lk)))
	if err != nil || !in.Held || in.Token != "tok" {
		t.Fatalf("InspectEvalCmd = %+v, %v; want held by tok", in, err)
	}

	_, err = gen.ParseRelease(c.Do(ctx, gen.ReleaseCmd(c, lk, fk, lk+":line", lk+":line:deadlines", lk+":line:args", "tok", "")))
	noScript("ReleaseCmd", err)
	rel, err := gen.ParseRelease(c.Do(ctx, gen.ReleaseEvalCmd(c, lk, fk, lk+":line", lk+":line:deadlines", lk+":line:args", "tok", "")))
	if err != nil || !rel.Released {
		t.Fatalf("ReleaseEvalCmd = %+v, %v; want released", rel, err)
	}
	rel, err = gen.ParseRelease(c.Do(ctx, gen.ReleaseCmd(c, lk, fk, lk+":line", lk+":line:deadlines", lk+":line:args", "tok", "")))
	if err != nil || rel.Released {
		t.Fatalf("ReleaseCmd(again) = %+v, %v; want not released, script now loaded", rel, err)
	}
	if got := s.Cli(t, "EXISTS", lk); got != "0" {
		t.Fatalf("EXISTS lock key after release = %s, want 0", got)
	}
}
