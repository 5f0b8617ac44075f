package lockmongo

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/klauthed/lock"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// CollectGarbage runs one garbage-collection pass over the collection and
// returns how many documents it deleted. For every key it deletes, from the
// bottom of the key's chain up, each acquisition document whose next
// acquisition was inserted more than Options.FreeAfter ago (never the
// latest), and the tickets the key's line has passed. It reads every lock
// document once (a range query on _id: a scan of the collection on
// FerretDB) and deletes by _id. Other Managers may run it at the same time.
//
// With a negative FreeAfter it deletes nothing and returns 0, nil. On a
// server error it returns what it deleted so far and the error, wrapped;
// the collection is left consistent. A nil ctx returns an error wrapping
// lock.ErrInvalidArgument, a nil or closed Manager lock.ErrClosed.
func (m *Manager) CollectGarbage(ctx context.Context) (int, error) {
	if err := lock.ValidateContext(ctx); err != nil {
		return 0, fmt.Errorf("lockmongo: collect garbage: %w", err)
	}
	if m == nil || m.closed.Load() {
		return 0, lock.ErrClosed
	}
	if m.freeAfter <= 0 {
		return 0, nil
	}
	n, err := m.collect(ctx)
	if err != nil {
		return n, m.wrapErr("collect garbage", "", err)
	}
	return n, nil
}

type gcLease struct {
	n   int64
	at  time.Time
	srv int64
}

func (m *Manager) collect(ctx context.Context) (int, error) {
	lo, _ := m.bounds()
	horizon := lo.Add(-m.freeAfter)
	cur, err := m.coll.Find(ctx,
		bson.D{{Key: "_id", Value: bson.D{{Key: "$gt", Value: pLease}, {Key: "$lt", Value: "r"}}}},
	)
	if err != nil {
		return 0, err
	}
	leases := map[string][]gcLease{}
	tickets := map[string][]int64{}
	for cur.Next(ctx) {
		id, ok := cur.Current.Lookup("_id").StringValueOK()
		if !ok {
			continue
		}
		kind, rest, ok := strings.Cut(id, ":")
		if !ok || kind+":" != pLease && kind+":" != pTicket {
			continue
		}
		i := strings.LastIndexByte(rest, ':')
		if i < 0 {
			continue
		}
		num, err := strconv.ParseInt(rest[i+1:], 16, 64)
		if err != nil {
			continue
		}
		k := rest[:i]
		if kind+":" == pTicket {
			tickets[k] = append(tickets[k], num)
			continue
		}
		at, _ := cur.Current.Lookup(fAt).TimeOK()
		srv, _ := cur.Current.Lookup(fSrv).Int64OK()
		leases[k] = append(leases[k], gcLease{n: num, at: at, srv: srv})
	}
	if err := cur.Err(); err != nil {
		_ = cur.Close(ctx)
		return 0, err
	}
	if err := cur.Close(ctx); err != nil {
		return 0, err
	}
	deleted := 0
	del := func(id string) error {
		res, err := m.coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
		if err == nil {
			deleted += int(res.DeletedCount)
		}
		return err
	}
	for k, ls := range leases {
		slices.SortFunc(ls, func(a, b gcLease) int { return cmp.Compare(a.n, b.n) })
		// From the bottom up, so that the documents of a key are always a
		// run of consecutive numbers ending at the latest.
		for i := 0; i+1 < len(ls) && ls[i+1].at.Before(horizon); i++ {
			if err := del(fmt.Sprintf("%s%s:%016x", pLease, k, ls[i].n)); err != nil {
				return deleted, err
			}
		}
		srv := ls[len(ls)-1].srv
		for _, s := range tickets[k] {
			if s <= srv {
				if err := del(fmt.Sprintf("%s%s:%016x", pTicket, k, s)); err != nil {
					return deleted, err
				}
			}
		}
	}
	return deleted, nil
}

// gcLoop runs a pass every interval until Close.
func (m *Manager) gcLoop(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(m.ctx, max(interval, time.Minute))
		_, _ = m.collect(ctx)
		cancel()
	}
}
