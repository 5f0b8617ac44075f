package lock_test

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/klauthed/lock"
)

func TestValidateKey(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  string
		ok   bool
	}{
		{"empty", "", false},
		{"plain", "orders:42", true},
		{"braces", "{a}b{c}", true},
		{"nul", "a\x00b", true},
		{"invalidUTF8", "\xff\xfe", true},
		{"atLimit", strings.Repeat("k", lock.MaxKeyLen), true},
		{"overLimit", strings.Repeat("k", lock.MaxKeyLen+1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := lock.ValidateKey(tc.key)
			if tc.ok && err != nil {
				t.Fatalf("ValidateKey: %v", err)
			}
			if !tc.ok && !errors.Is(err, lock.ErrInvalidKey) {
				t.Fatalf("ValidateKey = %v, want ErrInvalidKey", err)
			}
		})
	}
}

func TestValidateTTL(t *testing.T) {
	for _, tc := range []struct {
		ttl time.Duration
		ok  bool
	}{
		{0, false},
		{-time.Second, false},
		{999 * time.Microsecond, false},
		{time.Millisecond, true},
		{lock.MaxTTL, true},
		{lock.MaxTTL + time.Millisecond, false},
	} {
		err := lock.ValidateTTL(tc.ttl, lock.MaxTTL)
		if tc.ok && err != nil {
			t.Errorf("ValidateTTL(%v): %v", tc.ttl, err)
		}
		if !tc.ok && !errors.Is(err, lock.ErrInvalidTTL) {
			t.Errorf("ValidateTTL(%v) = %v, want ErrInvalidTTL", tc.ttl, err)
		}
	}
}

func TestNewToken_shapeAndUniqueness(t *testing.T) {
	const n = 100000
	seen := make(map[lock.Token]struct{}, n)
	for range n {
		tok := lock.NewToken()
		if len(tok) != lock.TokenLen {
			t.Fatalf("len(%q) = %d, want %d", tok, len(tok), lock.TokenLen)
		}
		raw, err := base64.RawURLEncoding.DecodeString(string(tok))
		if err != nil || len(raw) != 16 {
			t.Fatalf("token %q is not 16 bytes of raw URL base64: %v", tok, err)
		}
		if _, dup := seen[tok]; dup {
			t.Fatalf("token %q repeated after %d draws", tok, len(seen))
		}
		seen[tok] = struct{}{}
	}
}

func TestRun_badInput(t *testing.T) {
	ctx := context.Background()
	called := false
	fn := func(context.Context, lock.Lease) error { called = true; return nil }
	if err := lock.Run(ctx, nil, "k", lock.RunOptions{}, fn); !errors.Is(err, lock.ErrClosed) {
		t.Errorf("Run(nil manager) = %v, want ErrClosed", err)
	}
	var m lock.Manager = noManager{}
	err := lock.Run(ctx, m, "k", lock.RunOptions{TTL: -1}, fn)
	if !errors.Is(err, lock.ErrInvalidTTL) {
		t.Errorf("Run(TTL -1) = %v, want ErrInvalidTTL", err)
	}
	err = lock.Run(ctx, m, "k", lock.RunOptions{TTL: time.Second, RefreshEvery: time.Second}, fn)
	if !errors.Is(err, lock.ErrInvalidOptions) {
		t.Errorf("Run(RefreshEvery == TTL) = %v, want ErrInvalidOptions", err)
	}
	if called {
		t.Error("fn was called despite bad input")
	}
}

// noManager fails every call; Run must reject bad options before using it.
type noManager struct{}

func (noManager) TryAcquire(context.Context, string, time.Duration) (lock.Lease, bool, error) {
	return nil, false, errors.New("noManager: called")
}

func (noManager) Acquire(context.Context, string, time.Duration) (lock.Lease, error) {
	return nil, errors.New("noManager: called")
}

// TestRun_usesSentStampForFirstDeadline: Run counts the lease's first
// validity from Stamped.Sent, not from when Acquire returned, so a lease
// whose winning request left long ago (its reply was slow) is treated as
// ending TTL after that request, and fn's context is cancelled then.
func TestRun_usesSentStampForFirstDeadline(t *testing.T) {
	const ttl = 10 * time.Second
	m := stampedManager{sent: time.Now().Add(-ttl + 50*time.Millisecond)}
	start := time.Now()
	opts := lock.RunOptions{TTL: ttl, RefreshEvery: 5 * time.Second}
	err := lock.Run(context.Background(), m, "k", opts,
		func(ctx context.Context, _ lock.Lease) error {
			select {
			case <-ctx.Done():
				if cause := context.Cause(ctx); !errors.Is(cause, lock.ErrNotHeld) {
					t.Errorf("cause = %v, want ErrNotHeld", cause)
				}
			case <-time.After(3 * time.Second):
				t.Error("fn's context not cancelled within 3s of the lease's stamped end")
			}
			return nil
		})
	if !errors.Is(err, lock.ErrNotHeld) {
		t.Errorf("Run = %v, want ErrNotHeld", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Run took %v", d)
	}
}

// stampedManager grants every Acquire at once with a lease stamped sent;
// its leases cannot be refreshed (Refresh waits for its context).
type stampedManager struct{ sent time.Time }

func (m stampedManager) TryAcquire(
	ctx context.Context, key string, ttl time.Duration,
) (lock.Lease, bool, error) {
	l, err := m.Acquire(ctx, key, ttl)
	return l, err == nil, err
}

func (m stampedManager) Acquire(
	_ context.Context, key string, _ time.Duration,
) (lock.Lease, error) {
	return stampedLease{key: key, sent: m.sent}, nil
}

type stampedLease struct {
	key  string
	sent time.Time
}

func (l stampedLease) Key() string       { return l.key }
func (l stampedLease) Token() lock.Token { return "stamped" }
func (l stampedLease) Fence() uint64     { return 1 }
func (l stampedLease) Sent() time.Time   { return l.sent }
func (l stampedLease) Release(context.Context) error {
	return nil
}

func (l stampedLease) Refresh(ctx context.Context, _ time.Duration) error {
	<-ctx.Done()
	return ctx.Err()
}
