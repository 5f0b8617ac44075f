package harness

import (
	"context"
	"errors"
	"time"

	"github.com/bsm/redislock"
	"github.com/go-redsync/redsync/v4"
	redsyncgoredis "github.com/go-redsync/redsync/v4/redis/goredis/v9"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis/rueidislock"
)

// The peers, each set up the way its README shows, on the same Redis.

// Waiting in bsm/redislock is Obtain with a RetryStrategy. Its doc comment
// recommends ExponentialBackoff with a minimum of no less than 16ms; the
// 256ms cap is ours (it has no default).
const (
	redislockMinBackoff = 16 * time.Millisecond
	redislockMaxBackoff = 256 * time.Millisecond
)

func init() {
	register(BackendInfo{
		Name: "redsync",
		Note: "go-redsync/redsync v4, one go-redis v9 pool (README setup, go-redis defaults), " +
			"one Mutex per acquisition with WithExpiry(ttl); waits with its defaults " +
			"(32 tries, 50-250ms random delay), called again after ErrFailed",
		NeedsRedis: true,
		New:        newRedsync,
	})
	register(BackendInfo{
		Name: "redislock",
		Note: "bsm/redislock on go-redis v9 (README setup, go-redis defaults); waits with " +
			"RetryStrategy ExponentialBackoff(16ms, 256ms) (doc: min >= 16ms), called again when " +
			"Obtain's own ttl-long deadline passes",
		NeedsRedis: true,
		New:        newRedislock,
	})
	register(BackendInfo{
		Name: "rueidislock",
		Note: "rueidis rueidislock, KeyMajority 1 (README: one Redis instance), NoLoopTracking on " +
			"Redis >= 7.0.5 (README), KeyValidity = ttl; waits on client-side-caching invalidations",
		NeedsRedis: true,
		New:        newRueidislock,
	})
}

// --- redsync ---

type redsyncBackend struct {
	client *goredis.Client
	rs     *redsync.Redsync
}

func newRedsync(cfg Config) (Backend, error) {
	opt, err := cfg.GoRedisOptions()
	if err != nil {
		return nil, err
	}
	client := goredis.NewClient(opt)
	return &redsyncBackend{client: client, rs: redsync.New(redsyncgoredis.NewPool(client))}, nil
}

// redsyncHeld is a redsync.Mutex that holds its lock; converting the
// *Mutex costs no allocation.
type redsyncHeld redsync.Mutex

func (h *redsyncHeld) Release(ctx context.Context) error {
	_, err := (*redsync.Mutex)(h).UnlockContext(ctx)
	return err
}

func redsyncTaken(err error) bool {
	var taken *redsync.ErrTaken
	return errors.Is(err, redsync.ErrFailed) || errors.As(err, &taken)
}

func (b *redsyncBackend) TryAcquire(
	ctx context.Context,
	key string,
	ttl time.Duration,
) (Held, bool, error) {
	m := b.rs.NewMutex(key, redsync.WithExpiry(ttl))
	err := m.TryLockContext(ctx)
	if err == nil {
		return (*redsyncHeld)(m), true, nil
	}
	if redsyncTaken(err) {
		return nil, false, nil
	}
	return nil, false, err
}

func (b *redsyncBackend) Acquire(ctx context.Context, key string, ttl time.Duration) (Held, error) {
	m := b.rs.NewMutex(key, redsync.WithExpiry(ttl))
	for {
		err := m.LockContext(ctx)
		if err == nil {
			return (*redsyncHeld)(m), nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !redsyncTaken(err) {
			return nil, err
		}
		// LockContext gave up after its tries: "you may retry to acquire
		// the lock by calling this method again" (its doc).
	}
}

func (b *redsyncBackend) Close() error { return b.client.Close() }

// --- bsm/redislock ---

type redislockBackend struct {
	client *goredis.Client
	locker *redislock.Client
}

func newRedislock(cfg Config) (Backend, error) {
	opt, err := cfg.GoRedisOptions()
	if err != nil {
		return nil, err
	}
	client := goredis.NewClient(opt)
	return &redislockBackend{client: client, locker: redislock.New(client)}, nil
}

func (b *redislockBackend) TryAcquire(
	ctx context.Context,
	key string,
	ttl time.Duration,
) (Held, bool, error) {
	l, err := b.locker.Obtain(ctx, key, ttl, nil) // nil options: one attempt
	if err == nil {
		return l, true, nil
	}
	if errors.Is(err, redislock.ErrNotObtained) {
		return nil, false, nil
	}
	return nil, false, err
}

func (b *redislockBackend) Acquire(
	ctx context.Context,
	key string,
	ttl time.Duration,
) (Held, error) {
	for {
		l, err := b.locker.Obtain(ctx, key, ttl, &redislock.Options{
			RetryStrategy: redislock.ExponentialBackoff(redislockMinBackoff, redislockMaxBackoff),
		})
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// Obtain without a deadline on ctx gives up after ttl (with
		// context.DeadlineExceeded) or when the strategy stops
		// (ErrNotObtained); a waiter then asks again.
		if !errors.Is(err, redislock.ErrNotObtained) && !errors.Is(err, context.DeadlineExceeded) {
			return nil, err
		}
	}
}

func (b *redislockBackend) Close() error { return b.client.Close() }

// --- rueidislock ---

type rueidislockBackend struct{ locker rueidislock.Locker }

func newRueidislock(cfg Config) (Backend, error) {
	opt, err := cfg.RueidisOption()
	if err != nil {
		return nil, err
	}
	locker, err := rueidislock.NewLocker(rueidislock.LockerOption{
		ClientOption:   opt,
		KeyMajority:    1,
		NoLoopTracking: cfg.Target.AtLeast(7, 0, 5),
		KeyValidity:    cfg.TTL,
	})
	if err != nil {
		return nil, err
	}
	return &rueidislockBackend{locker: locker}, nil
}

// cancelHeld is the lock's cancel function; rueidislock releases the lock
// when it is called and returns once the key is deleted.
type cancelHeld context.CancelFunc

func (h cancelHeld) Release(context.Context) error { h(); return nil }

// rueidislock's lease time is KeyValidity, fixed per Locker; the ttl
// arguments below are the same value (Config.TTL).

func (b *rueidislockBackend) TryAcquire(
	ctx context.Context,
	key string,
	_ time.Duration,
) (Held, bool, error) {
	_, cancel, err := b.locker.TryWithContext(ctx, key)
	if err == nil {
		return cancelHeld(cancel), true, nil
	}
	if errors.Is(err, rueidislock.ErrNotLocked) {
		return nil, false, nil
	}
	return nil, false, err
}

func (b *rueidislockBackend) Acquire(
	ctx context.Context,
	key string,
	_ time.Duration,
) (Held, error) {
	_, cancel, err := b.locker.WithContext(ctx, key)
	if err != nil {
		return nil, err
	}
	return cancelHeld(cancel), nil
}

func (b *rueidislockBackend) Close() error { b.locker.Close(); return nil }
