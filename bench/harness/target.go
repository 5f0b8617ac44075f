package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/klauthed/lock/internal/redistest"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
)

// Target is the Redis every Redis-backed backend of a run talks to.
type Target struct {
	// Addr is host:port (empty when URL is set).
	Addr string
	// URL is the redis:// or rediss:// URL from REDIS_URL, if any.
	URL string
	// Kind says where the server came from: "addr", "url", "redis-server"
	// (started by the run from PATH) or "miniredis" (in process).
	Kind string
	// Version is the server's redis_version ("" for miniredis).
	Version string

	close func() error
}

// Miniredis reports whether the target is the in-process miniredis, on
// which client-side caching is unavailable and latencies mean nothing.
func (t *Target) Miniredis() bool { return t.Kind == "miniredis" }

// Close stops a server the run started itself; for a user's server it does
// nothing.
func (t *Target) Close() error {
	if t.close == nil {
		return nil
	}
	f := t.close
	t.close = nil
	return f()
}

// MiniredisWarning is printed when the run falls back to miniredis.
const MiniredisWarning = "lockbench: WARNING: no redis-server on PATH and no -addr/REDIS_URL: " +
	"using in-process miniredis; latency and throughput figures then mean nothing " +
	"(install redis-server or pass -addr host:port)"

// Resolve picks the Redis for a run: addr if set, else url (REDIS_URL) if
// set, else a redis-server started from PATH on a free loopback port, else
// an in-process miniredis with MiniredisWarning written to warn. The caller
// must Close the target.
func Resolve(addr, url string, warn io.Writer) (*Target, error) {
	var t *Target
	switch {
	case addr != "":
		t = &Target{Addr: addr, Kind: "addr"}
	case url != "":
		t = &Target{URL: url, Kind: "url"}
	default:
		srv, err := redistest.StartServer()
		if err == nil {
			t = &Target{Addr: srv.Addr, Kind: "redis-server", close: srv.Close}
			break
		}
		mr, merr := miniredis.Run()
		if merr != nil {
			return nil, fmt.Errorf("no redis-server (%v) and miniredis failed: %w", err, merr)
		}
		fmt.Fprintln(warn, MiniredisWarning)
		return &Target{
			Addr:  mr.Addr(),
			Kind:  "miniredis",
			close: func() error { mr.Close(); return nil },
		}, nil
	}
	admin, err := t.Admin()
	if err != nil {
		t.Close()
		return nil, err
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := admin.Do(ctx, admin.B().Info().Section("server").Build()).ToString()
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("INFO server on %s: %w", t, err)
	}
	t.Version = infoField(info, "redis_version")
	return t, nil
}

func (t *Target) String() string {
	if t.URL != "" {
		return "REDIS_URL"
	}
	return t.Addr
}

// RueidisOption returns the client option for rueidis-based backends. On
// miniredis it disables client-side caching, which miniredis lacks.
func (t *Target) RueidisOption() (rueidis.ClientOption, error) {
	var opt rueidis.ClientOption
	if t.URL != "" {
		o, err := rueidis.ParseURL(t.URL)
		if err != nil {
			return opt, err
		}
		opt = o
	} else {
		opt.InitAddress = []string{t.Addr}
	}
	if t.Miniredis() {
		opt.DisableCache = true
	}
	return opt, nil
}

// GoRedisOptions returns the go-redis options for go-redis-based peers:
// the library's defaults, only the address set.
func (t *Target) GoRedisOptions() (*goredis.Options, error) {
	if t.URL != "" {
		return goredis.ParseURL(t.URL)
	}
	return &goredis.Options{Addr: t.Addr}, nil
}

// Admin returns a plain rueidis client (no client-side caching) for the
// harness's own INFO and PING calls. The caller closes it.
func (t *Target) Admin() (rueidis.Client, error) {
	opt, err := t.RueidisOption()
	if err != nil {
		return nil, err
	}
	opt.DisableCache = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", t, err)
	}
	return c, nil
}

// AtLeast reports whether the server's version is at least major.minor.patch
// (false for miniredis or an unparsable version).
func (t *Target) AtLeast(major, minor, patch int) bool {
	parts := strings.SplitN(t.Version, ".", 3)
	if len(parts) != 3 {
		return false
	}
	var v [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return false
		}
		v[i] = n
	}
	want := [3]int{major, minor, patch}
	for i := range v {
		if v[i] != want[i] {
			return v[i] > want[i]
		}
	}
	return true
}

func infoField(info, name string) string {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+":"); ok {
			return v
		}
	}
	return ""
}

// CommandStats is a snapshot of the server's command counters: calls per
// command from INFO commandstats (which counts calls made inside Lua scripts
// too), or, where that section is missing (miniredis), only the total from
// INFO stats.
type CommandStats struct {
	Calls map[string]uint64
	Total uint64
}

// errNoStats marks a server that reports no command counters.
var errNoStats = errors.New("server reports no command counters")

// ReadCommandStats takes a snapshot through c. The INFO calls the harness
// itself makes are left out of the counts.
func ReadCommandStats(ctx context.Context, c rueidis.Client) (CommandStats, error) {
	info, err := c.Do(ctx, c.B().Info().Section("commandstats").Build()).ToString()
	if err == nil {
		if s := ParseCommandStats(info); len(s.Calls) > 0 {
			return s, nil
		}
	}
	info, err = c.Do(ctx, c.B().Info().Section("stats").Build()).ToString()
	if err != nil {
		return CommandStats{}, err
	}
	v := infoField(info, "total_commands_processed")
	if v == "" {
		return CommandStats{}, errNoStats
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return CommandStats{}, err
	}
	return CommandStats{Total: n}, nil
}

// ParseCommandStats parses the text of INFO commandstats: one line per
// command, "cmdstat_<name>:calls=<n>,usec=...". The info command's own
// calls are dropped.
func ParseCommandStats(info string) CommandStats {
	s := CommandStats{Calls: map[string]uint64{}}
	for _, line := range strings.Split(info, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_")
		if !ok {
			continue
		}
		name, fields, ok := strings.Cut(rest, ":")
		if !ok || name == "info" {
			continue
		}
		for _, f := range strings.Split(fields, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, err := strconv.ParseUint(v, 10, 64)
				if err == nil {
					s.Calls[name] = n
					s.Total += n
				}
			}
		}
	}
	return s
}

// Sub returns the counts s minus before. For total-only snapshots it also
// takes off the one INFO call between the two snapshots.
func (s CommandStats) Sub(before CommandStats) CommandStats {
	out := CommandStats{}
	if s.Calls == nil {
		if s.Total > before.Total+1 {
			out.Total = s.Total - before.Total - 1
		}
		return out
	}
	out.Calls = map[string]uint64{}
	for name, n := range s.Calls {
		if b := before.Calls[name]; n > b {
			out.Calls[name] = n - b
			out.Total += n - b
		}
	}
	return out
}

// PingRTT measures the round trip to the target: the median of n PINGs sent
// one after another on a rueidis client built like the backends'.
func PingRTT(ctx context.Context, t *Target, n int) (time.Duration, error) {
	opt, err := t.RueidisOption()
	if err != nil {
		return 0, err
	}
	c, err := rueidis.NewClient(opt)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	var h Histogram
	cmd := c.B().Ping().Build().Pin()
	for i := 0; i < n+n/10; i++ {
		start := time.Now()
		if err := c.Do(ctx, cmd).Error(); err != nil {
			return 0, err
		}
		if i >= n/10 { // the first tenth warms the connection up
			h.Record(time.Since(start))
		}
	}
	return h.Quantile(0.5), nil
}
