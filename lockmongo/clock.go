package lockmongo

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// driftPPM is the rate error allowed between the local monotonic clock and
// the server's clock between two samples, in parts per million. Quartz
// clocks and NTP-disciplined clocks stay well inside it.
const driftPPM = 100

// resyncEvery is how old a clock sample may grow before the next call that
// reads the clock takes a new one.
const resyncEvery = 30 * time.Second

// serverClock estimates the server's time from samples of hello's
// localTime: a sample sent at local time t0, answered at t1 with server
// time L (whole milliseconds), says that at local time t >= t1 the server's
// time lies in [L + (t-t1), L + 1ms + (t-t0)], widened by driftPPM of
// t-t1 on each side. Its width is the sample's round trip plus 1 ms plus
// the drift allowance.
type serverClock struct {
	db *mongo.Database

	mu         sync.Mutex
	t0, t1     time.Time // local send and receive of the sample, monotonic
	server     time.Time // the server's localTime in the reply
	resyncing  bool
	lastResync time.Time
}

// sample sends one hello and returns its local send and receive times and
// the server's localTime.
func (c *serverClock) sample(ctx context.Context) (t0, t1, server time.Time, err error) {
	var reply struct {
		LocalTime bson.DateTime `bson:"localTime"`
	}
	t0 = time.Now()
	err = c.db.RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Decode(&reply)
	var se mongo.ServerError
	if errors.As(err, &se) {
		// Servers before MongoDB 4.4.2 know hello as isMaster.
		t0 = time.Now()
		err = c.db.RunCommand(ctx, bson.D{{Key: "isMaster", Value: 1}}).Decode(&reply)
	}
	t1 = time.Now()
	if err != nil {
		return t0, t1, server, err
	}
	if reply.LocalTime == 0 {
		return t0, t1, server, errors.New("hello reply has no localTime")
	}
	return t0, t1, reply.LocalTime.Time(), nil
}

// init takes a few samples and keeps the narrowest.
func (c *serverClock) init(ctx context.Context) error {
	for range 3 {
		t0, t1, srv, err := c.sample(ctx)
		if err != nil {
			return fmt.Errorf("lockmongo: read the server's clock: %w", err)
		}
		c.offer(t0, t1, srv)
	}
	c.lastResync = time.Now()
	return nil
}

// offer keeps the sample if it is at least as narrow as the current one
// is now. Call without c.mu.
func (c *serverClock) offer(t0, t1, srv time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.t1.IsZero() {
		lo, hi := c.boundsLocked(t1)
		if hi.Sub(lo) < t1.Sub(t0)+time.Millisecond {
			return
		}
	}
	c.t0, c.t1, c.server = t0, t1, srv
}

// bounds returns the interval the server's time lies in now, as told by the
// current sample; see serverClock. When the sample is older than resyncEvery
// it also starts a new one through start (bounded by 5s and by bg), unless
// one is already running.
func (c *serverClock) bounds(now time.Time, bg context.Context, start func(func()) bool,
) (lo, hi time.Time) {
	c.mu.Lock()
	lo, hi = c.boundsLocked(now)
	resync := !c.resyncing && now.Sub(c.lastResync) > resyncEvery
	if resync {
		c.resyncing = true
		c.lastResync = now
	}
	c.mu.Unlock()
	if resync && !start(func() { c.resync(bg) }) {
		c.mu.Lock()
		c.resyncing = false
		c.mu.Unlock()
	}
	return lo, hi
}

// resync takes one new sample and offers it.
func (c *serverClock) resync(bg context.Context) {
	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	t0, t1, srv, err := c.sample(ctx)
	cancel()
	if err == nil {
		c.offer(t0, t1, srv)
	}
	c.mu.Lock()
	c.resyncing = false
	c.mu.Unlock()
}

func (c *serverClock) boundsLocked(now time.Time) (lo, hi time.Time) {
	since := now.Sub(c.t1)
	drift := since / (1e6 / driftPPM)
	lo = c.server.Add(since - drift)
	hi = c.server.Add(time.Millisecond + now.Sub(c.t0) + drift)
	return lo, hi
}

// errorBound returns the width of the current interval: how far apart the
// lowest and the highest possible server time are now.
func (c *serverClock) errorBound() time.Duration {
	lo, hi := func() (time.Time, time.Time) {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.boundsLocked(time.Now())
	}()
	return hi.Sub(lo)
}
