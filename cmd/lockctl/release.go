package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/klauthed/lock/gen"
	"github.com/redis/rueidis"
)

// releaseJSON is release's --json output.
type releaseJSON struct {
	Key     string `json:"key"`
	Name    string `json:"redis_key"`
	Removed bool   `json:"removed"`
	Token   string `json:"token,omitempty"`
	Next    string `json:"handed_to,omitempty"`
	TTLMs   int64  `json:"ttl_ms"`
	Fence   uint64 `json:"fence"`
	LineLen int64  `json:"line_length"`
}

// runRelease frees key whoever holds it: it reads the holder, asks on
// stderr (unless --yes) and reads the answer from stdin, then runs the
// release script (scripts/release.lua) with the token it read, as the
// holder's own Release would: a holder that changed in between is never
// freed by mistake, and if waiters are in line the key goes to the head at
// once (which gets the next fence, as on any hand-off). It prints what it
// removed. The removed lease's fence is not touched.
func runRelease(ctx context.Context, c rueidis.Client, cfg *config, key string,
	stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	r := &reader{c: c, cfg: cfg}
	rctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	st, err := r.read(rctx, key)
	cancel()
	if err != nil {
		return exitErr, err
	}
	out := releaseJSON{Key: key, Name: st.Name, Fence: st.Fence, LineLen: st.LineLen}
	if !st.Held {
		if cfg.json {
			b, _ := json.Marshal(out)
			fmt.Fprintf(stdout, "%s\n", b)
		}
		return exitNotHeld, fmt.Errorf("lockctl: %s is not held; nothing removed", show(key))
	}
	if !cfg.yes {
		fmt.Fprintf(stderr, "%s is held by %s (fence %d, ttl %s, %d waiting).\n"+
			"Its holder may still be working and will not be told. Remove the lock? [y/N] ",
			show(key), st.Token, st.Fence, ttlText(st.TTLMs), st.LineLen)
		line, _ := bufio.NewReader(stdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
			return exitDeclined, fmt.Errorf("lockctl: not confirmed; nothing removed")
		}
	}
	rctx, cancel = context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	ks := gen.ReleaseKeys{LockKey: st.Name, FenceKey: st.Name + ":fence", LineKey: st.Name + ":line",
		LineDeadlinesKey: st.Name + ":line:deadlines", LineArgsKey: st.Name + ":line:args"}
	res, err := gen.Release(rctx, c, ks, st.Token, "")
	if err != nil {
		return exitErr, cfg.redisErr(ctx, "EVALSHA (release script)", err)
	}
	if !res.Released {
		return exitErr, fmt.Errorf("lockctl: %s changed hands since it was read "+
			"(%s no longer holds it); nothing removed: look again with inspect",
			show(key), short(st.Token))
	}
	if res.Handed {
		out.Next = res.Next
	}
	out.Removed, out.Token, out.TTLMs = true, st.Token, st.TTLMs
	if cfg.json {
		b, _ := json.Marshal(out)
		fmt.Fprintf(stdout, "%s\n", b)
		return exitOK, nil
	}
	fmt.Fprintf(stdout, "removed %s (%s): token %s, fence %d, ttl left %s; "+
		"the fence counter is unchanged\n", show(key), st.Name, st.Token, st.Fence, ttlText(st.TTLMs))
	if res.Handed {
		fmt.Fprintf(stdout, "handed %s to the head of its line: %s, fence %d\n",
			show(key), short(res.Next), res.Fence)
	}
	return exitOK, nil
}
