package reliability

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"math/bits"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauthed/lock"
	"github.com/klauthed/lock/internal/redistest"
	"github.com/klauthed/lock/lockredis"
	"github.com/redis/rueidis"
)

// TestToken_noRepeatsOverAMillionDraws draws a million tokens and checks
// that none repeats, that each is 22 characters of URL-safe base64 carrying
// 16 random bytes, and that they do not come from a clock or a counter:
// consecutive tokens share no long common prefix (a timestamp or counter in
// the high bytes would), differ in about half their bits (a counter differs
// in about two), and every one of the 128 bit positions is set in about
// half the draws (within 6 standard deviations; a fixed or time-derived
// field would be far off).
func TestToken_noRepeatsOverAMillionDraws(t *testing.T) {
	const n = 1_000_000
	seen := make(map[lock.Token]struct{}, n)
	var ones [128]int
	var prev [16]byte
	maxPrefix, hammingSum := 0, 0
	for i := 0; i < n; i++ {
		tok := lock.NewToken()
		if _, dup := seen[tok]; dup {
			t.Fatalf("token %q repeated after %d draws", tok, i)
		}
		seen[tok] = struct{}{}
		if len(tok) != lock.TokenLen {
			t.Fatalf("token %q has length %d, want %d", tok, len(tok), lock.TokenLen)
		}
		var raw [16]byte
		if k, err := base64.RawURLEncoding.Decode(raw[:], []byte(tok)); err != nil || k != 16 {
			t.Fatalf("token %q is not 16 bytes of unpadded URL-safe base64: %d bytes, %v", tok, k, err)
		}
		for b := 0; b < 128; b++ {
			if raw[b/8]>>(b%8)&1 == 1 {
				ones[b]++
			}
		}
		if i > 0 {
			p := 0
			for p < 16 && raw[p] == prev[p] {
				p++
			}
			maxPrefix = max(maxPrefix, p)
			for j := range raw {
				hammingSum += bits.OnesCount8(raw[j] ^ prev[j])
			}
		}
		prev = raw
	}
	// P(some pair of a million shares 6 leading random bytes) ~ 1e6/2^48.
	if maxPrefix >= 6 {
		t.Errorf("two consecutive tokens share a %d-byte prefix; tokens look time- or counter-derived", maxPrefix)
	}
	// The mean Hamming distance of independent 128-bit draws is 64 with a
	// standard error of sqrt(32)/1000 ~ 0.006 over a million pairs.
	if mean := float64(hammingSum) / (n - 1); mean < 63.5 || mean > 64.5 {
		t.Errorf("consecutive tokens differ in %.3f bits on average, want about 64", mean)
	}
	// Each bit: binomial(n, 1/2), standard deviation 500.
	for b, c := range ones {
		if c < n/2-3000 || c > n/2+3000 {
			t.Errorf("bit %d set in %d of %d tokens, want %d±3000", b, c, n, n/2)
		}
	}
}

// aclCommands are the commands lockredis (with client-side caching) and
// rueidis need, found by running every operation as a user with -@all
// and adding what ACL LOG reported missing:
//
//   - hello, ping: rueidis's handshake (HELLO 3 AUTH ...) and health checks;
//   - cluster|slots: rueidis.NewClient asks it on connect to tell Redis
//     Cluster from a single server (ClientOption.ForceSingleClient skips
//     it);
//   - client|tracking, client|caching: client-side caching (tracking OPTIN
//     on connect, CACHING YES before each cached inspect);
//   - (Redis 7.2 and later also want client|setinfo: rueidis sends the
//     library name and version on connect and ignores a refusal; Redis
//     7.0, which these tests run, has no such subcommand);
//   - evalsha, eval: acquire, refresh, release, and the NOSCRIPT fallback;
//   - evalsha_ro, eval_ro: the read-only inspect used by waiters and
//     lease watches;
//   - get, set, del, pexpire, pttl, incr: what the scripts call inside
//     (Redis checks a script's commands against the user's ACL too; a
//     user could run each of them directly on the prefix's keys, so the
//     scripts do not stand guard over the lock's invariants against this
//     user — give the lock's user to the lock only).
var aclCommands = []string{
	"+hello", "+ping", "+cluster|slots", "+client|tracking", "+client|caching",
	"+evalsha", "+eval", "+evalsha_ro", "+eval_ro",
	"+get", "+set", "+del", "+pexpire", "+pttl", "+incr",
}

// setUser creates ACL user name with password "pw", key pattern keys and
// the given command rules, after resetting everything.
func setUser(t *testing.T, s *redistest.Server, name, keys string, cmds []string) {
	t.Helper()
	args := append([]string{"ACL", "SETUSER", name, "reset", "on", ">pw", keys, "resetchannels", "-@all"}, cmds...)
	if got := s.Cli(t, args...); got != "OK" {
		t.Fatalf("ACL SETUSER = %q", got)
	}
}

func aclManager(t *testing.T, s *redistest.Server, user string) (*lockredis.Manager, error) {
	t.Helper()
	m, err := lockredis.New(lockredis.Options{ClientOption: rueidis.ClientOption{
		InitAddress: []string{s.Addr},
		Username:    user,
		Password:    "pw",
		Dialer:      net.Dialer{Timeout: time.Second},
	}})
	if err == nil {
		t.Cleanup(func() { m.Close() })
	}
	return m, err
}

// exercise runs every kind of call lockredis makes: a TryAcquire, a waiter
// woken by another Manager's release (cached inspect), Refresh, a lease
// watch (lock.Run), Release.
func exercise(t *testing.T, a, b *lockredis.Manager) {
	t.Helper()
	c := ctxT(t)
	l := take(t, a, "acl", time.Minute)
	if err := l.Refresh(c, time.Minute); err != nil {
		t.Fatalf("Refresh = %v", err)
	}
	got := make(chan error, 1)
	go func() {
		w, err := b.Acquire(c, "acl", time.Minute)
		if err == nil {
			err = w.Release(c)
		}
		got <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := l.Release(c); err != nil {
		t.Fatalf("Release = %v", err)
	}
	if err := <-got; err != nil {
		t.Fatalf("waiter = %v", err)
	}
	err := lock.Run(c, a, "acl", lock.RunOptions{TTL: time.Second}, func(ctx context.Context, _ lock.Lease) error {
		time.Sleep(50 * time.Millisecond)
		return ctx.Err()
	})
	if err != nil {
		t.Fatalf("lock.Run = %v", err)
	}
}

// TestACL_minimalUser_worksEndToEnd runs lockredis as an ACL user allowed
// only aclCommands on only the keys under the default prefix, and checks
// that Redis logged no denied command while it did.
func TestACL_minimalUser_worksEndToEnd(t *testing.T) {
	s := redistest.Start(t)
	setUser(t, s, "klauthed", "~"+lockredis.DefaultPrefix+"*", aclCommands)
	s.Cli(t, "ACL", "LOG", "RESET")
	a, err := aclManager(t, s, "klauthed")
	if err != nil {
		t.Fatalf("New as the minimal ACL user: %v", err)
	}
	b, err := aclManager(t, s, "klauthed")
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, a, b)
	if log := s.Cli(t, "ACL", "LOG"); log != "" {
		t.Errorf("Redis denied commands to the minimal user:\n%s", log)
	}
}

// TestACL_missingPermission_failsFastWithNOPERM removes one permission at a
// time and checks that the call that needs it returns an error naming
// NOPERM well within its context's deadline, instead of hanging or
// reporting contention.
func TestACL_missingPermission_failsFastWithNOPERM(t *testing.T) {
	without := func(drop string) []string {
		var out []string
		for _, c := range aclCommands {
			if c != drop {
				out = append(out, c)
			}
		}
		return out
	}
	cases := []struct {
		name string
		keys string
		cmds []string
		// call makes the call that needs the missing permission.
		call func(ctx context.Context, m *lockredis.Manager) error
	}{
		{
			name: "keyPatternExcludesPrefix", keys: "~other:*", cmds: aclCommands,
			call: func(ctx context.Context, m *lockredis.Manager) error {
				_, _, err := m.TryAcquire(ctx, "k", time.Minute)
				return err
			},
		},
		{
			name: "noEvalsha", keys: "~" + lockredis.DefaultPrefix + "*", cmds: without("+evalsha"),
			call: func(ctx context.Context, m *lockredis.Manager) error {
				_, _, err := m.TryAcquire(ctx, "k", time.Minute)
				return err
			},
		},
		{
			// A waiter needs the read-only inspect to sleep until the
			// release.
			name: "noEvalshaRO", keys: "~" + lockredis.DefaultPrefix + "*", cmds: without("+evalsha_ro"),
			call: func(ctx context.Context, m *lockredis.Manager) error {
				if _, ok, err := m.TryAcquire(ctx, "k", time.Minute); err != nil || !ok {
					return fmt.Errorf("setup: first TryAcquire = %v, %v", ok, err)
				}
				_, err := m.Acquire(ctx, "k", time.Minute)
				return err
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := redistest.Start(t)
			setUser(t, s, "klauthed", tc.keys, tc.cmds)
			m, err := aclManager(t, s, "klauthed")
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			const bound = 10 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			start := time.Now()
			err = tc.call(ctx, m)
			took := time.Since(start)
			if err == nil || !strings.Contains(err.Error(), "NOPERM") {
				t.Fatalf("call without the permission = %v, want an error naming NOPERM", err)
			}
			if errors.Is(err, context.DeadlineExceeded) || took > bound/2 {
				t.Fatalf("call without the permission took %v (%v); want a prompt NOPERM, not a wait for the deadline", took, err)
			}
			t.Logf("%s: %v (after %v)", tc.name, err, took.Round(time.Millisecond))
		})
	}

	t.Run("noClientTracking", func(t *testing.T) {
		// Without CLIENT TRACKING the connection handshake fails: New
		// reports it at once.
		s := redistest.Start(t)
		setUser(t, s, "klauthed", "~"+lockredis.DefaultPrefix+"*", without("+client|tracking"))
		_, err := aclManager(t, s, "klauthed")
		if err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Fatalf("New without client|tracking = %v, want an error naming NOPERM", err)
		}
	})
}

// tlsFiles writes a fresh CA and a server certificate for 127.0.0.1 signed
// by it (ECDSA P-256) into dir and returns the CA pool and the file names.
func tlsFiles(t *testing.T, dir string) (pool *x509.CertPool, caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "klauthed test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pool = x509.NewCertPool()
	pool.AddCert(ca)
	return pool, write("ca.crt", "CERTIFICATE", caDER), write("server.crt", "CERTIFICATE", srvDER), write("server.key", "EC PRIVATE KEY", keyDER)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestTLS_acquireReleaseOverTLS starts redis-server with a TLS port and a
// certificate made here, and runs lockredis over TLS (verifying the server
// against the test CA). It also checks that a client that does not trust
// the CA is refused, and that plain RESP on the TLS port does not work, so
// the lease really went over TLS. The server keeps a plain port too: the
// test helper checks readiness on it (redistest pings without TLS).
func TestTLS_acquireReleaseOverTLS(t *testing.T) {
	pool, ca, cert, key := tlsFiles(t, t.TempDir())
	port := freePort(t)
	s := redistest.Start(t,
		"--tls-port", strconv.Itoa(port),
		"--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
		"--tls-auth-clients", "no")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	newTLS := func(cfg *tls.Config) (*lockredis.Manager, error) {
		m, err := lockredis.New(lockredis.Options{ClientOption: rueidis.ClientOption{
			InitAddress: []string{addr},
			TLSConfig:   cfg,
			Dialer:      net.Dialer{Timeout: 2 * time.Second},
		}})
		if err == nil {
			t.Cleanup(func() { m.Close() })
		}
		return m, err
	}
	a, err := newTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("New over TLS: %v", err)
	}
	b, err := newTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, a, b)
	if n := s.Cli(t, "INFO", "stats"); !strings.Contains(n, "total_connections_received") {
		t.Fatalf("INFO stats: %q", n)
	}

	if _, err := newTLS(&tls.Config{RootCAs: x509.NewCertPool(), MinVersion: tls.VersionTLS12}); err == nil {
		t.Error("a client that does not trust the test CA connected")
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted CA: %v, want a certificate error", err)
	}
	if m, err := lockredis.New(lockredis.Options{ClientOption: rueidis.ClientOption{
		InitAddress: []string{addr},
		Dialer:      net.Dialer{Timeout: time.Second},
	}}); err == nil {
		m.Close()
		t.Error("plain RESP on the TLS port connected")
	}
}
