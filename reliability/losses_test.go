package reliability

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
)

// lossCheck tells false losses from real ones. When lock.Run tells a holder
// that its lease is lost (fn's context ends with a cause wrapping
// lock.ErrNotHeld), the holder asks Redis, before it returns (so before
// lock.Run's own Release), whether the key still holds its token: one
// plain GET on a connection of its own (no client-side cache, no proxy, no
// toxics).
//
// A token is never written back once the key lost it (only the acquire
// script with the same token could, and a lease never re-acquires), so a
// GET that returns the lease's token proves the token was held when the
// loss was reported: a false loss. A GET that returns anything else counts
// as a real loss; strictly it proves the token was gone at the GET, a moment
// after the report. A GET that fails or times out (Redis restarting,
// paused, its connection killed) proves nothing and is counted as unknown:
// only definite observations count.
//
// lock.Run reports a loss for three causes (run.go): the backend's watch
// saw the key change hands (Lease.Lost), a Refresh returned ErrNotHeld, or
// the TTL passed on the local clock without a successful refresh. The
// first two are statements about Redis and must never be false. The third
// is a deliberate, conservative local bound (the lease's TTL started no
// earlier than the acquire was sent), so Redis may still hold the token for
// up to one request's latency after it: such losses are counted apart as
// expired (and expiredHeld when the GET still found the token), never as
// false.
type lossCheck struct {
	probe  rueidis.Client
	prefix string

	mu                    sync.Mutex
	real, falses, unknown int
	expired, expiredHeld  int
	late                  int
	falseList             []string
}

// unobserved counts a loss lock.Run reported after fn had returned: Run
// released the key before anyone could look, so it is not classified.
func (lc *lossCheck) unobserved() {
	lc.mu.Lock()
	lc.late++
	lc.mu.Unlock()
}

func newLossCheck(addr string) (*lossCheck, error) {
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:  []string{addr},
		DisableCache: true,
		ClientName:   "lossprobe",
	})
	if err != nil {
		return nil, err
	}
	return &lossCheck{probe: c, prefix: lockredis.DefaultPrefix}, nil
}

func (lc *lossCheck) close() { lc.probe.Close() }

// observe classifies the loss of r reported with cause. It blocks for at
// most one GET (bounded to 500ms).
func (lc *lossCheck) observe(r *leaseRec, cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	get := lc.probe.B().Get().Key(lockredis.LockKey(lc.prefix, r.key)).Build()
	got, err := lc.probe.Do(ctx, get).ToString()
	held := err == nil && got == string(r.token)
	definite := err == nil || rueidis.IsRedisNil(err)
	expired := strings.Contains(cause.Error(), "ttl passed")
	lc.mu.Lock()
	defer lc.mu.Unlock()
	switch {
	case expired:
		lc.expired++
		if held {
			lc.expiredHeld++
		}
	case !definite:
		lc.unknown++
	case held:
		lc.falses++
		lc.falseList = append(lc.falseList, fmt.Sprintf(
			"client %d key %q fence %d: %v, but GET still returned its token",
			r.client, r.key, r.fence, cause))
	default:
		lc.real++
	}
}

// lostCause returns the cause of fctx's end if it reports a lost lease,
// else nil.
func lostCause(fctx context.Context) error {
	if c := context.Cause(fctx); errors.Is(c, lock.ErrNotHeld) {
		return c
	}
	return nil
}
