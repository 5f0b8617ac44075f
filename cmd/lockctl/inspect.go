package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/redis/rueidis"
)

// runInspect prints the state of each key: text, or one JSON object per key
// per line. It returns exitNotHeld when any key is free, and stops at the
// first key that is not a lock or cannot be read.
func runInspect(ctx context.Context, c rueidis.Client, cfg *config, keys []string,
	stdout io.Writer) (int, error) {
	r := &reader{c: c, cfg: cfg}
	code := exitOK
	for _, k := range keys {
		rctx, cancel := context.WithTimeout(ctx, cfg.timeout)
		st, err := r.read(rctx, k)
		cancel()
		if err != nil {
			return exitErr, err
		}
		if !st.Held {
			code = exitNotHeld
		}
		if cfg.json {
			b, _ := json.Marshal(st)
			fmt.Fprintf(stdout, "%s\n", b)
			continue
		}
		fmt.Fprint(stdout, formatState(st))
	}
	return code, nil
}

// formatState is inspect's text output for one key:
//
//	orders/42  held by AbCdEfGh...  ttl 4.982s  fence 7
//	  line: 2 waiting
//	    1. Xy12ab34...  ttl 10s  place 2.9s
func formatState(st state) string {
	var b strings.Builder
	if st.Held {
		ttl := "ttl " + ms(st.TTLMs)
		if st.TTLMs < 0 {
			ttl = "ttl none (no expiry: the lock scripts never make such a key; " +
				"it stays until released)"
		}
		fmt.Fprintf(&b, "%s  held by %s  %s  fence %d\n", show(st.Key), short(st.Token), ttl, st.Fence)
	} else {
		fmt.Fprintf(&b, "%s  free  fence %d\n", show(st.Key), st.Fence)
	}
	if st.LineLen == 0 {
		return b.String()
	}
	fmt.Fprintf(&b, "  line: %d waiting\n", st.LineLen)
	for i, w := range st.Line {
		fmt.Fprintf(&b, "    %d. %s  ttl %s", i+1, short(w.Token), ms(w.TTLMs))
		if w.PlaceMs != nil {
			if *w.PlaceMs > 0 {
				fmt.Fprintf(&b, "  place %s", ms(*w.PlaceMs))
			} else {
				b.WriteString("  stale (its waiter stopped; dropped at the next acquire)")
			}
		}
		if w.Heard != nil && !*w.Heard {
			b.WriteString("  not heard (nobody subscribed to its channel: releases skip it)")
		}
		b.WriteByte('\n')
	}
	if more := st.LineLen - int64(len(st.Line)); more > 0 {
		fmt.Fprintf(&b, "    ... %d more\n", more)
	}
	return b.String()
}
