package harness

import (
	"context"
	"time"

	"github.com/klauthed/lock"
	"github.com/redis/rueidis"
)

// rawSpin is the raw floor's polling period when it has to wait (contended
// scenarios only): it has no notification, so it starts an attempt every
// rawSpin, on a time.Ticker, whatever the round trip took. An attempt that
// took longer than rawSpin is followed by the next one at once (the ticker
// drops the ticks it missed), so a waiter never polls faster than 1 kHz.
const rawSpin = time.Millisecond

func init() {
	register(BackendInfo{
		Name: "raw",
		Note: "floor: rueidis SET NX PX + compare-and-delete EVALSHA (rueidis.NewLuaScript), " +
			"client built like lockredis's; waits by polling SET NX every 1ms on a ticker (no notification)",
		NeedsRedis: true,
		New:        newRaw,
	})
}

// rawRelease is the compare-and-delete every Redis lock uses: delete the key
// only if it still holds our token.
var rawRelease = rueidis.NewLuaScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then ` +
	`return redis.call("DEL", KEYS[1]) end return 0`)

// raw is the floor: the least any correct single-Redis lock must do, one
// SET NX PX to take the key and one EVALSHA to give it back, on a rueidis
// client with the same options lockredis gets (auto-pipelining, default
// client-side-caching connection setup) and the same token source.
type raw struct{ c rueidis.Client }

func newRaw(cfg Config) (Backend, error) {
	opt, err := cfg.RueidisOption()
	if err != nil {
		return nil, err
	}
	c, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, err
	}
	return &raw{c: c}, nil
}

type rawHeld struct {
	r   *raw
	key string
	tok string
}

func (r *raw) TryAcquire(ctx context.Context, key string, ttl time.Duration) (Held, bool, error) {
	tok := string(lock.NewToken())
	err := r.c.Do(ctx,
		r.c.B().Set().Key(key).Value(tok).Nx().PxMilliseconds(ttl.Milliseconds()).Build()).Error()
	if rueidis.IsRedisNil(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return &rawHeld{r: r, key: key, tok: tok}, true, nil
}

func (r *raw) Acquire(ctx context.Context, key string, ttl time.Duration) (Held, error) {
	var tick *time.Ticker
	for {
		h, ok, err := r.TryAcquire(ctx, key, ttl)
		if err != nil || ok {
			if tick != nil {
				tick.Stop()
			}
			return h, err
		}
		if tick == nil {
			// Started after the first miss: attempts are rawSpin apart
			// from there on, not rawSpin plus a round trip.
			tick = time.NewTicker(rawSpin)
		}
		select {
		case <-ctx.Done():
			tick.Stop()
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

func (h *rawHeld) Release(ctx context.Context) error {
	return rawRelease.Exec(ctx, h.r.c, []string{h.key}, []string{h.tok}).Error()
}

func (r *raw) Close() error { r.c.Close(); return nil }
