package lockmongo

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Field names of the documents; see the package documentation.
const (
	fTok  = "tok"
	fExp  = "exp"
	fRel  = "rel"
	fBase = "base"
	fN    = "n"
	fSrv  = "srv"
	fAt   = "at"
	fGone = "gone"
)

// Prefixes of the three kinds of _id. The key is base64url-encoded (no
// padding), so it never contains ':' or ';' and the prefix "l:<key>:" names
// exactly one key's leases.
const (
	pMeta   = "h:"
	pLease  = "l:"
	pTicket = "q:"
)

func encKey(key string) string { return base64.RawURLEncoding.EncodeToString([]byte(key)) }

func metaID(key string) string { return pMeta + encKey(key) }

func seqID(prefix, key string, n int64) string {
	return fmt.Sprintf("%s%s:%016x", prefix, encKey(key), n)
}

func leaseID(key string, n int64) string  { return seqID(pLease, key, n) }
func ticketID(key string, s int64) string { return seqID(pTicket, key, s) }

// errBadDoc is wrapped by the parse errors.
var errBadDoc = errors.New("lockmongo: lock document of the wrong shape")

func lookup(raw bson.Raw, f string, t bson.Type, what string) (bson.RawValue, error) {
	v, err := raw.LookupErr(f)
	if err != nil || v.Type != t {
		return v, fmt.Errorf("%w: %q is not %s", errBadDoc, f, what)
	}
	return v, nil
}

// leaseDoc is one acquisition of a key, read back from the server.
type leaseDoc struct {
	tok  string
	exp  time.Time
	rel  bool
	base int64
	n    int64
	srv  int64
	at   time.Time
}

func (d *leaseDoc) fence() uint64 { return uint64(d.base) + uint64(d.n) }

func parseLease(raw bson.Raw, n int64) (*leaseDoc, error) {
	var d leaseDoc
	var v bson.RawValue
	var err error
	if v, err = lookup(raw, fTok, bson.TypeString, "a string"); err != nil {
		return nil, err
	}
	d.tok = v.StringValue()
	if v, err = lookup(raw, fExp, bson.TypeDateTime, "a date"); err != nil {
		return nil, err
	}
	d.exp = v.Time()
	if v, err = lookup(raw, fRel, bson.TypeBoolean, "a boolean"); err != nil {
		return nil, err
	}
	d.rel = v.Boolean()
	for _, f := range []struct {
		name string
		p    *int64
	}{{fBase, &d.base}, {fN, &d.n}, {fSrv, &d.srv}} {
		if v, err = lookup(raw, f.name, bson.TypeInt64, "a 64-bit integer"); err != nil {
			return nil, err
		}
		if *f.p = v.Int64(); *f.p < 0 {
			return nil, fmt.Errorf("%w: %q is negative", errBadDoc, f.name)
		}
	}
	if d.n != n {
		return nil, fmt.Errorf("%w: %q is %d in the document of acquisition %d", errBadDoc, fN, d.n, n)
	}
	if v, err = lookup(raw, fAt, bson.TypeDateTime, "a date"); err != nil {
		return nil, err
	}
	d.at = v.Time()
	return &d, nil
}

// metaDoc is a key's meta document: the fence base and a hint of the
// latest acquisition number.
type metaDoc struct {
	base int64
	n    int64
}

func parseMeta(raw bson.Raw) (metaDoc, error) {
	var d metaDoc
	v, err := lookup(raw, fBase, bson.TypeInt64, "a 64-bit integer")
	if err != nil {
		return d, err
	}
	d.base = v.Int64()
	if v, err = lookup(raw, fN, bson.TypeInt64, "a 64-bit integer"); err != nil {
		return d, err
	}
	d.n = v.Int64()
	if d.base < 0 || d.n < 0 {
		return d, fmt.Errorf("%w: negative %q or %q", errBadDoc, fBase, fN)
	}
	return d, nil
}

// ticketDoc is a waiter's place in a key's line.
type ticketDoc struct {
	tok  string
	exp  time.Time
	gone bool
}

func parseTicket(raw bson.Raw) (ticketDoc, error) {
	var d ticketDoc
	v, err := lookup(raw, fTok, bson.TypeString, "a string")
	if err != nil {
		return d, err
	}
	d.tok = v.StringValue()
	if v, err = lookup(raw, fExp, bson.TypeDateTime, "a date"); err != nil {
		return d, err
	}
	d.exp = v.Time()
	if v, err = lookup(raw, fGone, bson.TypeBoolean, "a boolean"); err != nil {
		return d, err
	}
	d.gone = v.Boolean()
	return d, nil
}

func date(t time.Time) bson.DateTime { return bson.NewDateTimeFromTime(t) }

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

// findRaw reads the document with _id id; ok is false when there is none.
// Every read and write of the hot paths names one string _id and nothing
// else: the only filter FerretDB 1.x answers without scanning the table.
func (m *Manager) findRaw(ctx context.Context, id string) (bson.Raw, bool, error) {
	raw, err := m.coll.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return raw, true, nil
}

func (m *Manager) readLease(ctx context.Context, key string, n int64) (*leaseDoc, error) {
	raw, ok, err := m.findRaw(ctx, leaseID(key, n))
	if err != nil || !ok {
		return nil, err
	}
	return parseLease(raw, n)
}

func (m *Manager) readTicket(ctx context.Context, key string, s int64) (*ticketDoc, error) {
	raw, ok, err := m.findRaw(ctx, ticketID(key, s))
	if err != nil || !ok {
		return nil, err
	}
	d, err := parseTicket(raw)
	if err != nil {
		return nil, err
	}
	return &d, nil
}

// setByID applies $set fields to the document with _id id and reports
// whether one matched.
func (m *Manager) setByID(ctx context.Context, id string, set bson.D) (bool, error) {
	res, err := m.coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
		bson.D{{Key: "$set", Value: set}})
	if err != nil {
		return false, err
	}
	return res.MatchedCount == 1, nil
}

func (m *Manager) deleteByID(ctx context.Context, id string) error {
	_, err := m.coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
	return err
}

// meta returns key's meta document, inserting it (base = the server's time
// in µs) when there is none. The insert is the arbiter: of two Managers
// creating it at once, one gets a duplicate-key error and reads the other's.
func (m *Manager) meta(ctx context.Context, key string) (metaDoc, error) {
	id := metaID(key)
	for range 2 {
		raw, ok, err := m.findRaw(ctx, id)
		if err != nil {
			return metaDoc{}, err
		}
		if ok {
			return parseMeta(raw)
		}
		lo, _ := m.bounds()
		d := metaDoc{base: lo.UnixMicro()}
		_, err = m.coll.InsertOne(ctx, bson.D{
			{Key: "_id", Value: id}, {Key: fBase, Value: d.base}, {Key: fN, Value: int64(0)},
		})
		if err == nil {
			return d, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return metaDoc{}, err
		}
	}
	return metaDoc{}, errors.New("meta document inserted and deleted under us")
}

// hint is what a Manager remembers of a key: its base and the number of an
// acquisition known to exist.
type hint struct{ base, n int64 }

const maxHints = 1 << 12

func (m *Manager) getHint(key string) (hint, bool) {
	m.hintMu.Lock()
	defer m.hintMu.Unlock()
	h, ok := m.hints[key]
	return h, ok
}

func (m *Manager) putHint(key string, h hint) {
	m.hintMu.Lock()
	defer m.hintMu.Unlock()
	if len(m.hints) >= maxHints {
		clear(m.hints)
	}
	if h.n == 0 {
		return
	}
	if old, ok := m.hints[key]; !ok || old.n < h.n || old.base != h.base {
		m.hints[key] = h
	}
}

func (m *Manager) dropHint(key string) {
	m.hintMu.Lock()
	defer m.hintMu.Unlock()
	delete(m.hints, key)
}

// latest is the key's latest acquisition as one attempt found it.
type latest struct {
	base int64
	n    int64     // 0: the key was never acquired
	doc  *leaseDoc // nil when n == 0
}

// errRetry ends an attempt that must start again: a hint pointed at
// collected documents twice, or the attempt took longer than m.round.
var errRetry = errors.New("retry")

// findLatest finds key's latest acquisition with reads by _id only: from a
// hint n it reads n+1, n+2, ... until one is missing, then (again) the last
// that exists. Documents are deleted only from the bottom of a key's chain
// (see gc.go), so an existing n whose n+1 is missing is the latest, unless
// n is ancient (older than m.ancient): then only a range query can tell,
// and one is made.
func (m *Manager) findLatest(ctx context.Context, key string) (latest, error) {
	h, cached := m.getHint(key)
	var metaAt time.Time
	readMeta := func() error {
		md, err := m.meta(ctx, key)
		if err != nil {
			return err
		}
		h, cached, metaAt = hint(md), false, time.UnixMicro(md.base)
		return nil
	}
	if !cached {
		if err := readMeta(); err != nil {
			return latest{}, err
		}
	}
	for slow := 0; ; slow++ {
		n := h.n
		for {
			d, err := m.readLease(ctx, key, n+1)
			if err != nil {
				return latest{}, err
			}
			if d == nil {
				break
			}
			n++
		}
		var d *leaseDoc
		found, at := n == 0 && !cached, metaAt
		if n > 0 {
			var err error
			if d, err = m.readLease(ctx, key, n); err != nil {
				return latest{}, err
			}
			if d != nil {
				found, at = true, d.at
			}
		}
		if d != nil && d.base != h.base {
			if !cached {
				return latest{}, fmt.Errorf("%w: %q is %d, the key's meta document says %d",
					errBadDoc, fBase, d.base, h.base)
			}
			m.dropHint(key) // the collection was emptied and started again
			if err := readMeta(); err != nil {
				return latest{}, err
			}
			continue
		}
		lo, _ := m.bounds()
		if found && (m.ancient <= 0 || at.After(lo.Add(-m.ancient))) {
			m.putHint(key, hint{base: h.base, n: n})
			return latest{base: h.base, n: n, doc: d}, nil
		}
		// The hint was collected, or the candidate is too old to trust
		// (see gc.go): ask for the highest number with a range query.
		if slow >= 2 {
			return latest{}, errRetry
		}
		top, err := m.maxLease(ctx, key)
		if err != nil {
			return latest{}, err
		}
		switch {
		case found && top == n:
			m.putHint(key, hint{base: h.base, n: n})
			return latest{base: h.base, n: n, doc: d}, nil
		case top == 0:
			if cached {
				m.dropHint(key)
				if err := readMeta(); err != nil {
					return latest{}, err
				}
			}
			return latest{base: h.base}, nil // never acquired: the range is empty
		}
		h.n = top
	}
}

// maxLease returns the highest acquisition number of key, 0 if none, with
// one range query on _id (an index walk on MongoDB, a scan on FerretDB).
func (m *Manager) maxLease(ctx context.Context, key string) (int64, error) {
	prefix := pLease + encKey(key)
	opts := options.FindOne().SetSort(bson.D{{Key: "_id", Value: -1}}).
		SetProjection(bson.D{{Key: "_id", Value: 1}})
	var doc struct {
		ID string `bson:"_id"`
	}
	err := m.coll.FindOne(ctx, bson.D{{Key: "_id", Value: bson.D{
		{Key: "$gt", Value: prefix + ":"}, {Key: "$lt", Value: prefix + ";"},
	}}}, opts).Decode(&doc)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(doc.ID[len(prefix)+1:], 16, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: _id %q", errBadDoc, doc.ID)
	}
	return n, nil
}

// attemptResult is what one acquire attempt learned.
type attemptResult struct {
	acquired bool
	n        int64 // the acquisition's number, when acquired
	base     int64
	exp      time.Time // the lease's end as written, when acquired
	fence    uint64
	// remaining is the holder's remaining time as far as this Manager can
	// tell (a wake-up hint), when not acquired; 0 means try again soon.
	remaining time.Duration
	// srv is the latest acquisition's srv: tickets up to it were served.
	srv int64
	// latest is the number of the latest acquisition seen, when not
	// acquired: a waiter polls fast again while it changes.
	latest int64
	// rejoin: the waiter's ticket was passed over (it is at or below
	// srv): it must take a new one.
	rejoin bool
}

// acquireOnce makes one attempt to take key for l; seq is the waiter's
// ticket number, 0 for none. See the package documentation.
func (m *Manager) acquireOnce(ctx context.Context, l *Lease, seq int64) (attemptResult, error) {
	start := time.Now()
	last, err := m.findLatest(ctx, l.key)
	if err != nil {
		return attemptResult{}, err
	}
	token := string(l.token)
	lo, _ := m.bounds()
	var srv int64
	if d := last.doc; d != nil {
		srv = d.srv
		if d.tok == token && !d.rel {
			// An earlier attempt of this lease won but its reply was lost.
			return attemptResult{acquired: true, n: last.n, base: last.base, exp: d.exp,
				fence: d.fence()}, nil
		}
		if !d.rel && d.exp.After(lo) {
			return attemptResult{remaining: m.remaining(d.exp), srv: srv, latest: last.n}, nil
		}
	}
	if seq > 0 && seq <= srv {
		return attemptResult{rejoin: true, srv: srv}, nil
	}
	newSrv, blocked, err := m.checkLine(ctx, l.key, srv, seq, lo)
	if err != nil {
		return attemptResult{}, err
	}
	if blocked {
		return attemptResult{remaining: m.maxBO, srv: srv, latest: last.n}, nil
	}
	n := last.n + 1
	l.sentOnce(time.Now())
	lo, hi := m.bounds()
	exp := hi.Add(l.ttl)
	l.tryN.Store(n)
	_, err = m.coll.InsertOne(ctx, bson.D{
		{Key: "_id", Value: leaseID(l.key, n)},
		{Key: fTok, Value: token}, {Key: fExp, Value: date(exp)}, {Key: fRel, Value: false},
		{Key: fBase, Value: last.base}, {Key: fN, Value: n}, {Key: fSrv, Value: newSrv},
		{Key: fAt, Value: date(lo)},
	})
	if mongo.IsDuplicateKeyError(err) {
		return attemptResult{srv: srv}, nil // another acquisition took n: look again
	}
	if err != nil {
		return attemptResult{}, err
	}
	if m.round > 0 && time.Since(start) > m.round {
		// Too slow to be sure n was never given out before (see gc.go):
		// give it up at once.
		_, _ = m.setByID(ctx, leaseID(l.key, n), bson.D{{Key: fRel, Value: true}})
		return attemptResult{}, errRetry
	}
	m.putHint(l.key, hint{base: last.base, n: n})
	if n%8 == 0 {
		// The meta document's n is only a hint for Managers that do not
		// know the key: a lost or late update costs them reads, not safety.
		_, _ = m.coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: metaID(l.key)}},
			bson.D{{Key: "$max", Value: bson.D{{Key: fN, Value: n}}}})
	}
	return attemptResult{acquired: true, n: n, base: last.base, exp: exp,
		fence: uint64(last.base) + uint64(n)}, nil
}

// checkLine reads the tickets of key above srv. With seq 0 (no ticket) it
// reads them up to the first missing one; with a ticket it reads those
// below seq. blocked is true when one of them is a live waiter (not gone,
// its keep-alive ahead of lo). Otherwise newSrv is the number the new
// acquisition records: seq, or the last dead ticket read, or srv.
func (m *Manager) checkLine(ctx context.Context, key string, srv, seq int64, lo time.Time,
) (newSrv int64, blocked bool, err error) {
	newSrv = srv
	for s := srv + 1; seq == 0 || s < seq; s++ {
		t, err := m.readTicket(ctx, key, s)
		if err != nil {
			return 0, false, err
		}
		if t == nil {
			if seq == 0 {
				break
			}
			continue
		}
		if !t.gone && t.exp.After(lo) {
			return 0, true, nil
		}
		newSrv = s
	}
	return max(newSrv, seq), false, nil
}

// joinLine takes a ticket for l: the first missing number above srv,
// inserted (the insert is the arbiter of a number). It returns the number
// and the ticket's keep-alive; on an error, the number whose insert failed
// (it may have landed), so that the caller can mark it gone.
func (m *Manager) joinLine(ctx context.Context, l *Lease, srv int64) (int64, time.Time, error) {
	for s := srv + 1; ; s++ {
		t, err := m.readTicket(ctx, l.key, s)
		if err != nil {
			return 0, time.Time{}, err
		}
		if t != nil {
			continue
		}
		_, hi := m.bounds()
		exp := hi.Add(m.lineTTL)
		_, err = m.coll.InsertOne(ctx, bson.D{
			{Key: "_id", Value: ticketID(l.key, s)}, {Key: fTok, Value: string(l.token)},
			{Key: fExp, Value: date(exp)}, {Key: fGone, Value: false},
		})
		if err == nil {
			return s, exp, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return s, time.Time{}, err
		}
	}
}

// keepTicket extends the keep-alive of ticket seq of l.
func (m *Manager) keepTicket(ctx context.Context, l *Lease, seq int64) (time.Time, error) {
	_, hi := m.bounds()
	exp := hi.Add(m.lineTTL)
	_, err := m.setByID(ctx, ticketID(l.key, seq), bson.D{{Key: fExp, Value: date(exp)}})
	return exp, err
}

// leaveLine marks ticket seq gone (its waiter stopped waiting), in the
// background and bounded by CleanupTimeout; else it dies at its keep-alive.
// A ticket that was served is deleted instead.
func (m *Manager) leaveLine(l *Lease, seq int64, served bool) {
	if seq == 0 || m.cleanup <= 0 {
		return
	}
	m.background(func() {
		ctx, cancel := context.WithTimeout(m.ctx, m.cleanup)
		defer cancel()
		if served {
			_ = m.deleteByID(ctx, ticketID(l.key, seq))
			return
		}
		_, _ = m.setByID(ctx, ticketID(l.key, seq), bson.D{{Key: fGone, Value: true}})
	})
}

// remaining estimates how long a holder whose lease ends at exp has left,
// counted from the middle of the server clock interval.
func (m *Manager) remaining(exp time.Time) time.Duration {
	lo, hi := m.bounds()
	mid := lo.Add(hi.Sub(lo) / 2)
	return max(exp.Sub(mid), time.Millisecond)
}
