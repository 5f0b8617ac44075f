package harness

import (
	"context"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockmem"
)

func init() {
	register(BackendInfo{
		Name:       "lockmem",
		Note:       "this project's in-process lockmem (defaults); no Redis, for scale",
		NeedsRedis: false,
		New: func(Config) (Backend, error) {
			m := lockmem.New(lockmem.Options{})
			return managerBackend{m: m, close: m.Close}, nil
		},
	})
}

// managerBackend runs any lock.Manager; a lock.Lease is a Held as it is, so
// the adapter adds no allocation.
type managerBackend struct {
	m     lock.Manager
	close func() error
}

func (b managerBackend) TryAcquire(
	ctx context.Context,
	key string,
	ttl time.Duration,
) (Held, bool, error) {
	l, ok, err := b.m.TryAcquire(ctx, key, ttl)
	if !ok || err != nil {
		return nil, ok, err
	}
	return l, true, nil
}

func (b managerBackend) Acquire(ctx context.Context, key string, ttl time.Duration) (Held, error) {
	l, err := b.m.Acquire(ctx, key, ttl)
	if err != nil {
		return nil, err
	}
	return l, nil
}

func (b managerBackend) Close() error { return b.close() }
