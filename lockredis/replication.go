package lockredis

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/klauthed/lock/gen"
	"github.com/redis/rueidis"
)

// DefaultWaitTimeout is the WAIT timeout used when Options.WaitReplicas is
// positive and Options.WaitTimeout is zero.
const DefaultWaitTimeout = 100 * time.Millisecond

// ErrNotReplicated is wrapped by the error of an acquisition or a Refresh
// that fewer than Options.WaitReplicas replicas acknowledged within
// Options.WaitTimeout. The message carries the counts.
var ErrNotReplicated = errors.New("lockredis: not acknowledged by enough replicas")

// waitCmd is WAIT waitN waitMS. rueidis marks WAIT as blocking, so a
// DoMulti holding it goes on one dedicated connection as a whole, and WAIT
// covers the writes of the commands before it in the batch.
func (m *Manager) waitCmd() rueidis.Completed {
	return m.client.B().Wait().Numreplicas(m.waitN).Timeout(m.waitMS).Build()
}

// notReplicated checks WAIT's reply: nil when at least waitN replicas
// acknowledged, else an error wrapping ErrNotReplicated, or WAIT's own
// error (context ended, connection lost, NOPERM, WAIT on a replica).
func (m *Manager) notReplicated(wait *gen.Pending[rueidis.RedisResult]) error {
	res, _ := wait.Result()
	n, err := res.AsInt64()
	if err != nil {
		return fmt.Errorf("wait for %d replicas: %w", m.waitN, err)
	}
	if n < m.waitN {
		return fmt.Errorf("%w: %d of %d replicas acknowledged within %dms",
			ErrNotReplicated, n, m.waitN, m.waitMS)
	}
	return nil
}

// acquireReplicated is attempt's acquire script followed by WAIT in one
// batch on one connection (gen.Batch handles NOSCRIPT). When the script
// took the lock but WAIT reports fewer than waitN acknowledgements, or
// failed, it releases the lock (bounded by CleanupTimeout) before returning
// the error. A batch that did not take the lock returns its result and
// ignores WAIT's reply.
func (m *Manager) acquireReplicated(ctx context.Context, l *Lease, ttl, lineTTL time.Duration) (
	gen.AcquireResult, error) {
	b := gen.NewBatch(m.client)
	acq := b.Acquire(l.k, m.acquireArgs(l, ttl, lineTTL))
	wait := b.Add(m.waitCmd())
	b.Do(ctx)
	r, err := acq.Result()
	if err != nil || !r.Acquired {
		return r, err
	}
	if err := m.notReplicated(wait); err != nil {
		_ = m.undo(l) // before returning: the caller is told it holds nothing
		return gen.AcquireResult{}, err
	}
	return r, nil
}

// refreshReplicated is gen.Refresh followed by WAIT in one batch on one
// connection. A refresh that extended the lease but was not acknowledged
// returns its result (Refreshed true) together with the WAIT error; the
// lease is left extended.
func (m *Manager) refreshReplicated(ctx context.Context, l *Lease, ttl time.Duration) (
	gen.RefreshResult, error) {
	b := gen.NewBatch(m.client)
	ref := b.Refresh(l.k.LockKey, string(l.token), ttl)
	wait := b.Add(m.waitCmd())
	b.Do(ctx)
	r, err := ref.Result()
	if err != nil || !r.Refreshed {
		return r, err
	}
	return r, m.notReplicated(wait)
}
