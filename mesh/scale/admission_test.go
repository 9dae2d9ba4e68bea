package scale

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/roomcast/roomcast/internal/etcdtest"
	"github.com/roomcast/roomcast/mesh/membership"
	"github.com/roomcast/roomcast/mesh/registry"
	"github.com/roomcast/roomcast/mesh/shardmap"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// relaxed timers: this test is about correctness, and on two shared cores under the
// race detector LANFast's 50 ms probe timeout would declare healthy members dead.
func relaxed() membership.Timing {
	return membership.Timing{ProbeInterval: 300 * time.Millisecond, ProbeTimeout: 250 * time.Millisecond, SuspicionMult: 6}
}

// mapHistory returns every version of the cluster's shard map written so far.
func mapHistory(t *testing.T, srv *etcdtest.Server) []*shardmap.Map {
	t.Helper()
	ctx := ctxFor(t, 10*time.Second)
	key := shardmap.MapKey(cluster)
	cur, err := srv.Client().Get(ctx, key)
	if err != nil || len(cur.Kvs) == 0 {
		t.Fatalf("read map: %v (%d keys)", err, len(cur.Kvs))
	}
	last := cur.Kvs[0].ModRevision
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out []*shardmap.Map
	for wr := range srv.Client().Watch(wctx, key, clientv3.WithRev(1)) {
		if err := wr.Err(); err != nil {
			t.Fatal(err)
		}
		for _, ev := range wr.Events {
			m, err := shardmap.Decode(ev.Kv.Value, ev.Kv.ModRevision, 64)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, m)
			if ev.Kv.ModRevision >= last {
				return out
			}
		}
	}
	t.Fatal("map history ended early")
	return nil
}

// TestWrongKeyNodeGetsNoShards runs real gossip: a node whose gossip key differs
// registers in etcd like any other node, but gossip never admits it, so it must never
// own a shard nor lead — not when it registers, not when the leader leaves.
func TestWrongKeyNodeGetsNoShards(t *testing.T) {
	srv := etcdtest.Start(t)
	good := options{shards: 64, ttl: 30, keys: [][]byte{goodKey}, timing: relaxed(), interval: 100 * time.Millisecond, grace: time.Second}
	bad := good
	bad.keys = [][]byte{wrongKey}

	a := startNode(t, srv, "a", good)
	b := startNode(t, srv, "b", good)
	w := startNode(t, srv, "w", bad)
	c := startNode(t, srv, "c", good)
	nodes := []*simNode{a, b, c, w}
	legit := []*simNode{a, b, c}
	want := []string{a.id, b.id, c.id}
	slices.Sort(want)

	settled := func(nodes []*simNode, want []string) func() bool {
		return func() bool {
			first := nodes[0].sm.Current()
			var owners []string
			for o := range first.Count() {
				owners = append(owners, o)
			}
			slices.Sort(owners)
			if !slices.Equal(owners, want) {
				return false
			}
			for _, n := range nodes[1:] {
				if n.sm.Current().Revision != first.Revision {
					return false
				}
			}
			return true
		}
	}
	d := eventually(t, "a, b and c to own every shard", 30*time.Second, settled(nodes, want))
	t.Logf("a, b, c own every shard %v after the last start", d)
	if regs, _, err := registry.List(ctxFor(t, 5*time.Second), srv.Client(), cluster); err != nil || len(regs) != 4 {
		t.Fatalf("registered nodes = %v, %v; want all four, the wrong-key node included", regs, err)
	}
	for _, n := range legit {
		if n.ml.IsMember(w.id) {
			t.Fatalf("%s's gossip admitted the wrong-key node", n.name)
		}
	}

	// The leader leaves (resigns and deregisters), twice: the wrong-key node, which
	// registered before c, is a candidate by etcd's standards but must not take over.
	rest := slices.Clone(legit)
	for len(rest) > 1 {
		leaderAt := slices.IndexFunc(rest, func(n *simNode) bool { return n.sm.Leader() })
		if leaderAt < 0 {
			t.Fatal("no legitimate leader")
		}
		rest[leaderAt].stop()
		rest = slices.Delete(rest, leaderAt, leaderAt+1)
		var want []string
		for _, n := range rest {
			want = append(want, n.id)
		}
		slices.Sort(want)
		d := eventually(t, "the survivors to own every shard", 30*time.Second, func() bool {
			return settled(append(slices.Clone(rest), w), want)() && slices.ContainsFunc(rest, func(n *simNode) bool { return n.sm.Leader() })
		})
		t.Logf("%d survivors own every shard %v after the leader left", len(rest), d)
		if w.sm.Leader() {
			t.Fatal("the wrong-key node leads")
		}
	}
	for _, m := range mapHistory(t, srv) {
		if m.Count()[w.id] > 0 || m.Leader == w.id {
			t.Fatalf("map at revision %d (leader %s) gives the wrong-key node %d shards", m.Revision, m.Leader, m.Count()[w.id])
		}
	}
}
