package faults

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// TestSoak injects random faults from the scenario list into a 5-node cluster under
// load for the duration given with -soak (off by default and in CI), healing and
// restarting after each, with the invariant checker running over the whole soak:
//
//	go test ./e2e/faults -run Soak -soak=30m -v -timeout 40m
func TestSoak(t *testing.T) {
	if *soakFor == 0 {
		t.Skip("soak mode is off; run with -soak=30m")
	}
	c := newCluster(t, 5)
	l := startLoad(t, c, loadOpts{rooms: 4, clientsPerNode: 1})
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	t.Logf("soak for %v", *soakFor)
	end := time.Now().Add(*soakFor)
	faults := []struct {
		name string
		run  func() string // injects, holds and heals the fault; returns a description
	}{
		{"kill -9 member", func() string { return soakKill(t, c, l, pickMember(t, c, l)) }},
		{"kill -9 owner", func() string { return soakKill(t, c, l, pickOwner(t, c, l)) }},
		{"isolate", func() string {
			nd := c.live()[rng.IntN(len(c.live()))]
			d := time.Duration(5+rng.IntN(11)) * time.Second
			c.lab.isolate(t, nd.ns)
			hold(d)
			c.lab.heal(t)
			return fmt.Sprintf("isolated %s for %v", nd.name(), d)
		}},
		{"partition 2|3", func() string {
			perm := rng.Perm(len(c.nodes))
			minority := []*node{c.nodes[perm[0]], c.nodes[perm[1]]}
			var far []string
			for _, i := range perm[2:] {
				far = append(far, c.nodes[i].ip)
			}
			d := time.Duration(10+rng.IntN(51)) * time.Second
			for _, nd := range minority {
				c.lab.cut(t, nd.ns, append(far, etcdIP)...)
			}
			hold(d)
			c.lab.heal(t)
			return fmt.Sprintf("partitioned {%s %s} from the rest and etcd for %v", minority[0].name(), minority[1].name(), d)
		}},
		{"one-way loss", func() string {
			nd := c.live()[rng.IntN(len(c.live()))]
			pct := 10 + rng.IntN(41)
			d := time.Duration(10+rng.IntN(11)) * time.Second
			var peers []string
			for _, o := range c.nodes {
				if o != nd {
					peers = append(peers, o.ip)
				}
			}
			c.lab.loseOutgoing(t, nd.ns, pct, peers...)
			hold(d)
			c.lab.heal(t)
			return fmt.Sprintf("%s lost %d%% of outgoing packets for %v", nd.name(), pct, d)
		}},
		{"etcd restart", func() string {
			d := time.Duration(500+rng.IntN(2500)) * time.Millisecond
			c.etcd.kill()
			hold(d)
			c.startEtcd()
			return fmt.Sprintf("etcd killed and restarted after %v", d)
		}},
		{"SIGTERM restart", func() string {
			nd := c.live()[rng.IntN(len(c.live()))]
			old := nd.name()
			if !nd.proc.terminate(30 * time.Second) {
				t.Errorf("%s did not exit within 30s of SIGTERM", old)
				nd.proc.kill()
			}
			c.startNode(nd)
			return fmt.Sprintf("%s drained (SIGTERM) and restarted as %s", old, nd.name())
		}},
	}
	for i := 1; time.Now().Before(end); i++ {
		f := faults[rng.IntN(len(faults))]
		at := time.Now()
		what := f.run()
		healed := time.Now()
		if c.waitOneCluster(90*time.Second, len(c.nodes)); t.Failed() {
			// Say so and go on with a cluster the next fault can use: restart every
			// node that does not agree.
			soakRestartStragglers(t, c)
		}
		t.Logf("soak fault %d: %s; healed -> one cluster of %d %v", i, what, len(c.nodes), time.Since(healed).Round(time.Millisecond))
		l.presenceConverges(30 * time.Second)
		l.waitFlowing(5)
		l.measure(fmt.Sprintf("soak fault %d", i), at, 60*time.Second)
	}
	l.verify()
}

// soakKill kills nd, waits for the survivors to agree, and restarts it.
func soakKill(t *testing.T, c *cluster, l *load, nd *node) string {
	old := nd.name()
	nd.proc.kill()
	c.waitOneCluster(30*time.Second, len(c.nodes)-1)
	c.startNode(nd)
	return fmt.Sprintf("killed %s (SIGKILL) and restarted it as %s", old, nd.name())
}

// soakRestartStragglers restarts every node that does not see the whole cluster.
func soakRestartStragglers(t *testing.T, c *cluster) {
	for _, nd := range c.nodes {
		if v := c.view(nd); v.err != nil || len(v.names) != len(c.nodes) || v.shards != shards {
			t.Logf("restarting %s, which sees %v (%d shards, %v)", nd.name(), v.names, v.shards, v.err)
			nd.proc.kill()
			c.startNode(nd)
		}
	}
	c.waitOneCluster(90*time.Second, len(c.nodes))
}
