package harness

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"syscall"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
)

// RequestCounter counts the requests clients send to Redis, on the client
// side: every connection dialed through it is wrapped so that the bytes the
// client WRITES are parsed as RESP requests (an array of bulk strings, or
// an inline command line), and each complete top-level request counts once,
// under its lower-cased first word. A script invocation (EVALSHA, FCALL)
// is one request however many commands the script runs inside Redis; that
// is the difference from INFO commandstats, which counts those too.
//
// The zero value is not usable; make one with NewRequestCounter. Its
// methods are safe for concurrent use.
type RequestCounter struct {
	mu     sync.Mutex
	conns  []*reqParser
	manual *reqParser // requests counted with Add
}

// NewRequestCounter returns a counter with no connections.
func NewRequestCounter() *RequestCounter { return &RequestCounter{} }

// RequestStats is a snapshot of a RequestCounter: requests in total and per
// command name, and how many connections wrote bytes that are not RESP
// requests (their counting stopped there, so Total is then a lower bound).
type RequestStats struct {
	Total uint64
	ByCmd map[string]uint64
	Bad   int
}

// Sub returns s minus before.
func (s RequestStats) Sub(before RequestStats) RequestStats {
	out := RequestStats{Total: s.Total - before.Total, ByCmd: map[string]uint64{}, Bad: s.Bad}
	for name, n := range s.ByCmd {
		if d := n - before.ByCmd[name]; d > 0 {
			out.ByCmd[name] = d
		}
	}
	return out
}

// Snapshot returns the counts so far over every connection the counter has
// wrapped, closed ones included.
func (c *RequestCounter) Snapshot() RequestStats {
	c.mu.Lock()
	conns := append([]*reqParser(nil), c.conns...)
	c.mu.Unlock()
	s := RequestStats{ByCmd: map[string]uint64{}}
	for _, p := range conns {
		p.mu.Lock()
		s.Total += p.total
		for name, n := range p.byCmd {
			s.ByCmd[name] += *n
		}
		if p.st == stBad {
			s.Bad++
		}
		p.mu.Unlock()
	}
	return s
}

// Add counts one request called name, for clients whose requests are not
// RESP (lockmongo counts its driver's commands with it).
func (c *RequestCounter) Add(name string) {
	c.mu.Lock()
	if c.manual == nil {
		c.manual = &reqParser{byCmd: map[string]*uint64{}}
		c.conns = append(c.conns, c.manual)
	}
	p := c.manual
	c.mu.Unlock()
	p.mu.Lock()
	p.keepName([]byte(name))
	p.done()
	p.mu.Unlock()
}

// Wrap returns conn with its writes counted. The result also offers
// SyscallConn when conn does (go-redis's pool health check uses it) and
// NetConn, so clients treat it as they would treat conn.
func (c *RequestCounter) Wrap(conn net.Conn) net.Conn {
	p := &reqParser{byCmd: map[string]*uint64{}}
	c.mu.Lock()
	c.conns = append(c.conns, p)
	c.mu.Unlock()
	cc := &countingConn{Conn: conn, p: p}
	if _, ok := conn.(syscall.Conn); ok {
		return &countingSysConn{cc}
	}
	return cc
}

// RueidisDial is a rueidis ClientOption.DialCtxFn that dials as rueidis
// does by default (TLS when cfg is set) and wraps the connection.
func (c *RequestCounter) RueidisDial(
	ctx context.Context,
	dst string,
	d *net.Dialer,
	cfg *tls.Config,
) (net.Conn, error) {
	var conn net.Conn
	var err error
	if cfg != nil {
		conn, err = (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(ctx, "tcp", dst)
	} else {
		conn, err = d.DialContext(ctx, "tcp", dst)
	}
	if err != nil {
		return nil, err
	}
	return c.Wrap(conn), nil
}

// GoRedisDialer returns a go-redis Options.Dialer that dials as go-redis
// does by default for opt (goredis.NewDialer) and wraps the connection.
func (c *RequestCounter) GoRedisDialer(
	opt *goredis.Options,
) func(context.Context, string, string) (net.Conn, error) {
	dial := goredis.NewDialer(opt)
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return c.Wrap(conn), nil
	}
}

// RueidisOption is Target.RueidisOption with every connection counted by
// cfg.Requests (when set).
func (cfg Config) RueidisOption() (rueidis.ClientOption, error) {
	opt, err := cfg.Target.RueidisOption()
	if err == nil && cfg.Requests != nil {
		opt.DialCtxFn = cfg.Requests.RueidisDial
	}
	return opt, err
}

// GoRedisOptions is Target.GoRedisOptions with every connection counted by
// cfg.Requests (when set).
func (cfg Config) GoRedisOptions() (*goredis.Options, error) {
	opt, err := cfg.Target.GoRedisOptions()
	if err == nil && cfg.Requests != nil {
		opt.Dialer = cfg.Requests.GoRedisDialer(opt)
	}
	return opt, err
}

type countingConn struct {
	net.Conn
	p *reqParser
}

// Write writes b and counts the requests in the part that was written. The
// parser's lock is held across the write so that concurrent writers are
// parsed in the order their bytes went out.
func (c *countingConn) Write(b []byte) (int, error) {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.p.feed(b[:n])
	}
	return n, err
}

// NetConn returns the wrapped connection, as tls.Conn's NetConn does.
func (c *countingConn) NetConn() net.Conn { return c.Conn }

type countingSysConn struct{ *countingConn }

func (c *countingSysConn) SyscallConn() (syscall.RawConn, error) {
	return c.Conn.(syscall.Conn).SyscallConn()
}

// Parser states. A request is "*<n>\r\n" then n times "$<len>\r\n<len
// bytes>\r\n", or (inline) any other line ending in "\n".
const (
	stStart     = iota // before a request
	stArrayLen         // in <n> after '*'
	stArrayLF          // after <n>'s '\r'
	stBulkHead         // before '$'
	stBulkLen          // in <len> after '$'
	stBulkLF           // after <len>'s '\r'
	stBulkBody         // in a bulk string's bytes
	stBulkCR           // after the bytes, before '\r'
	stBulkEndLF        // after the bytes and '\r', before '\n'
	stInline           // in an inline command line
	stBad              // bytes that are no RESP request: counting stops
)

// maxName is the longest first word kept as a command name; longer ones
// count under "?".
const maxName = 32

// reqParser is one connection's incremental RESP request parser and its
// counts. Everything is guarded by mu.
type reqParser struct {
	mu       sync.Mutex
	st       int
	num      int64 // the number being read (array or bulk length)
	neg      bool  // it had a '-' sign
	digs     int   // digits read so far
	args     int64 // bulk strings left in the current array
	first    bool  // the current bulk string is the request's first
	wordDone bool  // inline: the first word has ended
	left     int64 // bytes left in the current bulk string
	name     [maxName]byte
	nlen     int  // bytes of name kept
	long     bool // the first word was longer than maxName
	total    uint64
	byCmd    map[string]*uint64
}

func (p *reqParser) keepName(b []byte) {
	for _, ch := range b {
		if p.nlen == maxName {
			p.long = true
			return
		}
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		p.name[p.nlen] = ch
		p.nlen++
	}
}

func (p *reqParser) done() {
	p.total++
	name := p.name[:p.nlen]
	if p.long || p.nlen == 0 {
		name = []byte("?")
	}
	if n, ok := p.byCmd[string(name)]; ok { // no allocation for the lookup
		*n++
	} else {
		one := uint64(1)
		p.byCmd[string(name)] = &one
	}
	p.st, p.nlen, p.long = stStart, 0, false
}

// number reads one byte of a decimal length; false means it is not one.
func (p *reqParser) number(ch byte) bool {
	switch {
	case ch == '-' && p.digs == 0 && !p.neg:
		p.neg = true
	case '0' <= ch && ch <= '9' && p.digs < 18:
		p.num = p.num*10 + int64(ch-'0')
		p.digs++
	default:
		return false
	}
	return true
}

func (p *reqParser) startNumber(next int) {
	p.st, p.num, p.neg, p.digs = next, 0, false, 0
}

// feed parses the next bytes the client wrote.
func (p *reqParser) feed(b []byte) {
	for i := 0; i < len(b); {
		ch := b[i]
		switch p.st {
		case stBad:
			return
		case stStart:
			if ch == '*' {
				p.startNumber(stArrayLen)
			} else {
				p.st, p.wordDone = stInline, false
				continue // the byte is the line's first
			}
		case stArrayLen, stBulkLen:
			if ch == '\r' && p.digs > 0 {
				if p.st == stArrayLen {
					p.st = stArrayLF
				} else {
					p.st = stBulkLF
				}
			} else if !p.number(ch) {
				p.st = stBad
				return
			}
		case stArrayLF:
			if ch != '\n' {
				p.st = stBad
				return
			}
			if p.neg || p.num == 0 {
				// "*0" and "*-1" run nothing in Redis: not a request.
				p.st = stStart
			} else {
				p.args, p.first, p.st = p.num, true, stBulkHead
			}
		case stBulkHead:
			if ch != '$' {
				p.st = stBad
				return
			}
			p.startNumber(stBulkLen)
		case stBulkLF:
			if ch != '\n' || p.neg {
				p.st = stBad
				return
			}
			p.left, p.st = p.num, stBulkBody
			if p.left == 0 {
				p.st = stBulkCR
			}
		case stBulkBody:
			n := int64(len(b) - i)
			if n > p.left {
				n = p.left
			}
			if p.first {
				p.keepName(b[i : i+int(n)])
			}
			p.left -= n
			i += int(n)
			if p.left == 0 {
				p.st = stBulkCR
			}
			continue
		case stBulkCR:
			if ch != '\r' {
				p.st = stBad
				return
			}
			p.st = stBulkEndLF
		case stBulkEndLF:
			if ch != '\n' {
				p.st = stBad
				return
			}
			p.first = false
			p.args--
			if p.args == 0 {
				p.done()
			} else {
				p.st = stBulkHead
			}
		case stInline:
			// The line's first word is the command; a line with no word
			// (blank) runs nothing in Redis.
			switch {
			case ch == '\n':
				if p.nlen > 0 || p.long {
					p.done()
				} else {
					p.st = stStart
				}
			case ch == ' ' || ch == '\t' || ch == '\r':
				p.wordDone = p.nlen > 0 || p.long
			case !p.wordDone:
				p.keepName(b[i : i+1])
			}
		}
		i++
	}
}
