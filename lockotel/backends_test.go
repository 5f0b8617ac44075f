package lockotel_test

import (
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockmem"
	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
)

// memBackend is lockmem on a fake clock that expire and steal advance.
func memBackend() backend {
	clock := lockmem.NewFakeClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	const unit = time.Second
	return backend{
		name: "mem",
		new: func(t *testing.T) lock.Manager {
			m := lockmem.New(lockmem.Options{Clock: clock})
			t.Cleanup(func() { m.Close() })
			return m
		},
		expire: func(*testing.T) { clock.Advance(unit + unit/10) },
		// Run takes 20 units; past them on the fake clock the lease is
		// lost, long before Run's real-time refresh would run.
		steal:   func(*testing.T, string) { clock.Advance(21 * unit) },
		unit:    unit,
		watcher: true,
	}
}

// redisBackend is lockredis on a redis-server of its own.
func redisBackend(t *testing.T) backend {
	s := redistest.Start(t)
	const unit = 100 * time.Millisecond
	return backend{
		name: "redis",
		new: func(t *testing.T) lock.Manager {
			m, err := lockredis.New(lockredis.Options{
				ClientOption: rueidis.ClientOption{InitAddress: []string{s.Addr}},
			})
			if err != nil {
				t.Fatalf("lockredis.New: %v", err)
			}
			t.Cleanup(func() { m.Close() })
			return m
		},
		expire: func(*testing.T) { time.Sleep(unit + unit/2) },
		steal: func(t *testing.T, key string) {
			s.Cli(t, "DEL", lockredis.LockKey(lockredis.DefaultPrefix, key))
		},
		unit:    unit,
		watcher: true,
		stamped: true,
	}
}

func TestWrap_lockmem(t *testing.T) { scenario(t, memBackend()) }

func TestWrap_lockredis(t *testing.T) { scenario(t, redisBackend(t)) }
