package harness

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauthed/lock/internal/redistest"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
	"maps"
)

// feedAll runs a fresh parser over the writes and returns its counts.
func feedAll(writes ...[]byte) (uint64, map[string]uint64, bool) {
	p := &reqParser{byCmd: map[string]*uint64{}}
	for _, w := range writes {
		p.feed(w)
	}
	by := map[string]uint64{}
	for k, v := range p.byCmd {
		by[k] = *v
	}
	return p.total, by, p.st == stBad
}

// checkSplits checks that stream gives want however it is cut into writes:
// whole, at every single offset, one byte at a time, and in random pieces.
func checkSplits(t *testing.T, stream []byte, want map[string]uint64) {
	t.Helper()
	var wantTotal uint64
	for _, n := range want {
		wantTotal += n
	}
	check := func(how string, writes ...[]byte) bool {
		t.Helper()
		total, by, bad := feedAll(writes...)
		if bad || total != wantTotal || !maps.Equal(by, want) {
			t.Errorf("%s: total %d bad %v by %v, want total %d by %v", how, total, bad, by, wantTotal, want)
			return false
		}
		return true
	}
	if !check("whole", stream) {
		return
	}
	for k := 1; k < len(stream); k++ {
		if !check(fmt.Sprintf("split at %d", k), stream[:k], stream[k:]) {
			return
		}
	}
	var bytewise [][]byte
	for i := range stream {
		bytewise = append(bytewise, stream[i:i+1])
	}
	check("one byte per write", bytewise...)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		var pieces [][]byte
		for rest := stream; len(rest) > 0; {
			n := 1 + rng.IntN(min(len(rest), 40))
			pieces = append(pieces, rest[:n])
			rest = rest[n:]
		}
		if !check(fmt.Sprintf("%d random pieces", len(pieces)), pieces...) {
			return
		}
	}
}

// resp encodes args as a client request (array of bulk strings).
func resp(args ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	return b.String()
}

func TestRequestParser_handWrittenStreamsAtEveryCut(t *testing.T) {
	tricky := "v\r\n*3\r\n$3\r\nSET\r\n\n" // a value that looks like requests
	stream := resp("SET", "k", tricky) +
		resp("PING") +
		resp("EvalSha", "0123456789abcdef0123456789abcdef01234567", "1", "k", "tok") +
		resp("SET", "", "") + // empty bulk strings
		"*0\r\n" + "*-1\r\n" + // run nothing in Redis
		"PING\r\n" + // inline
		"  set  a b\n" + // inline, leading blanks, bare \n
		"\r\n" + // blank line: nothing
		resp(strings.Repeat("x", maxName+1)) + // too long for a name
		resp("GET", strings.Repeat("\r\n", 5000)) // a big value
	checkSplits(t, []byte(stream), map[string]uint64{
		"set": 3, "ping": 2, "evalsha": 1, "get": 1, "?": 1,
	})
}

func TestRequestParser_stopsOnBytesThatAreNoRequest(t *testing.T) {
	for _, s := range []string{
		"*1\r\n+PING\r\n",       // element not a bulk string
		"*1\r\n$4\r\nPINGxx",    // no CRLF after the bytes
		"*x\r\n",                // no length
		"*1\r\n$-1\r\n",         // null bulk in a request
		"*1\r\n$4\nPING\r\n",    // LF without CR
		"*99999999999999999999", // too long a number
	} {
		total, _, bad := feedAll([]byte(resp("PING") + s + resp("PING")))
		if !bad || total != 1 {
			t.Errorf("%q: total %d bad %v, want 1 (the PING before) and bad", s, total, bad)
		}
	}
}

// recorder keeps a copy of everything written to the connection.
type recorder struct {
	net.Conn
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (r recorder) Write(b []byte) (int, error) {
	n, err := r.Conn.Write(b)
	r.mu.Lock()
	r.buf.Write(b[:n])
	r.mu.Unlock()
	return n, err
}

// TestRequestParser_realClientStreamsAtEveryCut records what rueidis and
// go-redis really write for a workload (handshakes, pipelined commands,
// script calls, binary values) and checks the parser counts the workload's
// commands in it exactly, however the stream is cut into writes.
func TestRequestParser_realClientStreamsAtEveryCut(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	const n = 5
	value := "a\r\n*2\r\n$4\r\nPING\r\n\x00\xff"
	script := `return redis.call("GET", KEYS[1])`

	t.Run("rueidis", func(t *testing.T) {
		var mu sync.Mutex
		var buf bytes.Buffer
		c, err := rueidis.NewClient(rueidis.ClientOption{
			InitAddress: []string{srv.Addr},
			DialCtxFn: func(
				ctx context.Context,
				dst string,
				d *net.Dialer,
				_ *tls.Config,
			) (net.Conn, error) {
				conn, err := d.DialContext(ctx, "tcp", dst)
				if err != nil {
					return nil, err
				}
				return recorder{Conn: conn, mu: &mu, buf: &buf}, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		lua := rueidis.NewLuaScript(script)
		for i := range n {
			key := fmt.Sprintf("rec:r:%d", i)
			for _, r := range c.DoMulti(ctx,
				c.B().Ping().Build(), c.B().Set().Key(key).Value(value).Build()) {
				if err := r.Error(); err != nil {
					t.Fatal(err)
				}
			}
			if v, err := lua.Exec(ctx, c, []string{key}, nil).ToString(); err != nil || v != value {
				t.Fatalf("script: %q, %v", v, err)
			}
		}
		c.Close()
		mu.Lock()
		stream := bytes.Clone(buf.Bytes())
		mu.Unlock()
		_, by, _ := feedAll(stream)
		// The script is EVALSHA, and EVAL once after NOSCRIPT. Connection
		// set-up adds hello, client (tracking, setinfo), a cluster probe
		// and pings.
		want := map[string]uint64{"set": n, "evalsha": n, "eval": 1}
		for name, c := range by {
			if _, ok := want[name]; !ok {
				want[name] = c
				if name != "hello" && name != "client" && name != "cluster" && name != "ping" {
					t.Errorf("unexpected command %q x%d in rueidis's stream", name, c)
				}
			}
		}
		if want["ping"] < n {
			t.Errorf("ping x%d, want at least the workload's %d", want["ping"], n)
		}
		if by["hello"] == 0 {
			t.Error("no hello in the stream: not the handshake recorded")
		}
		// rueidis pipelines; also see each command as its own write.
		checkSplits(t, stream, want)
	})

	t.Run("go-redis", func(t *testing.T) {
		var mu sync.Mutex
		var buf bytes.Buffer
		opt := &goredis.Options{Addr: srv.Addr}
		dial := goredis.NewDialer(opt)
		opt.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return recorder{Conn: conn, mu: &mu, buf: &buf}, nil
		}
		c := goredis.NewClient(opt)
		s := goredis.NewScript(script + " -- not yet loaded")
		for i := range n {
			key := fmt.Sprintf("rec:g:%d", i)
			if err := c.Ping(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			if err := c.Set(ctx, key, value, 0).Err(); err != nil {
				t.Fatal(err)
			}
			if v, err := s.Run(ctx, c, []string{key}).Text(); err != nil || v != value {
				t.Fatalf("script: %q, %v", v, err)
			}
		}
		c.Close()
		mu.Lock()
		stream := bytes.Clone(buf.Bytes())
		mu.Unlock()
		_, by, _ := feedAll(stream)
		// Script.Run sends EVALSHA, and EVAL once after NOSCRIPT.
		want := map[string]uint64{"ping": n, "set": n, "evalsha": n, "eval": 1}
		for name, c := range by {
			if _, ok := want[name]; !ok {
				want[name] = c
				if name != "hello" && name != "client" {
					t.Errorf("unexpected command %q x%d in go-redis's stream", name, c)
				}
			}
		}
		checkSplits(t, stream, want)
	})
}

// srvDelta returns INFO commandstats after minus before.
func srvDelta(t *testing.T, admin rueidis.Client, before CommandStats) CommandStats {
	t.Helper()
	after, err := ReadCommandStats(context.Background(), admin)
	if err != nil {
		t.Fatal(err)
	}
	return after.Sub(before)
}

// TestRequestCounter_matchesCommandstatsForTopLevelCommands counts through
// the dialers the backends use and checks the counts against what the real
// server's INFO commandstats saw: equal for top-level commands, and a script
// is one request but as many server calls as it runs commands.
func TestRequestCounter_matchesCommandstatsForTopLevelCommands(t *testing.T) {
	srv := redistest.Start(t)
	target, err := Resolve(srv.Addr, "", &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := target.Admin()
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx := context.Background()
	const n = 200

	// measure runs work once to warm the client up (it dials connections
	// lazily, and each says hello and more), then again between two
	// snapshots of both counters.
	measure := func(t *testing.T, reqs *RequestCounter, work func()) (RequestStats, CommandStats) {
		t.Helper()
		work()
		before, err := ReadCommandStats(ctx, admin)
		if err != nil {
			t.Fatal(err)
		}
		rb := reqs.Snapshot()
		work()
		req := reqs.Snapshot().Sub(rb)
		return req, srvDelta(t, admin, before)
	}
	want := map[string]uint64{"ping": n, "set": n}

	t.Run("rueidis", func(t *testing.T) {
		reqs := NewRequestCounter()
		opt, err := Config{Target: target, Requests: reqs}.RueidisOption()
		if err != nil {
			t.Fatal(err)
		}
		c, err := rueidis.NewClient(opt)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Do(ctx, c.B().Ping().Build()).Error(); err != nil { // warm: handshake done
			t.Fatal(err)
		}
		req, srvStats := measure(t, reqs, func() {
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() { // concurrent: auto-pipelined into shared writes
					defer wg.Done()
					if err := c.Do(ctx, c.B().Ping().Build()).Error(); err != nil {
						t.Error(err)
					}
					if err := c.Do(ctx,
						c.B().Set().Key(fmt.Sprint("cnt:r:", i)).Value("v").Build()).Error(); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
		})
		if req.Total != 2*n || req.Bad != 0 || !maps.Equal(req.ByCmd, want) {
			t.Errorf("requests: total %d bad %d by %v, want %d %v", req.Total, req.Bad, req.ByCmd, 2*n, want)
		}
		if srvStats.Total != 2*n || !maps.Equal(srvStats.Calls, want) {
			t.Errorf("commandstats: total %d by %v, want %d %v", srvStats.Total, srvStats.Calls, 2*n, want)
		}

		// A script that runs SET, GET and DEL: one request, four calls.
		lua := rueidis.NewLuaScript(`redis.call("SET", KEYS[1], "v") redis.call("GET", KEYS[1]) ` +
			`return redis.call("DEL", KEYS[1])`)
		req, srvStats = measure(t, reqs, func() {
			if err := lua.Exec(ctx, c, []string{"cnt:lua"}, nil).Error(); err != nil {
				t.Error(err)
			}
		})
		if req.Total != 1 || req.ByCmd["evalsha"] != 1 {
			t.Errorf("script: requests %d %v, want 1 evalsha", req.Total, req.ByCmd)
		}
		if srvStats.Total != 4 {
			t.Errorf("script: commandstats total %d (%v), want 4 (evalsha, set, get, del)",
				srvStats.Total, srvStats.Calls)
		}
	})

	t.Run("go-redis", func(t *testing.T) {
		reqs := NewRequestCounter()
		opt, err := Config{Target: target, Requests: reqs}.GoRedisOptions()
		if err != nil {
			t.Fatal(err)
		}
		c := goredis.NewClient(opt)
		defer c.Close()
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		req, srvStats := measure(t, reqs, func() {
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() { // concurrent: the pool dials more connections
					defer wg.Done()
					if err := c.Ping(ctx).Err(); err != nil {
						t.Error(err)
					}
					if err := c.Set(ctx, fmt.Sprint("cnt:g:", i), "v", time.Minute).Err(); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
		})
		if req.Total != 2*n || req.Bad != 0 || !maps.Equal(req.ByCmd, want) {
			t.Errorf("requests: total %d bad %d by %v, want %d %v", req.Total, req.Bad, req.ByCmd, 2*n, want)
		}
		if srvStats.Total != 2*n || !maps.Equal(srvStats.Calls, want) {
			t.Errorf("commandstats: total %d by %v, want %d %v", srvStats.Total, srvStats.Calls, 2*n, want)
		}
	})
}
