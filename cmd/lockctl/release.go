package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/redis/rueidis"
)

// compareAndDelete deletes KEYS[1] only if it still holds ARGV[1], the
// token lockctl read and showed: a holder that changed in between (a
// release, an expiry and a new acquire) is never freed by mistake. It
// touches neither the fence counter nor the line.
const compareAndDelete = `if redis.call('GET', KEYS[1]) == ARGV[1] then ` +
	`return redis.call('DEL', KEYS[1]) end return 0`

// releaseJSON is release's --json output.
type releaseJSON struct {
	Key     string `json:"key"`
	Name    string `json:"redis_key"`
	Removed bool   `json:"removed"`
	Token   string `json:"token,omitempty"`
	TTLMs   int64  `json:"ttl_ms"`
	Fence   uint64 `json:"fence"`
	LineLen int64  `json:"line_length"`
}

// runRelease frees key whoever holds it: it reads the holder, asks on
// stderr (unless --yes) and reads the answer from stdin, then deletes the
// lock if the same token still holds it, and prints what it removed. The
// fence counter and the waiting line are left as they are.
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
	cmd := c.B().Eval().Script(compareAndDelete).Numkeys(1).Key(st.Name).Arg(st.Token).Build()
	n, err := c.Do(rctx, cmd).AsInt64()
	if err != nil {
		return exitErr, cfg.redisErr(ctx, "EVAL (compare-and-delete)", err)
	}
	if n == 0 {
		return exitErr, fmt.Errorf("lockctl: %s changed hands since it was read "+
			"(%s no longer holds it); nothing removed: look again with inspect",
			show(key), short(st.Token))
	}
	out.Removed, out.Token, out.TTLMs = true, st.Token, st.TTLMs
	if cfg.json {
		b, _ := json.Marshal(out)
		fmt.Fprintf(stdout, "%s\n", b)
		return exitOK, nil
	}
	fmt.Fprintf(stdout, "removed %s (%s): token %s, fence %d, ttl left %s; "+
		"the fence counter is unchanged\n", show(key), st.Name, st.Token, st.Fence, ttlText(st.TTLMs))
	if st.LineLen > 0 {
		fmt.Fprintf(stdout, "%d waiting in line: the head (%s) gets the key at its "+
			"waiter's next attempt (it keeps its place every third of its line TTL, "+
			"1s by default) or at any other acquire of the key\n",
			st.LineLen, short(st.Line[0].Token))
	}
	return exitOK, nil
}
