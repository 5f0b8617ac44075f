package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// refreshSlack is how much later than before a holder's expiry must have
// moved for watch to call it a refresh rather than timing noise.
const refreshSlack = 10 * time.Millisecond

// event is one line of watch's output.
type event struct {
	Time  time.Time `json:"time"`
	Key   string    `json:"key"`
	Event string    `json:"event"` // state, acquired, refreshed, released, expired, fence, line
	Token string    `json:"token,omitempty"`
	Fence uint64    `json:"fence"`
	TTLMs *int64    `json:"ttl_ms,omitempty"`
	// Missed counts acquisitions that came and went between two reads
	// (acquired events whose fence grew by more than one).
	Missed uint64 `json:"missed,omitempty"`
	// Previous is the fence counter before a fence event.
	Previous *uint64 `json:"previous,omitempty"`
	// Line is the waiting line after the change (line and state events).
	Line []waiter `json:"line,omitempty"`
	// LineLen is the line's length (line and state events).
	LineLen *int64 `json:"line_length,omitempty"`
}

// runWatch prints key's state, then every change to it until ctx ends,
// --for passes or --count changes were printed.
//
// It reads the key's names through client-side caching, so Redis pushes an
// invalidation when any of them changes (a write or an expiry); each push
// makes it read them again and print the difference. The only timer is the
// holder's expiry: at that moment it reads again, which makes Redis expire
// the key now rather than at its next sampling. Redis cannot say whether a
// key vanished by DEL or by expiry, so watch infers it: a holder gone at or
// after its TTL ran out "expired", before that it was "released".
func runWatch(ctx context.Context, cfg *config, opt rueidis.ClientOption, key string,
	stdout io.Writer) (int, error) {
	wake := make(chan struct{}, 1)
	opt.OnInvalidations = func([]rueidis.RedisMessage) {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	c, err := connect(ctx, cfg, opt)
	if err != nil {
		return exitErr, err
	}
	defer c.Close()
	if cfg.forDur > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.forDur)
		defer cancel()
	}
	r := &reader{c: c, cfg: cfg, cached: true}
	read := func() (state, error) {
		rctx, cancel := context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
		return r.read(rctx, key)
	}
	prev, err := read()
	if err != nil {
		if ctx.Err() != nil {
			return exitOK, nil
		}
		return exitErr, err
	}
	emit := func(e event) {
		if cfg.json {
			b, _ := json.Marshal(e)
			fmt.Fprintf(stdout, "%s\n", b)
			return
		}
		fmt.Fprintln(stdout, formatEvent(e))
	}
	emit(stateEvent(prev))
	expiry := time.NewTimer(time.Hour)
	defer expiry.Stop()
	arm := func(st state) {
		expiry.Stop()
		if st.Held && st.TTLMs >= 0 {
			expiry.Reset(time.Until(deadline(st)) + time.Millisecond)
		}
	}
	arm(prev)
	seen := 0
	for {
		select {
		case <-ctx.Done():
			return exitOK, nil
		case <-wake:
		case <-expiry.C:
		}
		cur, err := read()
		if err != nil {
			if ctx.Err() != nil {
				return exitOK, nil
			}
			return exitErr, err
		}
		for _, e := range diff(prev, cur, time.Now()) {
			emit(e)
			if seen++; cfg.count > 0 && seen >= cfg.count {
				return exitOK, nil
			}
		}
		prev = cur
		arm(cur)
	}
}

// deadline is the earliest moment st's holder can expire on the server.
func deadline(st state) time.Time {
	return st.sent.Add(time.Duration(st.TTLMs) * time.Millisecond)
}

func stateEvent(st state) event {
	e := event{Time: time.Now(), Key: st.Key, Event: "state", Fence: st.Fence,
		Line: st.Line, LineLen: &st.LineLen}
	if st.Held {
		e.Token, e.TTLMs = st.Token, &st.TTLMs
	}
	return e
}

// diff lists the changes from prev to cur, seen at now: the old holder
// leaving, the new one arriving (or a refresh), a fence that moved without
// an acquisition seen, and a changed line.
func diff(prev, cur state, now time.Time) []event {
	var out []event
	ev := func(kind string) event {
		return event{Time: now, Key: cur.Key, Event: kind, Fence: cur.Fence}
	}
	changed := prev.Held != cur.Held || prev.Token != cur.Token
	if prev.Held && changed {
		e := ev("released")
		if prev.TTLMs >= 0 && !now.Before(deadline(prev)) {
			e.Event = "expired"
		}
		e.Token, e.Fence = prev.Token, prev.Fence
		out = append(out, e)
	}
	if cur.Held && changed {
		e := ev("acquired")
		e.Token, e.TTLMs = cur.Token, &cur.TTLMs
		if cur.Fence > prev.Fence+1 {
			e.Missed = cur.Fence - prev.Fence - 1
		}
		out = append(out, e)
	} else if cur.Held && !changed && cur.TTLMs >= 0 &&
		(prev.TTLMs < 0 || deadline(cur).After(deadline(prev).Add(refreshSlack))) {
		e := ev("refreshed")
		e.Token, e.TTLMs = cur.Token, &cur.TTLMs
		out = append(out, e)
	}
	if cur.Fence != prev.Fence && !(cur.Held && changed) {
		e := ev("fence")
		e.Previous = &prev.Fence
		out = append(out, e)
	}
	if prev.LineLen != cur.LineLen || !slices.EqualFunc(prev.Line, cur.Line,
		func(a, b waiter) bool { return a.Token == b.Token }) {
		e := ev("line")
		e.Line, e.LineLen = cur.Line, &cur.LineLen
		out = append(out, e)
	}
	return out
}

// formatEvent is watch's text output for one event:
//
//	15:04:05.000 acquired orders/42 by AbCdEfGh... fence 7 ttl 5s
func formatEvent(e event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-9s %s", e.Time.Format("15:04:05.000"), e.Event, show(e.Key))
	switch e.Event {
	case "state":
		if e.Token != "" {
			fmt.Fprintf(&b, " held by %s fence %d ttl %s", short(e.Token), e.Fence, ttlText(*e.TTLMs))
		} else {
			fmt.Fprintf(&b, " free fence %d", e.Fence)
		}
		fmt.Fprintf(&b, " line %d", *e.LineLen)
	case "acquired", "refreshed":
		fmt.Fprintf(&b, " by %s fence %d ttl %s", short(e.Token), e.Fence, ttlText(*e.TTLMs))
		if e.Missed > 0 {
			fmt.Fprintf(&b, " (%d acquisitions between reads not seen)", e.Missed)
		}
	case "released", "expired":
		fmt.Fprintf(&b, " by %s fence %d", short(e.Token), e.Fence)
	case "fence":
		fmt.Fprintf(&b, " %d (was %d)", e.Fence, *e.Previous)
	case "line":
		fmt.Fprintf(&b, " %d waiting", *e.LineLen)
		for _, w := range e.Line {
			b.WriteString(" " + short(w.Token))
		}
	}
	return b.String()
}

// ttlText is ms(v), or "none" for a key without expiry.
func ttlText(v int64) string {
	if v < 0 {
		return "none"
	}
	return ms(v)
}
