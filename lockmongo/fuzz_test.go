package lockmongo_test

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockmongo"
	"github.com/klauthed/lock/lockmongo/internal/ferrettest"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// FuzzKeysAndTTLs feeds arbitrary keys and TTLs to TryAcquire on FerretDB.
// Bad input must give the right sentinel and change no document; good input
// must give a lease that round-trips: its acquisition document (named by
// the key and fence minus the key's base) has its token, a second
// TryAcquire sees contention, Refresh and Release work, Release marks the
// document released, and the next acquisition has a larger fence.
func FuzzKeysAndTTLs(f *testing.F) {
	srv := ferrettest.Start(f)
	coll := srv.Client(f).Database("lockmongo_fuzz").Collection(collName())
	m := newManager(f, coll, lockmongo.Options{})
	ctx := context.Background()

	f.Add("k", int64(time.Second))
	f.Add("", int64(time.Second))
	f.Add("k", int64(0))
	f.Add("k", int64(-1))
	f.Add("k", int64(time.Millisecond-1))
	f.Add("k", int64(lock.MaxTTL))
	f.Add("k", int64(lock.MaxTTL+1))
	f.Add("$where", int64(time.Minute))
	f.Add("a.b", int64(time.Minute))
	f.Add("\x00\xff", int64(time.Millisecond))
	f.Fuzz(func(t *testing.T, key string, ttlNs int64) {
		ttl := time.Duration(ttlNs)
		keyErr, ttlErr := lock.ValidateKey(key), lock.ValidateTTL(ttl, lock.MaxTTL)
		var before []bson.M
		if keyErr == nil {
			before = keyDocs(t, coll, key)
		}
		l, ok, err := m.TryAcquire(ctx, key, ttl)
		switch {
		case keyErr != nil && (!errors.Is(err, lock.ErrInvalidKey) || ok || l != nil):
			t.Fatalf("TryAcquire(%q, %v) = %v, %v; want ErrInvalidKey", key, ttl, ok, err)
		case keyErr == nil && ttlErr != nil && (!errors.Is(err, lock.ErrInvalidTTL) || ok || l != nil):
			t.Fatalf("TryAcquire(%q, %v) = %v, %v; want ErrInvalidTTL", key, ttl, ok, err)
		}
		if keyErr != nil {
			return
		}
		if ttlErr != nil {
			if after := keyDocs(t, coll, key); !reflect.DeepEqual(before, after) {
				t.Fatalf("rejected input changed the key's documents: %v, want %v", after, before)
			}
			return
		}
		if err != nil || !ok {
			t.Fatalf("TryAcquire(%q, %v) = %v, %v; want a lease", key, ttl, ok, err)
		}
		var meta struct {
			Base int64 `bson:"base"`
		}
		metaID := bson.D{{Key: "_id", Value: docID("h", key, 0)}}
		if err := coll.FindOne(ctx, metaID).Decode(&meta); err != nil {
			t.Fatalf("meta document of %q: %v", key, err)
		}
		id := bson.D{{Key: "_id", Value: docID("l", key, int64(l.Fence())-meta.Base)}}
		var doc struct {
			Tok string `bson:"tok"`
			Rel bool   `bson:"rel"`
		}
		if err := coll.FindOne(ctx, id).Decode(&doc); err != nil || doc.Tok != string(l.Token()) {
			t.Fatalf("document of %q: tok %q, %v; want %q", key, doc.Tok, err, l.Token())
		}
		if ttl > 50*time.Millisecond {
			if _, ok, err := m.TryAcquire(ctx, key, ttl); err != nil || ok {
				t.Fatalf("second TryAcquire(%q) = %v, %v; want contention", key, ok, err)
			}
			if err := l.Refresh(ctx, ttl); err != nil {
				t.Fatalf("Refresh = %v", err)
			}
		}
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Release = %v", err)
		}
		if err := coll.FindOne(ctx, id).Decode(&doc); err != nil || !doc.Rel {
			t.Fatalf("after Release: rel %v, %v; want true", doc.Rel, err)
		}
		n, ok, err := m.TryAcquire(ctx, key, time.Second)
		if err != nil || !ok || n.Fence() <= l.Fence() {
			t.Fatalf("TryAcquire after Release = %v, %v; want a larger fence than %d", ok, err, l.Fence())
		}
		if err := n.Release(ctx); err != nil {
			t.Fatalf("Release = %v", err)
		}
	})
}
