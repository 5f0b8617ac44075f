package redistest

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// clusterTimeout bounds how long a new cluster may take to reach
// cluster_state:ok on every node after `redis-cli --cluster create`.
const clusterTimeout = 30 * time.Second

// Cluster is a Redis Cluster of master-only redis-server processes on
// 127.0.0.1, every hash slot assigned. It is created by StartCluster or
// StartServerCluster and must not be copied.
type Cluster struct {
	// Addrs holds every node's "127.0.0.1:port", in the order of Servers.
	// Any of them is a valid seed (rueidis.ClientOption.InitAddress).
	Addrs []string
	// Servers are the nodes. Each can be Restarted (it rejoins with the
	// same ID and slots, from its nodes.conf, but loses its data), Killed
	// or queried with Cli.
	Servers []*Server
}

// StartCluster starts masters (at least 3) redis-server processes with
// --cluster-enabled yes, each on a free port whose cluster bus port
// (port+10000) is free too, joins them with
// `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`,
// and waits until every node reports cluster_state:ok with all 16384 slots
// assigned and every node known. The nodes are stopped in tb.Cleanup.
//
// On failure it calls tb.Fatalf (never Skip; also when redis-server or
// redis-cli is missing) and leaves nothing running. Like every tb.Fatalf
// caller it must run on the test's goroutine.
func StartCluster(tb testing.TB, masters int) *Cluster {
	tb.Helper()
	c, err := StartServerCluster(masters)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Errorf("%v", err)
		}
	})
	return c
}

// StartServerCluster is StartCluster for programs without a testing.TB. On
// success the caller owns the cluster and must call Close. On failure it
// returns an error and leaves nothing running.
func StartServerCluster(masters int) (*Cluster, error) {
	c, err := startCluster(masters)
	if err != nil {
		return nil, fmt.Errorf("redistest: %w", err)
	}
	return c, nil
}

// startCluster is StartServerCluster without the error prefix.
func startCluster(masters int) (*Cluster, error) {
	if masters < 3 {
		return nil, fmt.Errorf("a Redis Cluster needs at least 3 masters, got %d", masters)
	}
	c := &Cluster{}
	for i := 0; i < masters; i++ {
		s, err := startServer(true, nil)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.Servers = append(c.Servers, s)
		c.Addrs = append(c.Addrs, s.Addr)
	}
	args := append([]string{"--cluster", "create"}, c.Addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if _, err := cli(args...); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.waitOK(clusterTimeout); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// waitOK polls CLUSTER INFO on every node until each reports
// cluster_state:ok, cluster_slots_ok:16384 and cluster_known_nodes equal to
// the number of nodes, or timeout passes.
func (c *Cluster) waitOK(timeout time.Duration) error {
	want := map[string]string{
		"cluster_state":       "ok",
		"cluster_slots_ok":    "16384",
		"cluster_known_nodes": fmt.Sprint(len(c.Servers)),
	}
	deadline := time.Now().Add(timeout)
	for _, s := range c.Servers {
		for {
			info, err := do(s.Addr, time.Second, "CLUSTER", "INFO")
			if err == nil {
				err = checkInfo(info, want)
			}
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("cluster node %s not ready within %v: %v", s.Addr, timeout, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// checkInfo returns an error naming the first field of a CLUSTER INFO reply
// that differs from want.
func checkInfo(info string, want map[string]string) error {
	got := map[string]string{}
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			got[k] = v
		}
	}
	for k, v := range want {
		if got[k] != v {
			return fmt.Errorf("%s:%s, want %s", k, got[k], v)
		}
	}
	return nil
}

// Close stops every node (see Server.Close). It is idempotent and returns
// the nodes' errors joined.
func (c *Cluster) Close() error {
	var errs []error
	for _, s := range c.Servers {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}
