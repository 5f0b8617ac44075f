package lockmongo_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/lockmongo"
	"github.com/klauthed/lock/lockmongo/internal/ferrettest"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// twoManagers returns two Managers on one collection, each with its own
// client, as two processes would have them.
func twoManagers(t *testing.T) (a, b *lockmongo.Manager, coll *mongo.Collection) {
	t.Helper()
	srv := ferrettest.Start(t)
	name := collName()
	coll = srv.Client(t).Database("lockmongo_test").Collection(name)
	a = newManager(t, coll, lockmongo.Options{})
	b = newManager(t, srv.Client(t).Database("lockmongo_test").Collection(name), lockmongo.Options{})
	return a, b, coll
}

func mustTake(t *testing.T, m lock.Manager, key string, ttl time.Duration) lock.Lease {
	t.Helper()
	l, ok, err := m.TryAcquire(ctxT(t), key, ttl)
	if err != nil || !ok {
		t.Fatalf("TryAcquire(%q) = %v, %v; want a lease", key, ok, err)
	}
	return l
}

func mustBeHeld(t *testing.T, m lock.Manager, key string) {
	t.Helper()
	if l, ok, err := m.TryAcquire(ctxT(t), key, time.Second); err != nil || ok {
		if ok {
			_ = l.Release(ctxT(t))
		}
		t.Fatalf("TryAcquire(%q) on a held key = %v, %v; want nil, false, nil", key, ok, err)
	}
}

// TestStaleHolder_acrossManagers_cannotRefreshOrReleaseNext: a lease that
// expired on one Manager, its key then taken by another, can neither extend
// nor free the new lease, and the fences grow across release and expiry.
func TestStaleHolder_acrossManagers_cannotRefreshOrReleaseNext(t *testing.T) {
	a, b, _ := twoManagers(t)
	const key = "stale"
	first := mustTake(t, a, key, time.Minute)
	if err := first.Release(ctxT(t)); err != nil {
		t.Fatalf("Release = %v", err)
	}
	old := mustTake(t, a, key, 100*time.Millisecond)
	if old.Fence() <= first.Fence() {
		t.Fatalf("fence after release = %d, want > %d", old.Fence(), first.Fence())
	}
	time.Sleep(150 * time.Millisecond)
	cur := mustTake(t, b, key, 200*time.Millisecond)
	if cur.Fence() <= old.Fence() {
		t.Fatalf("fence after expiry = %d, want > %d", cur.Fence(), old.Fence())
	}
	if err := old.Refresh(ctxT(t), time.Minute); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("stale Refresh = %v, want ErrNotHeld", err)
	}
	if err := old.Release(ctxT(t)); err != nil {
		t.Fatalf("stale Release = %v, want nil", err)
	}
	mustBeHeld(t, a, key)
	// The stale Refresh did not extend the new lease: it ends at its own
	// TTL, and the next fence is larger again.
	time.Sleep(250 * time.Millisecond)
	next := mustTake(t, a, key, time.Minute)
	if next.Fence() <= cur.Fence() {
		t.Fatalf("fence after the second expiry = %d, want > %d", next.Fence(), cur.Fence())
	}
	if err := cur.Refresh(ctxT(t), time.Minute); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("expired holder's Refresh = %v, want ErrNotHeld", err)
	}
	if err := next.Release(ctxT(t)); err != nil {
		t.Fatalf("Release = %v", err)
	}
}

// TestAcquire_otherManagerReleases_waiterPollsAndWins: a waiter whose holder
// is in another Manager finds the release by polling, well within its
// deadline, and gets a larger fence.
func TestAcquire_otherManagerReleases_waiterPollsAndWins(t *testing.T) {
	a, b, _ := twoManagers(t)
	const key = "poll"
	h := mustTake(t, a, key, time.Minute)
	got := make(chan lock.Lease, 1)
	errc := make(chan error, 1)
	go func() {
		l, err := b.Acquire(ctxT(t), key, time.Minute)
		errc <- err
		got <- l
	}()
	time.Sleep(50 * time.Millisecond)
	if err := h.Release(ctxT(t)); err != nil {
		t.Fatalf("Release = %v", err)
	}
	select {
	case err := <-errc:
		l := <-got
		if err != nil {
			t.Fatalf("Acquire = %v", err)
		}
		if l.Fence() <= h.Fence() {
			t.Fatalf("waiter's fence %d, want > %d", l.Fence(), h.Fence())
		}
		if err := l.Release(ctxT(t)); err != nil {
			t.Fatalf("Release = %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Acquire did not return within 2s of the release")
	}
}

// docID returns the _id lockmongo gives a key's document: prefix "h" (meta),
// "l" (acquisition n) or "q" (ticket n); see the package documentation.
func docID(prefix, key string, n int64) string {
	id := prefix + ":" + base64.RawURLEncoding.EncodeToString([]byte(key))
	if prefix == "h" {
		return id
	}
	return fmt.Sprintf("%s:%016x", id, n)
}

// keyDocs returns the documents of key, sorted by _id.
func keyDocs(t *testing.T, coll *mongo.Collection, key string) []bson.M {
	t.Helper()
	enc := base64.RawURLEncoding.EncodeToString([]byte(key))
	var ids bson.A
	for _, p := range []string{"h:", "l:", "q:"} {
		ids = append(ids, bson.D{{Key: "_id", Value: bson.D{
			{Key: "$gte", Value: p + enc}, {Key: "$lte", Value: p + enc + ";"},
		}}})
	}
	cur, err := coll.Find(ctxT(t), bson.D{{Key: "$or", Value: ids}},
		options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		t.Fatalf("Find = %v", err)
	}
	var docs []bson.M
	if err := cur.All(ctxT(t), &docs); err != nil {
		t.Fatalf("All = %v", err)
	}
	return docs
}

// TestAcquire_documentOfWrongShape_errorAndUnchanged: a document lockmongo
// did not write gives a wrapped ErrBadDocument with the key, and is left as
// it was.
func TestAcquire_documentOfWrongShape_errorAndUnchanged(t *testing.T) {
	a, _, coll := twoManagers(t)
	goodMeta := bson.D{{Key: "base", Value: int64(5)}, {Key: "n", Value: int64(0)}}
	for _, tc := range []struct {
		name string
		docs func(key string) []bson.D
	}{
		{"metaBaseString", func(key string) []bson.D {
			return []bson.D{{{Key: "_id", Value: docID("h", key, 0)},
				{Key: "base", Value: "x"}, {Key: "n", Value: int64(0)}}}
		}},
		{"leaseTokNumber", func(key string) []bson.D {
			return []bson.D{
				append(bson.D{{Key: "_id", Value: docID("h", key, 0)}}, goodMeta...),
				{{Key: "_id", Value: docID("l", key, 1)}, {Key: "tok", Value: 5}},
			}
		}},
		{"leaseNoRel", func(key string) []bson.D {
			return []bson.D{
				append(bson.D{{Key: "_id", Value: docID("h", key, 0)}}, goodMeta...),
				{{Key: "_id", Value: docID("l", key, 1)}, {Key: "tok", Value: ""},
					{Key: "exp", Value: bson.DateTime(0)}, {Key: "base", Value: int64(5)},
					{Key: "n", Value: int64(1)}, {Key: "srv", Value: int64(0)},
					{Key: "at", Value: bson.DateTime(0)}},
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "bad-" + tc.name
			for _, d := range tc.docs(key) {
				if _, err := coll.InsertOne(ctxT(t), d); err != nil {
					t.Fatalf("InsertOne = %v", err)
				}
			}
			before := keyDocs(t, coll, key)
			_, ok, err := a.TryAcquire(ctxT(t), key, time.Minute)
			if ok || !errors.Is(err, lockmongo.ErrBadDocument) || !strings.Contains(err.Error(), key) {
				t.Fatalf("TryAcquire = %v, %v; want ErrBadDocument naming the key", ok, err)
			}
			c, cancel := context.WithTimeout(ctxT(t), time.Second)
			defer cancel()
			if _, err := a.Acquire(c, key, time.Minute); !errors.Is(err, lockmongo.ErrBadDocument) {
				t.Fatalf("Acquire = %v; want ErrBadDocument", err)
			}
			if after := keyDocs(t, coll, key); !reflect.DeepEqual(before, after) {
				t.Fatalf("documents changed: %v, want %v", after, before)
			}
		})
	}
}

// TestNew_onFerretDB_reportsOffsetPath: FerretDB 1.x has no update
// pipelines; the only time path is the offset, and New rejects
// ServerTimeNow and out-of-range FreeAfter and LineTTL.
func TestNew_onFerretDB_reportsOffsetPath(t *testing.T) {
	srv := ferrettest.Start(t)
	coll := srv.Client(t).Database("lockmongo_test").Collection(collName())
	m := newManager(t, coll, lockmongo.Options{})
	info := m.Info()
	if info.ServerNow || info.TTLIndex || info.ChangeStreams {
		t.Fatalf("Info = %+v; want the offset path, no TTL index, no change streams", info)
	}
	if info.ClockErrorBound <= 0 || info.ClockErrorBound > time.Second {
		t.Fatalf("ClockErrorBound = %v; want a small positive bound", info.ClockErrorBound)
	}
	for _, o := range []lockmongo.Options{
		{ServerTime: lockmongo.ServerTimeNow},
		{FreeAfter: 10 * time.Millisecond},
		{LineTTL: time.Millisecond},
	} {
		if _, err := lockmongo.New(ctxT(t), coll, o); !errors.Is(err, lock.ErrInvalidOptions) {
			t.Fatalf("New(%+v) = %v; want ErrInvalidOptions", o, err)
		}
	}
	newManager(t, coll, lockmongo.Options{FreeAfter: time.Hour, GCInterval: -1})
}

func TestNew_badArguments_errorsWithoutIO(t *testing.T) {
	var nilCtx context.Context
	_, err := lockmongo.New(nilCtx, nil, lockmongo.Options{})
	if !errors.Is(err, lock.ErrInvalidArgument) {
		t.Fatalf("New(nil ctx) = %v; want ErrInvalidArgument", err)
	}
	_, err = lockmongo.New(ctxT(t), nil, lockmongo.Options{})
	if !errors.Is(err, lock.ErrInvalidArgument) {
		t.Fatalf("New(nil collection) = %v; want ErrInvalidArgument", err)
	}
}

func TestNew_badOptions_ErrInvalidOptions(t *testing.T) {
	srv := ferrettest.Start(t)
	coll := srv.Client(t).Database("lockmongo_test").Collection(collName())
	for _, o := range []lockmongo.Options{
		{MinBackoff: time.Second, MaxBackoff: time.Millisecond},
		{MinBackoff: -1},
		{ServerTime: 7},
	} {
		if _, err := lockmongo.New(ctxT(t), coll, o); !errors.Is(err, lock.ErrInvalidOptions) {
			t.Fatalf("New(%+v) = %v; want ErrInvalidOptions", o, err)
		}
	}
}

// TestNew_serverUnreachable_wrappedError: with nothing listening, New
// fails within its context and says so.
func TestNew_serverUnreachable_wrappedError(t *testing.T) {
	ctx, cancel := context.WithTimeout(ctxT(t), 300*time.Millisecond)
	defer cancel()
	uri := "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200"
	c2, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c2.Disconnect(context.Background()) }()
	coll := c2.Database("x").Collection("y")
	if _, err := lockmongo.New(ctx, coll, lockmongo.Options{}); err == nil {
		t.Fatal("New against a closed port = nil; want an error")
	}
}
