package lockmongo

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Field names of a lock document; see the package documentation.
const (
	fTok  = "tok"
	fExp  = "exp"
	fN    = "n"
	fBase = "base"
)

// lockDoc is a lock document read back from the server.
type lockDoc struct {
	tok  string
	exp  time.Time
	n    int64
	base int64
}

func (d lockDoc) fence() uint64 { return uint64(d.base) + uint64(d.n) }

// errBadDoc is wrapped by parseDoc's errors.
var errBadDoc = errors.New("lock document of the wrong shape")

// parseDoc checks that raw has the shape lockmongo writes and returns it.
func parseDoc(raw bson.Raw) (lockDoc, error) {
	var d lockDoc
	tok, err := raw.LookupErr(fTok)
	if err != nil || tok.Type != bson.TypeString {
		return d, fmt.Errorf("%w: %q is not a string", errBadDoc, fTok)
	}
	exp, err := raw.LookupErr(fExp)
	if err != nil || exp.Type != bson.TypeDateTime {
		return d, fmt.Errorf("%w: %q is not a date", errBadDoc, fExp)
	}
	n, err := raw.LookupErr(fN)
	if err != nil || n.Type != bson.TypeInt64 || n.Int64() < 1 {
		return d, fmt.Errorf("%w: %q is not a positive 64-bit integer", errBadDoc, fN)
	}
	base, err := raw.LookupErr(fBase)
	if err != nil || base.Type != bson.TypeInt64 || base.Int64() < 0 {
		return d, fmt.Errorf("%w: %q is not a non-negative 64-bit integer", errBadDoc, fBase)
	}
	d.tok = tok.StringValue()
	d.exp = exp.Time()
	d.n, d.base = n.Int64(), base.Int64()
	return d, nil
}

// shape matches documents whose fields have the types lockmongo writes, so
// that no update is applied to a document of another shape: such a document
// does not match, the upsert then meets its _id (a duplicate-key error), and
// the read that follows reports the shape.
var shape = bson.D{
	{Key: fTok, Value: bson.D{{Key: "$type", Value: "string"}}},
	{Key: fExp, Value: bson.D{{Key: "$type", Value: "date"}}},
	{Key: fN, Value: bson.D{{Key: "$type", Value: "long"}}},
	{Key: fBase, Value: bson.D{{Key: "$type", Value: "long"}}},
}

func docID(key string) bson.Binary { return bson.Binary{Subtype: 0, Data: []byte(key)} }

// bounds returns the server time interval for a request sent now, rounded
// outwards to whole milliseconds.
func (m *Manager) bounds() (lo, hi time.Time) {
	lo, hi = m.clock.bounds(time.Now(), m.ctx, m.background)
	lo = lo.Truncate(time.Millisecond)
	if t := hi.Truncate(time.Millisecond); t.Before(hi) {
		hi = t.Add(time.Millisecond)
	}
	return lo, hi
}

func ms(d time.Duration) int64 { return int64(d / time.Millisecond) }

// attemptResult is what one acquire attempt learned.
type attemptResult struct {
	acquired bool
	fence    uint64
	// remaining is the holder's remaining time as far as this Manager can
	// tell (a wake-up hint), when not acquired.
	remaining time.Duration
}

// acquireOnce makes one atomic attempt to take key for token; see the
// package documentation for the two time paths.
func (m *Manager) acquireOnce(ctx context.Context, key string, token string, ttl time.Duration,
) (attemptResult, error) {
	id := docID(key)
	opts := options.FindOneAndUpdate().SetUpsert(true).SetReturnDocument(options.After)
	var filter bson.D
	var update any
	if m.serverNow {
		filter = append(bson.D{{Key: "_id", Value: id}}, shape...)
		update = acquirePipeline(token, ttl)
	} else {
		lo, hi := m.bounds()
		free := bson.A{
			bson.D{{Key: fTok, Value: ""}},
			bson.D{{Key: fExp, Value: bson.D{{Key: "$lte", Value: bson.NewDateTimeFromTime(lo)}}}},
		}
		filter = append(bson.D{{Key: "_id", Value: id}, {Key: "$or", Value: free}}, shape...)
		update = bson.D{
			{Key: "$set", Value: bson.D{
				{Key: fTok, Value: token},
				{Key: fExp, Value: bson.NewDateTimeFromTime(hi.Add(ttl))},
			}},
			{Key: "$inc", Value: bson.D{{Key: fN, Value: int64(1)}}},
			{Key: "$setOnInsert", Value: bson.D{{Key: fBase, Value: lo.UnixMilli() * 1000}}},
		}
	}
	raw, err := m.coll.FindOneAndUpdate(ctx, filter, update, opts).Raw()
	if err == nil {
		d, err := parseDoc(raw)
		if err != nil {
			return attemptResult{}, err
		}
		if d.tok == token {
			return attemptResult{acquired: true, fence: d.fence()}, nil
		}
		return attemptResult{remaining: m.remaining(d)}, nil
	}
	if !mongo.IsDuplicateKeyError(err) {
		return attemptResult{}, err
	}
	// The document exists and did not match: held by someone, or of the
	// wrong shape, or (a retried attempt) held by this very token.
	raw, err = m.coll.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return attemptResult{}, nil // deleted in between: try again at once
	}
	if err != nil {
		return attemptResult{}, err
	}
	d, err := parseDoc(raw)
	if err != nil {
		return attemptResult{}, err
	}
	if d.tok == token && token != "" {
		// An earlier attempt with this token won but its reply was lost:
		// acquiring again is idempotent, like the Redis script's
		// same-token path, which resets the TTL and keeps the fence.
		ok, err := m.refreshOnce(ctx, key, token, ttl)
		if err != nil || !ok {
			return attemptResult{}, err
		}
		return attemptResult{acquired: true, fence: d.fence()}, nil
	}
	return attemptResult{remaining: m.remaining(d)}, nil
}

// remaining estimates how long the holder of d has left, counted from the
// middle of the server clock interval.
func (m *Manager) remaining(d lockDoc) time.Duration {
	if d.tok == "" {
		return 0
	}
	lo, hi := m.bounds()
	mid := lo.Add(hi.Sub(lo) / 2)
	return max(d.exp.Sub(mid), 0)
}

// acquirePipeline is the $$NOW path's acquire: one update pipeline whose
// $set sees the document as it was (a new one has only _id). The key is
// free when tok is empty or missing or exp has passed on the server's clock;
// then tok, exp and n are set. When tok is already token, only exp is
// reset. Otherwise the document is left as it was.
func acquirePipeline(token string, ttl time.Duration) mongo.Pipeline {
	free := bson.D{{Key: "$or", Value: bson.A{
		bson.D{{Key: "$eq", Value: bson.A{bson.D{{Key: "$ifNull", Value: bson.A{"$" + fTok, ""}}}, ""}}},
		bson.D{{Key: "$lte", Value: bson.A{"$" + fExp, "$$NOW"}}},
	}}}
	mine := bson.D{{Key: "$eq", Value: bson.A{"$" + fTok, token}}}
	newExp := bson.D{{Key: "$add", Value: bson.A{"$$NOW", ms(ttl)}}}
	cond := func(c, then, els any) bson.D {
		return bson.D{{Key: "$cond", Value: bson.A{c, then, els}}}
	}
	nowMicros := bson.D{{Key: "$multiply", Value: bson.A{
		bson.D{{Key: "$toLong", Value: "$$NOW"}}, int64(1000),
	}}}
	return mongo.Pipeline{{{Key: "$set", Value: bson.D{
		{Key: fTok, Value: cond(free, token, "$"+fTok)},
		{Key: fExp, Value: cond(bson.D{{Key: "$or", Value: bson.A{free, mine}}}, newExp, "$"+fExp)},
		{Key: fN, Value: cond(free, bson.D{{Key: "$add", Value: bson.A{
			bson.D{{Key: "$ifNull", Value: bson.A{"$" + fN, int64(0)}}}, int64(1),
		}}}, "$"+fN)},
		{Key: fBase, Value: bson.D{{Key: "$ifNull", Value: bson.A{"$" + fBase, nowMicros}}}},
	}}}}
}

// refreshOnce resets the expiry of key to ttl from now if token holds it and
// it has not expired. It reports whether it did.
func (m *Manager) refreshOnce(ctx context.Context, key, token string, ttl time.Duration,
) (bool, error) {
	var filter bson.D
	var update any
	if m.serverNow {
		filter = bson.D{
			{Key: "_id", Value: docID(key)}, {Key: fTok, Value: token},
			{Key: "$expr", Value: bson.D{{Key: "$gt", Value: bson.A{"$" + fExp, "$$NOW"}}}},
		}
		update = mongo.Pipeline{{{Key: "$set", Value: bson.D{{Key: fExp, Value: bson.D{
			{Key: "$add", Value: bson.A{"$$NOW", ms(ttl)}},
		}}}}}}
	} else {
		_, hi := m.bounds()
		// Only a lease that has surely not expired is extended.
		filter = bson.D{
			{Key: "_id", Value: docID(key)}, {Key: fTok, Value: token},
			{Key: fExp, Value: bson.D{{Key: "$gt", Value: bson.NewDateTimeFromTime(hi)}}},
		}
		update = bson.D{{Key: "$set", Value: bson.D{
			{Key: fExp, Value: bson.NewDateTimeFromTime(hi.Add(ttl))},
		}}}
	}
	res, err := m.coll.UpdateOne(ctx, filter, update)
	if err != nil {
		return false, err
	}
	return res.MatchedCount == 1, nil
}

// releaseOnce frees key if token holds it: tok becomes "" and exp the
// server's time ($currentDate), from which the free document's TTL counts.
func (m *Manager) releaseOnce(ctx context.Context, key, token string) error {
	_, err := m.coll.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: docID(key)}, {Key: fTok, Value: token}},
		bson.D{
			{Key: "$set", Value: bson.D{{Key: fTok, Value: ""}}},
			{Key: "$currentDate", Value: bson.D{{Key: fExp, Value: true}}},
		})
	return err
}

// handoffOnce moves key from token to next in one atomic update: the
// release of one lease of this Manager and the acquisition of the next
// waiter's. It reports the new fence, or 0 when token did not hold key
// (nothing changed).
func (m *Manager) handoffOnce(ctx context.Context, key, token, next string, ttl time.Duration,
) (uint64, error) {
	filter := append(bson.D{{Key: "_id", Value: docID(key)}, {Key: fTok, Value: token}}, shape...)
	var update any
	if m.serverNow {
		update = mongo.Pipeline{{{Key: "$set", Value: bson.D{
			{Key: fTok, Value: next},
			{Key: fExp, Value: bson.D{{Key: "$add", Value: bson.A{"$$NOW", ms(ttl)}}}},
			{Key: fN, Value: bson.D{{Key: "$add", Value: bson.A{"$" + fN, int64(1)}}}},
		}}}}
	} else {
		_, hi := m.bounds()
		update = bson.D{
			{Key: "$set", Value: bson.D{
				{Key: fTok, Value: next},
				{Key: fExp, Value: bson.NewDateTimeFromTime(hi.Add(ttl))},
			}},
			{Key: "$inc", Value: bson.D{{Key: fN, Value: int64(1)}}},
		}
	}
	opts := options.FindOneAndUpdate().SetReturnDocument(options.After)
	raw, err := m.coll.FindOneAndUpdate(ctx, filter, update, opts).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	d, err := parseDoc(raw)
	if err != nil {
		return 0, err
	}
	if d.tok != next {
		return 0, fmt.Errorf("%w: hand-off wrote %q but read back %q", errBadDoc, next, d.tok)
	}
	return d.fence(), nil
}
