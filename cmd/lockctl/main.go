// Command lockctl lets an operator look at and repair klauthed locks in
// Redis, on the key layout of protocol 2 (lockredis.LockKey and
// scripts/README.md): who holds a key, for how long, its fence, and its
// waiting line; which locks are held; what happens to a key as it happens;
// and freeing a stuck key by hand.
//
// It talks to Redis with plain read commands (GET, PTTL, ZRANGE, ZMSCORE,
// HMGET, SCAN) and, for release --force, one tiny compare-and-delete script
// of its own, so it works whatever version of the Go wrappers a service
// runs. Run `lockctl --help` for the commands, flags and exit codes.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes. They are part of the command's interface: usage text and
// README list them.
const (
	exitOK       = 0 // done
	exitErr      = 1 // Redis could not be reached or refused, or a key is not a lock
	exitUsage    = 2 // bad flags or arguments
	exitNotHeld  = 3 // inspect: a key is free; release: nothing to remove
	exitDeclined = 4 // release: the confirmation was not given
)

const usageText = `lockctl: inspect and repair klauthed locks in Redis.

Usage:
  lockctl [flags] inspect KEY...            holder, TTL, fence, waiting line
  lockctl [flags] list [--limit N] [PATTERN]
                                            held locks whose key matches the
                                            glob PATTERN (default *), via SCAN
  lockctl [flags] watch [--for D] [--count N] KEY
                                            print each change to KEY as it
                                            happens (client-side caching
                                            invalidations, no polling)
  lockctl [flags] release --force [--yes] KEY
                                            free a stuck KEY after asking
                                            (the fence counter is kept)

KEY is the key the services lock (orders/42), not the Redis name
(klauthed:{orders/42}). Flags may come before or after the command.
lockctl --help, lockctl help, or a -h given no host print this text.

Connection (as redis-cli):
  -u URL           redis://[user:password@]host:port[/db] or rediss://...
                   (default: $REDIS_URL, else redis://127.0.0.1:6379)
  -h HOST, -p PORT override the URL's host and port
  --user NAME      ACL user;  --pass PASSWORD (or -a, or $REDISCLI_AUTH)
  -n DB            database number
  --tls            use TLS (implied by rediss://); --cacert FILE, --cert FILE,
                   --key FILE, --insecure (skip certificate verification)
  -c               Redis Cluster (list scans every master)
  --timeout D      bound for connecting and for each request (default 5s)

Output:
  --prefix P       key prefix of the services (default "klauthed:")
  --json           JSON: one object per key (inspect), an array (list),
                   one object per line (watch), one object (release)

Exit codes:
  0  done
  1  Redis unreachable, login or command refused, or a key is not a lock
  2  bad flags or arguments
  3  inspect: a KEY is not held (the output still shows it);
     release: KEY was not held, nothing removed
  4  release: not confirmed (answer other than y, or no input)
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run is the whole command: it parses args, runs the subcommand and returns
// the exit code, writing results to stdout and errors (one line each, no
// stack trace) to stderr.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	inv, err := parseArgs(args)
	if errors.Is(err, errHelp) {
		fmt.Fprint(stdout, usageText)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "lockctl: %v\nRun 'lockctl --help' for usage.\n", err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := inv.run(ctx, stdin, stdout, stderr)
	if err != nil {
		fmt.Fprintln(stderr, err)
		if code == exitOK {
			code = exitErr
		}
		if code == exitUsage {
			fmt.Fprintln(stderr, "Run 'lockctl --help' for usage.")
		}
	}
	return code
}

// run connects and runs the parsed subcommand.
func (inv *invocation) run(ctx context.Context, stdin io.Reader,
	stdout, stderr io.Writer) (int, error) {
	cfg := &inv.cfg
	opt, err := cfg.clientOption()
	if err != nil {
		return exitUsage, fmt.Errorf("lockctl: %v", err)
	}
	// Only watch reads through client-side caching: the others need no
	// CLIENT TRACKING permission.
	opt.DisableCache = inv.cmd != "watch"
	if inv.cmd == "watch" {
		return runWatch(ctx, cfg, opt, inv.args[0], stdout)
	}
	c, err := connect(ctx, cfg, opt)
	if err != nil {
		return exitErr, err
	}
	defer c.Close()
	switch inv.cmd {
	case "inspect":
		return runInspect(ctx, c, cfg, inv.args, stdout)
	case "list":
		pattern := "*"
		if len(inv.args) == 1 {
			pattern = inv.args[0]
		}
		return runList(ctx, c, cfg, pattern, stdout, stderr)
	case "release":
		return runRelease(ctx, c, cfg, inv.args[0], stdin, stdout, stderr)
	}
	return exitUsage, fmt.Errorf("lockctl: unknown command %q", inv.cmd)
}
