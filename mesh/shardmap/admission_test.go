package shardmap

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/roomcast/roomcast/internal/etcdtest"
	"github.com/roomcast/roomcast/mesh/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// view is a fake gossip view: the set of node IDs a node's gossip has admitted.
type view struct {
	mu   sync.Mutex
	seen map[string]bool
}

func newView(ids ...string) *view {
	v := &view{seen: map[string]bool{}}
	v.add(ids...)
	return v
}

func (v *view) add(ids ...string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, id := range ids {
		v.seen[id] = true
	}
}

func (v *view) admitted(id string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.seen[id]
}

// startAdmitted starts a node whose shard map admits what v says.
func startAdmitted(t *testing.T, srv *etcdtest.Server, id string, v *view, interval time.Duration) *node {
	t.Helper()
	c := srv.NewClient(t)
	// registry.New binds the session keep-alive to its context: it must outlive the test.
	reg, err := registry.New(context.Background(), registry.Config{
		Client: c, Cluster: "c", TTL: 30, Node: registry.Node{ID: id}, Logger: quiet(),
	})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	sm, err := New(Config{
		Client: c, Session: reg.Session(), Lost: reg.Lost(), Cluster: "c", ID: id, Shards: 32,
		Admitted: v.admitted, AdmitInterval: interval, AdmitGrace: 300 * time.Millisecond,
		Logger: quiet(),
	})
	if err != nil {
		t.Fatalf("shardmap %s: %v", id, err)
	}
	n := &node{id: id, client: c, reg: reg, sm: sm}
	t.Cleanup(n.stop)
	return n
}

// history returns every version of the cluster's map written so far, oldest first.
func history(t *testing.T, srv *etcdtest.Server, shards int) []*Map {
	t.Helper()
	ctx := ctxFor(t)
	cur, err := srv.Client().Get(ctx, MapKey("c"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cur.Kvs) == 0 {
		return nil
	}
	last := cur.Kvs[0].ModRevision
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out []*Map
	for wr := range srv.Client().Watch(wctx, MapKey("c"), clientv3.WithRev(1)) {
		if err := wr.Err(); err != nil {
			t.Fatal(err)
		}
		for _, ev := range wr.Events {
			m, err := decode(ev.Kv.Value, ev.Kv.ModRevision, shards)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, m)
			if ev.Kv.ModRevision >= last {
				return out
			}
		}
	}
	t.Fatal("map history watch ended early")
	return nil
}

// neverAssigned fails if any version of the map gave id a shard or was written by it.
func neverAssigned(t *testing.T, srv *etcdtest.Server, id string) {
	t.Helper()
	h := history(t, srv, 32)
	if len(h) == 0 {
		t.Fatal("no map was ever written")
	}
	for _, m := range h {
		if m.Count()[id] > 0 || m.Leader == id {
			t.Fatalf("map at revision %d (leader %s) gives %s %d shards", m.Revision, m.Leader, id, m.Count()[id])
		}
	}
}

// TestAdmissionExcludesNodesGossipRefuses: a node that is registered but that gossip
// never admits (a wrong gossip key) never owns a shard nor leads, even across a
// change of leader; a node gossip admits later gets shards once Recheck is called.
func TestAdmissionExcludesNodesGossipRefuses(t *testing.T) {
	srv := etcdtest.Start(t)
	good := newView("a.1", "b.1")
	// A long interval: only Recheck (and registry changes) can trigger admission here.
	a := startAdmitted(t, srv, "a.1", good, time.Hour)
	eventually(t, "a to lead alone", func() bool { return converged([]*node{a}, []string{"a.1"}) })
	b := startAdmitted(t, srv, "b.1", good, time.Hour)
	w := startAdmitted(t, srv, "w.1", newView(), time.Hour) // its gossip sees nobody
	eventually(t, "a and b to own everything", func() bool { return converged([]*node{a, b, w}, []string{"a.1", "b.1"}) })

	c := startAdmitted(t, srv, "c.1", good, time.Hour)
	good.add("c.1") // gossip sees c now ...
	for _, n := range []*node{a, b, c, w} {
		n.sm.Recheck() // ... and says so
	}
	all := []*node{a, b, c, w}
	eventually(t, "c to be admitted", func() bool { return converged(all, []string{"a.1", "b.1", "c.1"}) })
	checkBalance(t, a.sm.Current(), 32, 3)

	// The leader leaves, twice: w, registered before c and a candidate by etcd's
	// standards, must not take over.
	rest := []*node{a, b, c}
	for len(rest) > 1 {
		leaderAt := slices.IndexFunc(rest, func(n *node) bool { return n.sm.Leader() })
		if leaderAt < 0 {
			t.Fatalf("leaders = %v", leaders(all))
		}
		rest[leaderAt].stop()
		rest = slices.Delete(rest, leaderAt, leaderAt+1)
		want := ids(rest)
		eventually(t, "the survivors to own everything", func() bool {
			return converged(append(slices.Clone(rest), w), want) && len(leaders(rest)) == 1
		})
		if w.sm.Leader() {
			t.Fatal("the node gossip refuses became leader")
		}
	}
	neverAssigned(t, srv, "w.1")
}

// TestAdmissionPollsWithoutRecheck: a caller that never calls Recheck still gets a node
// admitted within AdmitInterval of gossip seeing it.
func TestAdmissionPollsWithoutRecheck(t *testing.T) {
	srv := etcdtest.Start(t)
	good := newView("a.1")
	a := startAdmitted(t, srv, "a.1", good, 20*time.Millisecond)
	b := startAdmitted(t, srv, "b.1", good, 20*time.Millisecond)
	eventually(t, "a to own everything", func() bool { return converged([]*node{a, b}, []string{"a.1"}) })
	good.add("b.1")
	eventually(t, "b to be admitted by polling", func() bool { return converged([]*node{a, b}, []string{"a.1", "b.1"}) })
}

// TestIsolatedLeaderStepsDown: a node whose gossip is cut off from the cluster but
// which started first (and so won the election alone) steps down once other nodes
// register that it cannot see, and its shards move to them.
func TestIsolatedLeaderStepsDown(t *testing.T) {
	srv := etcdtest.Start(t)
	w := startAdmitted(t, srv, "w.1", newView(), 20*time.Millisecond)
	eventually(t, "w to lead alone", func() bool { return converged([]*node{w}, []string{"w.1"}) })
	good := newView("a.1", "b.1")
	a := startAdmitted(t, srv, "a.1", good, 20*time.Millisecond)
	b := startAdmitted(t, srv, "b.1", good, 20*time.Millisecond)
	all := []*node{a, b, w}
	d := eventually(t, "a and b to take over", func() bool {
		return converged(all, []string{"a.1", "b.1"}) && len(leaders(all)) == 1 && !w.sm.Leader()
	})
	t.Logf("isolated leader replaced and its shards moved in %v (AdmitGrace 300 ms)", d)
	checkBalance(t, a.sm.Current(), 32, 2)
}

// TestDrainingNodeHandsOver: a draining node's shards move to the others; when every
// node drains, shards stay where they are and none is left without an owner.
func TestDrainingNodeHandsOver(t *testing.T) {
	srv := etcdtest.Start(t)
	var nodes []*node
	for _, id := range []string{"a.1", "b.1", "c.1"} {
		nodes = append(nodes, startNode(t, srv, "c", id, 30, 30))
	}
	a, b, c := nodes[0], nodes[1], nodes[2]
	eventually(t, "convergence", func() bool { return converged(nodes, ids(nodes)) })
	drain := func(n *node) {
		t.Helper()
		if err := n.reg.Update(ctxFor(t), registry.Node{ID: n.id, Draining: true}); err != nil {
			t.Fatal(err)
		}
	}

	before := a.sm.Current()
	drain(b)
	eventually(t, "b's shards to move", func() bool { return converged(nodes, []string{"a.1", "c.1"}) })
	after := a.sm.Current()
	checkBalance(t, after, 30, 2)
	for shard := range 30 {
		ob, _ := before.Owner(shard)
		oa, _ := after.Owner(shard)
		if ob != oa && ob != "b.1" {
			t.Fatalf("shard %d moved %s -> %s although only b drains", shard, ob, oa)
		}
	}

	// Everybody drains (the whole cluster stops): nothing moves, nothing is orphaned,
	// and b, which has handed its shards over already, gets none back.
	drain(a)
	drain(c)
	a.stop() // deregisters: its shards must go to c, the one live holder
	rest := []*node{b, c}
	eventually(t, "c to own everything", func() bool { return converged(rest, []string{"c.1"}) })
	for _, m := range history(t, srv, 30) {
		if m.Revision <= after.Revision {
			continue
		}
		for shard := range 30 {
			if o, _ := m.Owner(shard); o != "a.1" && o != "c.1" {
				t.Fatalf("map at revision %d gives shard %d to %q", m.Revision, shard, o)
			}
		}
	}
}
