package lockmem_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockmem"
)

// FuzzTryAcquire feeds arbitrary keys and TTLs to TryAcquire. Bad input must
// give the right sentinel and leave the key free; good input must give a
// lease that round-trips: the key is then held (a second TryAcquire sees
// contention), Refresh and Release work, and the next acquisition has a
// larger fence. Nothing may panic.
func FuzzTryAcquire(f *testing.F) {
	f.Add("k", int64(time.Second))
	f.Add("", int64(time.Second))
	f.Add("k", int64(0))
	f.Add("k", int64(-1))
	f.Add("k", int64(time.Millisecond-1))
	f.Add("k", int64(lock.MaxTTL))
	f.Add("k", int64(lock.MaxTTL+1))
	f.Add("}{", int64(time.Minute))
	f.Add("\x00\xff", int64(time.Millisecond))
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, key string, ttlNs int64) {
		m := lockmem.New(lockmem.Options{Clock: lockmem.NewFakeClock(time.Unix(0, 0))})
		defer m.Close()
		ttl := time.Duration(ttlNs)
		keyErr := lock.ValidateKey(key)
		ttlErr := lock.ValidateTTL(ttl, lock.MaxTTL)
		l, ok, err := m.TryAcquire(ctx, key, ttl)
		switch {
		case keyErr != nil:
			if !errors.Is(err, lock.ErrInvalidKey) || l != nil || ok {
				t.Fatalf("TryAcquire(%q, %v) = %v, %v, %v; want ErrInvalidKey", key, ttl, l, ok, err)
			}
			return
		case ttlErr != nil:
			if !errors.Is(err, lock.ErrInvalidTTL) || l != nil || ok {
				t.Fatalf("TryAcquire(%q, %v) = %v, %v, %v; want ErrInvalidTTL", key, ttl, l, ok, err)
			}
			// No half-written key: a valid acquire now succeeds.
			if _, ok, err := m.TryAcquire(ctx, key, time.Second); err != nil || !ok {
				t.Fatalf("after a rejected ttl, TryAcquire(%q) = %v, %v; want the key free", key, ok, err)
			}
			return
		}
		if err != nil || !ok {
			t.Fatalf("TryAcquire(%q, %v) = %v, %v; want a lease", key, ttl, ok, err)
		}
		if l.Key() != key || len(l.Token()) != lock.TokenLen || l.Fence() == 0 {
			t.Fatalf("lease key %q token %q fence %d", l.Key(), l.Token(), l.Fence())
		}
		if _, ok, err := m.TryAcquire(ctx, key, ttl); err != nil || ok {
			t.Fatalf("second TryAcquire(%q) = %v, %v; want contention", key, ok, err)
		}
		if err := l.Refresh(ctx, ttl); err != nil {
			t.Fatalf("Refresh = %v", err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Release = %v", err)
		}
		n, ok, err := m.TryAcquire(ctx, key, ttl)
		if err != nil || !ok || n.Fence() <= l.Fence() {
			t.Fatalf("TryAcquire after Release = %v, %v (fence %d after %d); "+
				"want a larger fence", ok, err, fenceOf(n), l.Fence())
		}
	})
}

func fenceOf(l lock.Lease) uint64 {
	if l == nil {
		return 0
	}
	return l.Fence()
}
