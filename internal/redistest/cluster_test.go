package redistest

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

func TestStartCluster_formsAndServesKeysAcrossSlots(t *testing.T) {
	c := StartCluster(t, 3)
	if len(c.Addrs) != 3 || len(c.Servers) != 3 {
		t.Fatalf("got %d addrs, %d servers; want 3 each", len(c.Addrs), len(c.Servers))
	}
	for i, s := range c.Servers {
		if c.Addrs[i] != s.Addr {
			t.Errorf("Addrs[%d] = %q, Servers[%d].Addr = %q", i, c.Addrs[i], i, s.Addr)
		}
		if s.Port()+10000 > 65535 {
			t.Errorf("node %s has no room for its cluster bus port", s.Addr)
		}
		info := s.Cli(t, "CLUSTER", "INFO")
		for _, want := range []string{
			"cluster_state:ok", "cluster_slots_ok:16384",
			"cluster_known_nodes:3", "cluster_size:3",
		} {
			if !strings.Contains(info, want) {
				t.Errorf("node %s CLUSTER INFO lacks %q:\n%s", s.Addr, want, info)
			}
		}
	}

	cl := newClient(t, c.Addrs[0])
	ctx := context.Background()
	const n = 100
	for i := 0; i < n; i++ {
		k, v := "key"+strconv.Itoa(i), "v"+strconv.Itoa(i)
		if err := cl.Do(ctx, cl.B().Set().Key(k).Value(v).Build()).Error(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
	}
	for i := 0; i < n; i++ {
		k, want := "key"+strconv.Itoa(i), "v"+strconv.Itoa(i)
		got, err := cl.Do(ctx, cl.B().Get().Key(k).Build()).ToString()
		if err != nil || got != want {
			t.Fatalf("GET %s = %q, %v; want %q", k, got, err, want)
		}
	}
	total := 0
	for _, s := range c.Servers {
		keys, err := strconv.Atoi(s.Cli(t, "DBSIZE"))
		if err != nil {
			t.Fatal(err)
		}
		if keys == 0 {
			t.Errorf("node %s holds no keys; the slots are not spread", s.Addr)
		}
		total += keys
	}
	if total != n {
		t.Errorf("nodes hold %d keys in all, want %d", total, n)
	}
}

func TestStartCluster_nodeRestartRejoins(t *testing.T) {
	c := StartCluster(t, 3)
	s := c.Servers[1]
	id := s.Cli(t, "CLUSTER", "MYID")
	s.Restart(t)
	if got := s.Cli(t, "CLUSTER", "MYID"); got != id {
		t.Fatalf("node ID after Restart = %q, want %q", got, id)
	}
	if err := c.waitOK(clusterTimeout); err != nil {
		t.Fatal(err)
	}
}

func TestStartCluster_failsBelowThreeMasters(t *testing.T) {
	msg := fatalMessage(t, func(tb testing.TB) { StartCluster(tb, 2) })
	if !strings.Contains(msg, "at least 3 masters") {
		t.Fatalf("Fatalf message %q does not give the minimum", msg)
	}
}

func TestStartCluster_failsWithoutRedisServer(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	msg := fatalMessage(t, func(tb testing.TB) { StartCluster(tb, 3) })
	if !strings.Contains(msg, "apt-get install redis-server") {
		t.Fatalf("Fatalf message %q does not say how to install redis-server", msg)
	}
}

func TestCluster_Close_stopsEveryNode(t *testing.T) {
	c, err := StartServerCluster(3)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, s := range c.Servers {
		pids = append(pids, s.Pid())
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i, pid := range pids {
		waitGone(t, pid)
		if !refused(c.Addrs[i]) {
			t.Errorf("%s still accepts connections", c.Addrs[i])
		}
		if bus := fmt.Sprintf("127.0.0.1:%d", c.Servers[i].Port()+10000); !refused(bus) {
			t.Errorf("cluster bus %s still accepts connections", bus)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
