package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
)

// scanCount is the COUNT hint of each SCAN call.
const scanCount = 1000

// globEscape escapes Redis glob specials, so the prefix matches literally.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// userKey returns the user key whose lock is named name, or false when name
// is not a lock name for prefix (a fence or line companion, or a name no key
// produces).
func userKey(prefix, name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || !strings.HasSuffix(rest, "}") {
		return "", false
	}
	var k string
	switch {
	case strings.HasPrefix(rest, "}{~}") && len(rest) >= 5:
		k = rest[4 : len(rest)-1]
	case strings.HasPrefix(rest, "{") && len(rest) >= 2:
		k = rest[1 : len(rest)-1]
	default:
		return "", false
	}
	if k == "" || lockredis.LockKey(prefix, k) != name {
		return "", false
	}
	return k, true
}

// kept is the bounded, sorted, de-duplicated set of names list prints; more
// counts the names that did not fit (a name SCAN returned twice, which it
// may during a rehash, can be counted twice there).
type kept struct {
	limit int
	names []string
	more  int
}

func (k *kept) add(name string) {
	i := sort.SearchStrings(k.names, name)
	if i < len(k.names) && k.names[i] == name {
		return
	}
	if len(k.names) == k.limit {
		if i == len(k.names) {
			k.more++
			return
		}
		k.names = k.names[:len(k.names)-1]
		k.more++
	}
	k.names = append(k.names, "")
	copy(k.names[i+1:], k.names[i:])
	k.names[i] = name
}

// scan runs SCAN MATCH match TYPE string over every node (one for a single
// server, the masters of a cluster) and adds each lock name to k.
func scan(ctx context.Context, c rueidis.Client, cfg *config, match string, k *kept) error {
	for _, node := range c.Nodes() {
		var cursor uint64
		for {
			cmd := node.B().Scan().Cursor(cursor).Match(match).Count(scanCount).Type("string").Build()
			sctx, cancel := context.WithTimeout(ctx, cfg.timeout)
			e, err := node.Do(sctx, cmd).AsScanEntry()
			cancel()
			if err != nil {
				return cfg.redisErr(ctx, "SCAN", err)
			}
			for _, name := range e.Elements {
				if _, ok := userKey(cfg.prefix, name); ok {
					k.add(name)
				}
			}
			if cursor = e.Cursor; cursor == 0 {
				break
			}
		}
	}
	return nil
}

// runList prints the locks held under the prefix whose key matches pattern,
// in key order, at most cfg.limit of them, then how many more there are.
func runList(ctx context.Context, c rueidis.Client, cfg *config, pattern string,
	stdout, stderr io.Writer) (int, error) {
	k := &kept{limit: cfg.limit}
	p := globEscape(cfg.prefix)
	if err := scan(ctx, c, cfg, p+"{"+pattern+"}", k); err != nil {
		return exitErr, err
	}
	// Keys starting with "}" are named prefix+"}{~}"+key+"}" (LockKey); a
	// pattern that starts with another literal cannot match them.
	if pattern[0] == '}' || strings.ContainsRune(`*?[\`, rune(pattern[0])) {
		if err := scan(ctx, c, cfg, p+"}{~}"+pattern+"}", k); err != nil {
			return exitErr, err
		}
	}
	// Read the kept names in one pipeline; one released since SCAN is left
	// out, one whose value is not a token too (inspect says why).
	b := c.B()
	var cmds rueidis.Commands
	for _, name := range k.names {
		cmds = append(cmds, b.Get().Key(name).Build(), b.Pttl().Key(name).Build(),
			b.Get().Key(name+":fence").Build())
	}
	var res []rueidis.RedisResult
	if len(cmds) > 0 {
		rctx, cancel := context.WithTimeout(ctx, cfg.timeout)
		res = c.DoMulti(rctx, cmds...)
		cancel()
	}
	locks := []state{}
	for i, name := range k.names {
		r := res[3*i : 3*i+3]
		for j, x := range r {
			if err := x.Error(); err != nil && !rueidis.IsRedisNil(err) &&
				!strings.HasPrefix(err.Error(), "WRONGTYPE") {
				return exitErr, cfg.redisErr(ctx, []string{"GET", "PTTL", "GET"}[j], err)
			}
		}
		tok, err := r[0].ToString()
		if err != nil || tokenProblem(tok) != "" {
			continue
		}
		pttl, _ := r[1].AsInt64()
		if pttl == -2 {
			continue
		}
		key, _ := userKey(cfg.prefix, name)
		st := state{Key: key, Name: name, Held: true, Token: tok, TTLMs: pttl, Line: []waiter{}}
		if f, err := r[2].AsUint64(); err == nil {
			st.Fence = f
		}
		locks = append(locks, st)
	}
	if cfg.json {
		for i := range locks {
			locks[i].Line = nil
		}
		out, _ := json.Marshal(listJSON(locks))
		fmt.Fprintf(stdout, "%s\n", out)
		if k.more > 0 {
			fmt.Fprintf(stderr, "lockctl: %d more not shown (--limit %d)\n", k.more, cfg.limit)
		}
		return exitOK, nil
	}
	if len(locks) > 0 {
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tHOLDER\tTTL\tFENCE")
		for _, st := range locks {
			ttl := ms(st.TTLMs)
			if st.TTLMs < 0 {
				ttl = "none"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", show(st.Key), short(st.Token), ttl, st.Fence)
		}
		tw.Flush()
	} else if k.more == 0 {
		fmt.Fprintf(stdout, "no locks held under %s matching %s\n", cfg.prefix, pattern)
	}
	if k.more > 0 {
		fmt.Fprintf(stdout, "%d more not shown (--limit %d)\n", k.more, cfg.limit)
	}
	return exitOK, nil
}

// listEntry is one element of list's JSON array.
type listEntry struct {
	Key   string `json:"key"`
	Name  string `json:"redis_key"`
	Token string `json:"token"`
	TTLMs int64  `json:"ttl_ms"`
	Fence uint64 `json:"fence"`
}

func listJSON(locks []state) []listEntry {
	out := make([]listEntry, len(locks))
	for i, st := range locks {
		out[i] = listEntry{st.Key, st.Name, st.Token, st.TTLMs, st.Fence}
	}
	return out
}
