package shardmap

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/roomcast/roomcast/internal/etcdtest"
	"github.com/roomcast/roomcast/mesh/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitFor = 20 * time.Second

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

// node is one simulated roomcast node: its own etcd client (so that closing it is a
// crash), its registration and its shard map.
type node struct {
	id     string
	client *clientv3.Client
	reg    *registry.Registry
	sm     *ShardMap
}

func startNode(t testing.TB, srv *etcdtest.Server, cluster, id string, shards, ttl int) *node {
	t.Helper()
	c := srv.NewClient(t)
	// registry.New binds the session keep-alive to its context: it must outlive the test.
	reg, err := registry.New(context.Background(), registry.Config{
		Client: c, Cluster: cluster, TTL: ttl, Node: registry.Node{ID: id}, Logger: quiet(),
	})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	sm, err := New(Config{Client: c, Session: reg.Session(), Lost: reg.Lost(), Cluster: cluster, ID: id, Shards: shards, Logger: quiet()})
	if err != nil {
		t.Fatalf("shardmap %s: %v", id, err)
	}
	n := &node{id: id, client: c, reg: reg, sm: sm}
	t.Cleanup(n.stop)
	return n
}

// stop is a graceful stop: resign, deregister.
func (n *node) stop() {
	n.sm.Close()
	n.reg.Close()
}

// crash cuts the node off from etcd without resigning or revoking anything, like a
// kill -9: its lease lives on until its TTL or until a peer revokes it.
func (n *node) crash() { n.client.Close() }

func eventually(t testing.TB, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond) // polling interval, not synchronisation
	}
	return time.Since(start)
}

// converged reports whether every node caches the same map, owned exactly by want.
func converged(nodes []*node, want []string) bool {
	first := nodes[0].sm.Current()
	if !slices.Equal(sortedOwners(first), want) {
		return false
	}
	for _, n := range nodes[1:] {
		if n.sm.Current().Revision != first.Revision {
			return false
		}
	}
	return true
}

func leaders(nodes []*node) []string {
	var out []string
	for _, n := range nodes {
		if n.sm.Leader() {
			out = append(out, n.id)
		}
	}
	return out
}

func ids(nodes []*node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.id)
	}
	slices.Sort(out)
	return out
}

func checkBalance(t testing.TB, m *Map, shards, live int) {
	t.Helper()
	lo, hi := shards/live, (shards+live-1)/live
	for o, c := range m.Count() {
		if c < lo || c > hi {
			t.Fatalf("%s owns %d shards, want %d..%d", o, c, lo, hi)
		}
	}
}

func TestMapConvergesOnThreeNodes(t *testing.T) {
	srv := etcdtest.Start(t)
	var nodes []*node
	for i := range 3 {
		nodes = append(nodes, startNode(t, srv, "c", fmt.Sprintf("n%d.1", i), 64, 5))
	}
	d := eventually(t, "all nodes to cache a map of all three", func() bool { return converged(nodes, ids(nodes)) })
	t.Logf("map converged on 3 nodes in %v", d)
	m := nodes[0].sm.Current()
	checkBalance(t, m, 64, 3)
	if l := leaders(nodes); len(l) != 1 || m.Leader != l[0] {
		t.Fatalf("leaders = %v, map written by %s", l, m.Leader)
	}
	// Each node serves exactly the shards the map gives it, with the map's epochs.
	for _, n := range nodes {
		for shard := range 64 {
			owner, epoch := m.Owner(shard)
			gotEpoch, ok := n.sm.Serving(shard)
			if ok != (owner == n.id) || (ok && gotEpoch != epoch) {
				t.Fatalf("%s Serving(%d) = %d, %v; map says %s at %d", n.id, shard, gotEpoch, ok, owner, epoch)
			}
		}
	}
	select {
	case got := <-nodes[1].sm.Updates():
		if got.Revision == 0 {
			t.Fatal("update with no map")
		}
	case <-time.After(waitFor):
		t.Fatal("no update delivered")
	}
}

func TestLeaderFailover(t *testing.T) {
	srv := etcdtest.Start(t)
	var nodes []*node
	for i := range 3 {
		nodes = append(nodes, startNode(t, srv, "c", fmt.Sprintf("n%d.1", i), 32, 5))
	}
	eventually(t, "convergence", func() bool { return converged(nodes, ids(nodes)) })
	eventually(t, "one leader", func() bool { return len(leaders(nodes)) == 1 })
	old := slices.IndexFunc(nodes, func(n *node) bool { return n.sm.Leader() })
	leader := nodes[old]
	rest := slices.Delete(slices.Clone(nodes), old, old+1)

	start := time.Now()
	leader.stop()
	eventually(t, "a new leader", func() bool { return len(leaders(rest)) == 1 })
	t.Logf("new leader %v elected %v after the old one resigned", leaders(rest), time.Since(start))
	eventually(t, "the survivors to own everything", func() bool { return converged(rest, ids(rest)) })
	t.Logf("map rebalanced %v after the leader left", time.Since(start))
	checkBalance(t, rest[0].sm.Current(), 32, 2)
}

// TestNodeDeadMovesShardsAtOnce crashes the leader (no resign, lease still alive with
// a 30 s TTL) and checks that NodeDead from a survivor gets its shards moved within a
// fraction of the TTL, with epochs changed only for the moved shards.
func TestNodeDeadMovesShardsAtOnce(t *testing.T) {
	srv := etcdtest.Start(t)
	var nodes []*node
	for i := range 3 {
		nodes = append(nodes, startNode(t, srv, "c", fmt.Sprintf("n%d.1", i), 60, 30))
	}
	eventually(t, "convergence", func() bool { return converged(nodes, ids(nodes)) })
	eventually(t, "one leader", func() bool { return len(leaders(nodes)) == 1 })
	victimAt := slices.IndexFunc(nodes, func(n *node) bool { return n.sm.Leader() })
	victim := nodes[victimAt]
	rest := slices.Delete(slices.Clone(nodes), victimAt, victimAt+1)
	before := rest[0].sm.Current()

	victim.crash()
	if err := rest[0].sm.NodeDead(ctxFor(t), victim.id); err != nil {
		t.Fatal(err)
	}
	d := eventually(t, "the dead node's shards to move", func() bool { return converged(rest, ids(rest)) })
	t.Logf("NodeDead -> every survivor caches the new map: %v (lease TTL 30 s)", d)
	if d > 10*time.Second {
		t.Fatalf("took %v", d)
	}
	after := rest[0].sm.Current()
	checkBalance(t, after, 60, 2)
	for shard := range 60 {
		ob, eb := before.Owner(shard)
		oa, ea := after.Owner(shard)
		switch {
		case ob == oa && eb != ea:
			t.Fatalf("shard %d kept owner %s but epoch changed %d -> %d", shard, oa, eb, ea)
		case ob != oa && ea <= eb:
			t.Fatalf("shard %d moved %s -> %s but epoch did not grow (%d -> %d)", shard, ob, oa, eb, ea)
		case ob != oa && ob != victim.id:
			t.Fatalf("shard %d of live node %s moved to %s", shard, ob, oa)
		}
	}
}

// TestFencing checks that a node whose lease is revoked (a false verdict, or a real
// one it outlived) stops serving at once.
func TestFencing(t *testing.T) {
	srv := etcdtest.Start(t)
	a := startNode(t, srv, "c", "a.1", 16, 30)
	b := startNode(t, srv, "c", "b.1", 16, 30)
	eventually(t, "convergence", func() bool { return converged([]*node{a, b}, []string{"a.1", "b.1"}) })

	start := time.Now()
	if err := b.sm.NodeDead(ctxFor(t), "a.1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.reg.Lost():
	case <-time.After(waitFor):
		t.Fatal("a never learned its registration was revoked")
	}
	select {
	case <-a.sm.Lost():
	case <-time.After(waitFor):
		t.Fatal("a's shard map did not report the loss")
	}
	t.Logf("fenced %v after the revoke", time.Since(start))
	for shard := range 16 {
		if _, ok := a.sm.Serving(shard); ok {
			t.Fatalf("fenced node still serves shard %d", shard)
		}
	}
	eventually(t, "b to own everything", func() bool { return converged([]*node{b}, []string{"b.1"}) })
}

// TestDeposedLeaderCannotWrite checks the leadership guard: a write guarded by an
// election key that is no longer the leader's fails and leaves the map alone.
func TestDeposedLeaderCannotWrite(t *testing.T) {
	srv := etcdtest.Start(t)
	a := startNode(t, srv, "c", "a.1", 8, 5)
	eventually(t, "a map", func() bool { return converged([]*node{a}, []string{"a.1"}) })
	before := a.sm.Current().Revision

	staleGuard := clientv3.Compare(clientv3.CreateRevision(LeaderPrefix("c")+"gone"), "=", 42)
	err := a.sm.rebalance(ctxFor(t), staleGuard, []registry.Node{{ID: "intruder.1"}})
	if err != errDeposed {
		t.Fatalf("rebalance with a stale guard = %v, want errDeposed", err)
	}
	resp, err := srv.Client().Get(ctxFor(t), MapKey("c"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Kvs[0].ModRevision != before {
		t.Fatal("map was written by a deposed leader")
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New with no client succeeded")
	}
}

// TestThirtyNodes runs 30 nodes on one etcd and reports what a join and a crash cost:
// shards moved, map writes, and time until every node caches the new map.
func TestThirtyNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("30 nodes")
	}
	const shards = 256
	srv := etcdtest.Start(t)
	var nodes []*node
	start := time.Now()
	for i := range 30 {
		nodes = append(nodes, startNode(t, srv, "big", fmt.Sprintf("n%02d.1", i), shards, 30))
	}
	eventually(t, "30 nodes to converge", func() bool { return converged(nodes, ids(nodes)) })
	t.Logf("30 nodes started and converged in %v", time.Since(start))
	checkBalance(t, nodes[0].sm.Current(), shards, 30)

	totals := func() Stats {
		var s Stats
		for _, n := range nodes {
			st := n.sm.Stats()
			s.Writes += st.Writes
			s.Moved += st.Moved
			s.FailedWrites += st.FailedWrites
		}
		return s
	}
	revision := func() int64 {
		resp, err := srv.Client().Get(ctxFor(t), "any")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}

	// A join.
	s0, r0 := totals(), revision()
	joiner := startNode(t, srv, "big", "n30.1", shards, 30)
	nodes = append(nodes, joiner)
	d := eventually(t, "the join to converge", func() bool { return converged(nodes, ids(nodes)) })
	s1, r1 := totals(), revision()
	t.Logf("join of a 31st node: %d shards moved, %d map writes, %d etcd revisions (registration+candidacy+map), every node updated in %v",
		s1.Moved-s0.Moved, s1.Writes-s0.Writes, r1-r0, d)
	checkBalance(t, nodes[0].sm.Current(), shards, 31)

	// A crash of a non-leader, acted on by NodeDead.
	victimAt := slices.IndexFunc(nodes, func(n *node) bool { return !n.sm.Leader() })
	victim := nodes[victimAt]
	rest := slices.Delete(slices.Clone(nodes), victimAt, victimAt+1)
	victim.crash()
	s2, r2 := totals(), revision()
	if err := rest[0].sm.NodeDead(ctxFor(t), victim.id); err != nil {
		t.Fatal(err)
	}
	d = eventually(t, "the crash to converge", func() bool { return converged(rest, ids(rest)) })
	s3, r3 := totals(), revision()
	t.Logf("crash of a member (NodeDead): %d shards moved, %d map writes, %d etcd revisions (revoke+map), every survivor updated in %v",
		s3.Moved-s2.Moved, s3.Writes-s2.Writes, r3-r2, d)
	checkBalance(t, rest[0].sm.Current(), shards, 30)

	// A crash of the leader: election plus rebalance.
	leaderAt := slices.IndexFunc(rest, func(n *node) bool { return n.sm.Leader() })
	leader := rest[leaderAt]
	rest2 := slices.Delete(slices.Clone(rest), leaderAt, leaderAt+1)
	leader.crash()
	s4, r4 := totals(), revision()
	if err := rest2[0].sm.NodeDead(ctxFor(t), leader.id); err != nil {
		t.Fatal(err)
	}
	d = eventually(t, "the leader crash to converge", func() bool { return converged(rest2, ids(rest2)) })
	s5, r5 := totals(), revision()
	t.Logf("crash of the leader (NodeDead): %d shards moved, %d map writes, %d etcd revisions, every survivor updated in %v",
		s5.Moved-s4.Moved, s5.Writes-s4.Writes, r5-r4, d)
	if f := s5.FailedWrites; f != 0 {
		t.Logf("guarded writes that failed: %d", f)
	}
}
