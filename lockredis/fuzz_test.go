package lockredis_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/klauthed/lock"
	"github.com/klauthed/lock/gen"
	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
)

// crc16 is CRC16-CCITT (XModem: polynomial 0x1021, initial value 0), the
// function of the Redis Cluster spec's key hash.
func crc16(b string) uint16 {
	var crc uint16
	for i := 0; i < len(b); i++ {
		crc ^= uint16(b[i]) << 8
		for j := 0; j < 8; j++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// slot is HASH_SLOT from the Redis Cluster spec: the CRC16 of the first
// "{...}" with non-empty content, else of the whole key, modulo 16384.
func slot(key string) uint16 {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			key = key[s+1 : s+1+e]
		}
	}
	return crc16(key) % 16384
}

func TestSlot_matchesRedisClusterSpec(t *testing.T) {
	// The spec's test vector, and rueidis's own slot for some names.
	if got := crc16("123456789"); got != 0x31C3 {
		t.Fatalf("crc16(123456789) = %#x, want 0x31c3", got)
	}
	mr := miniredis.RunT(t)
	m := newManager(t, []string{mr.Addr()},
		lockredis.Options{ClientOption: rueidis.ClientOption{DisableCache: true}})
	b := m.Client().B() // its builder computes slots
	for _, k := range []string{
		"foo", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}", "}{~}x}",
		lockredis.LockKey("p:", "}x"),
	} {
		cmd := b.Get().Key(k).Build()
		if got, want := slot(k), cmd.Slot(); got != want {
			t.Errorf("slot(%q) = %d, rueidis says %d", k, got, want)
		}
	}
}

// FuzzKeys checks, for any prefix and key, that the lock and fence names
// cannot escape the prefix and share a hash slot, and, on miniredis, that
// bad input gives the right sentinel without writing anything while good
// input gives a lease that round-trips: TryAcquire, gen.Inspect sees its
// token under LockKey, Release frees it, and every key written lies under
// the prefix.
func FuzzKeys(f *testing.F) {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(mr.Close)
	m := newManager(f, []string{mr.Addr()},
		lockredis.Options{ClientOption: rueidis.ClientOption{DisableCache: true}})
	ctx := context.Background()

	f.Add("k", int64(time.Second))
	f.Add("", int64(time.Second))
	f.Add("k", int64(0))
	f.Add("k", int64(lock.MaxTTL+1))
	f.Add("}", int64(time.Second))
	f.Add("}{~}", int64(time.Second))
	f.Add("{", int64(time.Second))
	f.Add("a}b{c", int64(time.Second))
	f.Add("x}:fence", int64(time.Second))
	f.Add("\x00\xff", int64(time.Millisecond))
	f.Fuzz(func(t *testing.T, key string, ttlNs int64) {
		ttl := time.Duration(ttlNs)
		for _, prefix := range []string{lockredis.DefaultPrefix, "", "a:b:"} {
			if key == "" {
				break
			}
			lk := lockredis.LockKey(prefix, key)
			if !strings.HasPrefix(lk, prefix+"{") && !strings.HasPrefix(lk, prefix+"}{~}") {
				t.Fatalf("LockKey(%q, %q) = %q escapes the prefix", prefix, key, lk)
			}
			for _, suffix := range []string{":fence", ":line", ":line:deadlines", ":line:args"} {
				if a, b := slot(lk), slot(lk+suffix); a != b {
					t.Fatalf("lock key %q (slot %d) and %q (slot %d) differ", lk, a, lk+suffix, b)
				}
			}
		}

		mr.FlushAll()
		keyErr := lock.ValidateKey(key)
		ttlErr := lock.ValidateTTL(ttl, lock.MaxTTL)
		l, ok, err := m.TryAcquire(ctx, key, ttl)
		switch {
		case keyErr != nil:
			if !errors.Is(err, lock.ErrInvalidKey) || ok || l != nil {
				t.Fatalf("TryAcquire(%q, %v) = %v, %v; want ErrInvalidKey", key, ttl, ok, err)
			}
		case ttlErr != nil:
			if !errors.Is(err, lock.ErrInvalidTTL) || ok || l != nil {
				t.Fatalf("TryAcquire(%q, %v) = %v, %v; want ErrInvalidTTL", key, ttl, ok, err)
			}
		}
		if keyErr != nil || ttlErr != nil {
			if keys := mr.Keys(); len(keys) != 0 {
				t.Fatalf("rejected input wrote keys %q", keys)
			}
			return
		}
		if err != nil || !ok {
			t.Fatalf("TryAcquire(%q, %v) = %v, %v; want a lease", key, ttl, ok, err)
		}
		lk := lockredis.LockKey(lockredis.DefaultPrefix, key)
		for _, k := range mr.Keys() {
			if k != lk && k != lk+":fence" {
				t.Fatalf("acquire of %q wrote %q; want only %q and its fence", key, k, lk)
			}
		}
		ins, err := gen.Inspect(ctx, m.Client(), lk)
		if err != nil || !ins.Held || ins.Token != string(l.Token()) {
			t.Fatalf("Inspect(%q) = %+v, %v; want held by %q", lk, ins, err, l.Token())
		}
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Release = %v", err)
		}
		if ins, err := gen.Inspect(ctx, m.Client(), lk); err != nil || ins.Held {
			t.Fatalf("Inspect after Release = %+v, %v; want free", ins, err)
		}
	})
}
