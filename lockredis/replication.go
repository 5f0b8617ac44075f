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
func (m *Manager) notReplicated(res rueidis.RedisResult) error {
	n, err := res.AsInt64()
	if err != nil {
		return fmt.Errorf("wait for %d replicas: %w", m.waitN, err)
	}
	if n < m.waitN {
		return fmt.Errorf("%w: %d of %d replicas acknowledged within %dms", ErrNotReplicated, n, m.waitN, m.waitMS)
	}
	return nil
}

// acquireReplicated is gen.Acquire followed by WAIT in one batch on one
// connection (EVAL instead of EVALSHA after NOSCRIPT). When the script took
// the lock but WAIT reports fewer than waitN acknowledgements, or failed, it
// releases the lock (best effort, on a short context of its own) and returns
// the error. A batch that did not take the lock returns its result and
// ignores WAIT's reply.
func (m *Manager) acquireReplicated(ctx context.Context, l *Lease, ttl time.Duration) (gen.AcquireResult, error) {
	c := m.client
	tok := string(l.token)
	res := c.DoMulti(ctx, gen.AcquireCmd(c, l.lockKey, l.fenceKey, tok, ttl), m.waitCmd())
	r, err := gen.ParseAcquire(res[0])
	if re, ok := rueidis.IsRedisErr(err); ok && re.IsNoScript() {
		res = c.DoMulti(ctx, gen.AcquireEvalCmd(c, l.lockKey, l.fenceKey, tok, ttl), m.waitCmd())
		r, err = gen.ParseAcquire(res[0])
	}
	if err != nil || !r.Acquired {
		return r, err
	}
	if err := m.notReplicated(res[1]); err != nil {
		if !isCtxErr(err) || m.cleanup <= 0 {
			// A context error is cleaned up by attempt, within
			// CleanupTimeout; everything else is released here.
			m.releaseUnreplicated(ctx, l, ttl)
		}
		return gen.AcquireResult{}, err
	}
	return r, nil
}

// releaseUnreplicated deletes l's lock if it still holds l's token, on a
// context of its own bounded by CleanupTimeout (DefaultCleanupTimeout when
// that is disabled) and by ttl. On failure the lock ends at its TTL.
func (m *Manager) releaseUnreplicated(ctx context.Context, l *Lease, ttl time.Duration) {
	d := m.cleanup
	if d <= 0 {
		d = DefaultCleanupTimeout
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(d, ttl))
	defer cancel()
	_, _ = gen.Release(cctx, m.client, l.lockKey, string(l.token))
}

// refreshReplicated is gen.Refresh followed by WAIT in one batch on one
// connection. A refresh that extended the lease but was not acknowledged
// returns its result (Refreshed true) together with the WAIT error; the
// lease is left extended.
func (m *Manager) refreshReplicated(ctx context.Context, l *Lease, ttl time.Duration) (gen.RefreshResult, error) {
	c := m.client
	tok := string(l.token)
	res := c.DoMulti(ctx, gen.RefreshCmd(c, l.lockKey, tok, ttl), m.waitCmd())
	r, err := gen.ParseRefresh(res[0])
	if re, ok := rueidis.IsRedisErr(err); ok && re.IsNoScript() {
		res = c.DoMulti(ctx, gen.RefreshEvalCmd(c, l.lockKey, tok, ttl), m.waitCmd())
		r, err = gen.ParseRefresh(res[0])
	}
	if err != nil || !r.Refreshed {
		return r, err
	}
	return r, m.notReplicated(res[1])
}
