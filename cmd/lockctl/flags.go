package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// errHelp asks run to print the usage text and exit 0.
var errHelp = errors.New("help requested")

// config holds every flag; zero values of the connection fields mean "not
// given", so the URL's value stays.
type config struct {
	url, host, user, pass string
	port, db              int
	tls, insecure         bool
	cacert, cert, key     string
	cluster               bool
	timeout               time.Duration
	prefix                string
	json                  bool

	opt rueidis.ClientOption // the options connect used, for error messages

	limit    int           // list
	force    bool          // release
	yes      bool          // release
	forDur   time.Duration // watch
	count    int           // watch
	password bool          // --pass or -a was given (an empty password is one)
}

// invocation is a parsed command line.
type invocation struct {
	cfg  config
	cmd  string
	args []string
}

// passFlag records that a password was given, even an empty one.
type passFlag struct{ c *config }

func (p passFlag) String() string { return "" }
func (p passFlag) Set(s string) error {
	p.c.pass, p.c.password = s, true
	return nil
}

// globalFlags registers the connection and output flags on fs.
func globalFlags(fs *flag.FlagSet, c *config) {
	fs.StringVar(&c.url, "u", c.url, "Redis URL")
	fs.StringVar(&c.url, "url", c.url, "Redis URL")
	fs.StringVar(&c.host, "h", c.host, "host")
	fs.IntVar(&c.port, "p", c.port, "port")
	fs.StringVar(&c.user, "user", c.user, "ACL user")
	fs.Var(passFlag{c}, "pass", "password")
	fs.Var(passFlag{c}, "a", "password")
	fs.IntVar(&c.db, "n", c.db, "database number")
	fs.BoolVar(&c.tls, "tls", c.tls, "use TLS")
	fs.StringVar(&c.cacert, "cacert", c.cacert, "CA certificate file")
	fs.StringVar(&c.cert, "cert", c.cert, "client certificate file")
	fs.StringVar(&c.key, "key", c.key, "client private key file")
	fs.BoolVar(&c.insecure, "insecure", c.insecure, "skip TLS certificate verification")
	fs.BoolVar(&c.cluster, "c", c.cluster, "Redis Cluster")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "connect and request timeout")
	fs.StringVar(&c.prefix, "prefix", c.prefix, "key prefix")
	fs.BoolVar(&c.json, "json", c.json, "JSON output")
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseArgs parses global flags, the command, and the command's flags, which
// may be mixed with its arguments. A bare -h (redis-cli's host flag, given
// no host), -help, --help or the command "help" ask for the usage text.
func parseArgs(args []string) (*invocation, error) {
	if n := len(args); n == 0 {
		return nil, errors.New("no command given")
	} else if a := args[n-1]; a == "-h" || a == "--h" {
		return nil, errHelp
	}
	inv := &invocation{cfg: config{db: -1, timeout: 5 * time.Second, prefix: "klauthed:"}}
	c := &inv.cfg
	fs := newFlagSet("lockctl")
	globalFlags(fs, c)
	if err := fs.Parse(args); err != nil {
		return nil, flagErr(err)
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return nil, errors.New("no command given")
	}
	inv.cmd, rest = rest[0], rest[1:]
	sub := newFlagSet(inv.cmd)
	globalFlags(sub, c)
	switch inv.cmd {
	case "help":
		return nil, errHelp
	case "inspect":
	case "list":
		sub.IntVar(&c.limit, "limit", 100, "print at most N locks")
	case "watch":
		sub.DurationVar(&c.forDur, "for", 0, "stop after this long")
		sub.IntVar(&c.count, "count", 0, "stop after N changes")
	case "release":
		sub.BoolVar(&c.force, "force", false, "free the key whoever holds it")
		sub.BoolVar(&c.yes, "yes", false, "do not ask for confirmation")
	default:
		return nil, fmt.Errorf("unknown command %q (want inspect, list, watch or release)", inv.cmd)
	}
	pos, err := parseInterleaved(sub, rest)
	if err != nil {
		return nil, flagErr(err)
	}
	inv.args = pos
	switch inv.cmd {
	case "inspect":
		if len(pos) == 0 {
			return nil, errors.New("inspect needs at least one KEY")
		}
	case "list":
		if len(pos) > 1 {
			return nil, errors.New("list takes at most one PATTERN")
		}
		if len(pos) == 1 && pos[0] == "" {
			return nil, errors.New("PATTERN must not be empty")
		}
		if c.limit < 0 {
			return nil, errors.New("--limit must not be negative")
		}
	case "watch":
		if len(pos) != 1 {
			return nil, errors.New("watch needs exactly one KEY")
		}
		if c.forDur < 0 || c.count < 0 {
			return nil, errors.New("--for and --count must not be negative")
		}
	case "release":
		if len(pos) != 1 {
			return nil, errors.New("release needs exactly one KEY")
		}
		if !c.force {
			return nil, errors.New("release needs --force: it frees the key " +
				"while its holder may still believe it holds it")
		}
	}
	for _, k := range pos {
		if inv.cmd != "list" && k == "" {
			return nil, errors.New("KEY must not be empty")
		}
	}
	if c.timeout <= 0 {
		return nil, errors.New("--timeout must be positive")
	}
	if strings.ContainsAny(c.prefix, "{}") {
		return nil, errors.New("--prefix must not contain braces")
	}
	return inv, nil
}

// flagErr turns the flag package's help error into errHelp.
func flagErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return errHelp
	}
	return err
}

// parseInterleaved parses fs from args, letting flags follow positional
// arguments; everything after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// clientOption builds the rueidis options from REDIS_URL or -u, then the
// redis-cli style flags that override parts of it.
func (c *config) clientOption() (rueidis.ClientOption, error) {
	var opt rueidis.ClientOption
	raw := c.url
	if raw == "" {
		raw = os.Getenv("REDIS_URL")
	}
	if raw == "" {
		raw = "redis://127.0.0.1:6379"
	}
	opt, err := rueidis.ParseURL(raw)
	if err != nil {
		// url.Error repeats the URL, password included: drop it.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return opt, fmt.Errorf("bad Redis URL: %v", err)
	}
	if len(opt.InitAddress) != 1 || opt.DialCtxFn != nil {
		return opt, errors.New("bad Redis URL: want one host:port (redis:// or rediss://)")
	}
	if c.host != "" || c.port != 0 {
		host, port, _ := net.SplitHostPort(opt.InitAddress[0])
		if c.host != "" {
			host = c.host
		}
		if c.port != 0 {
			port = strconv.Itoa(c.port)
		}
		opt.InitAddress = []string{net.JoinHostPort(host, port)}
		if opt.TLSConfig != nil {
			opt.TLSConfig.ServerName = host
		}
	}
	if c.user != "" {
		opt.Username = c.user
	}
	if c.password {
		opt.Password = c.pass
	} else if p := os.Getenv("REDISCLI_AUTH"); p != "" && opt.Password == "" {
		opt.Password = p
	}
	if c.db >= 0 {
		opt.SelectDB = c.db
	}
	if c.tls || c.cacert != "" || c.cert != "" || c.insecure {
		if opt.TLSConfig == nil {
			host, _, _ := net.SplitHostPort(opt.InitAddress[0])
			opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
		}
		opt.TLSConfig.InsecureSkipVerify = c.insecure
		if c.cacert != "" {
			pem, err := os.ReadFile(c.cacert)
			if err != nil {
				return opt, fmt.Errorf("--cacert: %v", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return opt, fmt.Errorf("--cacert: no PEM certificate in %s", c.cacert)
			}
			opt.TLSConfig.RootCAs = pool
		}
		if c.cert != "" || c.key != "" {
			pair, err := tls.LoadX509KeyPair(c.cert, c.key)
			if err != nil {
				return opt, fmt.Errorf("--cert/--key: %v", err)
			}
			opt.TLSConfig.Certificates = []tls.Certificate{pair}
		}
	}
	opt.Dialer.Timeout = c.timeout
	opt.ConnWriteTimeout = c.timeout
	opt.ForceSingleClient = !c.cluster
	opt.DisableRetry = true
	opt.ClientName = "lockctl"
	opt.ClientSetInfo = rueidis.DisableClientSetInfo
	return opt, nil
}

// connect makes the client, translating connection failures into one-line
// errors.
func connect(ctx context.Context, c *config, opt rueidis.ClientOption) (rueidis.Client, error) {
	c.opt = opt
	client, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, c.redisErr(ctx, "HELLO (connect)", err)
	}
	return client, nil
}

// nopermRE finds the command a NOPERM error names.
var nopermRE = regexp.MustCompile(`^NOPERM .* to run the '([^']+)' command`)

// redisErr describes err from running cmd: "lockctl: cannot connect to
// ADDR", "lockctl: the Redis user U may not run CMD", a refused login, a
// timeout, or the reply itself.
func (c *config) redisErr(ctx context.Context, cmd string, err error) error {
	addr := strings.Join(c.opt.InitAddress, ",")
	user := c.opt.Username
	if user == "" {
		user = "default"
	}
	// rueidis may join several errors, one a line: the first is Redis's.
	msg, _, _ := strings.Cut(err.Error(), "\n")
	if m := nopermRE.FindStringSubmatch(msg); m != nil {
		cmd = strings.ToUpper(m[1]) // the one Redis names, e.g. in the handshake
	}
	switch {
	case strings.HasPrefix(msg, "NOPERM"):
		return fmt.Errorf("lockctl: the Redis user %q may not run %s: %s", user, cmd, msg)
	case strings.HasPrefix(msg, "WRONGPASS"), strings.HasPrefix(msg, "NOAUTH"):
		return fmt.Errorf("lockctl: %s refused the login of user %q: %s", addr, user, msg)
	case errors.Is(err, rueidis.ErrNoCache):
		return fmt.Errorf("lockctl: watch needs client-side caching (Redis 6 or later, "+
			"RESP3, CLIENT TRACKING), which %s refused: %s", addr, msg)
	case ctx.Err() != nil:
		return fmt.Errorf("lockctl: interrupted while running %s on %s", cmd, addr)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("lockctl: no answer from %s within %v (%s)", addr, c.timeout, cmd)
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) || errors.Is(err, rueidis.ErrClosing) ||
		errors.Is(err, io.EOF) || errors.Is(err, rueidis.ErrNoAddr) {
		return fmt.Errorf("lockctl: cannot connect to %s: %v", addr, err)
	}
	if _, ok := rueidis.IsRedisErr(err); ok {
		return fmt.Errorf("lockctl: Redis at %s refused %s: %s", addr, cmd, msg)
	}
	if strings.Contains(msg, "tls:") || strings.Contains(msg, "x509:") {
		return fmt.Errorf("lockctl: cannot connect to %s: %v", addr, err)
	}
	return fmt.Errorf("lockctl: %s on %s: %v", cmd, addr, err)
}
