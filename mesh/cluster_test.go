package mesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/roomcast/roomcast/fabric"
	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/etcdtest"
	"github.com/roomcast/roomcast/mesh/registry"
)

// clusterWait bounds conditions that normally hold within a second or two.
const clusterWait = 20 * time.Second

var (
	gossipKey  = bytes.Repeat([]byte{7}, 32)
	peerSecret = bytes.Repeat([]byte{9}, 32)
)

type clusterNode struct {
	name string
	m    *Mesh
	edge *fakeEdge
	etcd *clientv3.Client
}

// ci returns a client of user on this node with connection id "<id>@<node>".
func (n *clusterNode) ci(user, id string) fabric.ClientInfo {
	ci := fabric.ClientInfo{User: user, Conn: id + "@" + n.name, Info: []byte(`{"n":"` + user + `"}`)}
	n.edge.mu.Lock()
	n.edge.conns[ci.Conn] = ci
	n.edge.mu.Unlock()
	return ci
}

func startClusterNode(t *testing.T, srv *etcdtest.Server, cluster, name string, key []byte) *clusterNode {
	t.Helper()
	ns, err := fabric.NewNamespaces(testNamespaces)
	if err != nil {
		t.Fatal(err)
	}
	n := &clusterNode{name: name, edge: newFakeEdge(), etcd: srv.NewClient(t)}
	n.m, err = New(Config{
		Node: name, Namespaces: ns, Shards: 16, Version: "test",
		Logger: testLogger(name), SweepInterval: time.Hour,
		Registerer: prometheus.NewRegistry(), // the building blocks' metrics must not collide
		Cluster: &ClusterConfig{
			Etcd: n.etcd, Name: cluster, GossipAddr: "127.0.0.1", GossipKeys: [][]byte{key},
			PeerAddr: "127.0.0.1:0", PeerSecrets: [][]byte{peerSecret}, LeaseTTL: 5,
			RejoinInterval: 200 * time.Millisecond,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	n.edge.m = n.m
	n.m.Attach(n.edge)
	t.Cleanup(func() { n.m.Close() })
	return n
}

// testLogger discards, unless MESH_TEST_LOG is set (to debug a cluster test).
func testLogger(node string) *slog.Logger {
	if os.Getenv("MESH_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test_node", node)
}

// waitUntil polls cond until it holds; the deadline is only a failure bound.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(clusterWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
}

// converged reports whether every node knows the others and every shard is served
// by one of them.
func converged(nodes []*clusterNode) bool {
	for _, n := range nodes {
		for _, o := range nodes {
			if n.m.cl.idOf(o.name) == "" {
				return false
			}
		}
	}
	rev := nodes[0].m.cl.smap().Current().Revision
	for _, n := range nodes {
		mp := n.m.cl.smap().Current()
		if mp.Revision != rev || len(mp.Count()) != len(nodes) {
			return false // not every node has shards in the same map yet
		}
	}
	for i := range nodes[0].m.shards {
		serving := 0
		for _, n := range nodes {
			owner, _ := n.m.cl.smap().Current().Owner(i)
			if owner == "" {
				return false
			}
			if _, ok := n.m.ownEpoch(i); ok {
				serving++
			}
		}
		if serving != 1 {
			return false
		}
	}
	return true
}

func startCluster3(t *testing.T) (*etcdtest.Server, []*clusterNode) {
	t.Helper()
	srv := etcdtest.Start(t)
	cluster := fmt.Sprintf("c%d", time.Now().UnixNano())
	var nodes []*clusterNode
	for _, name := range []string{"a", "b", "c"} {
		nodes = append(nodes, startClusterNode(t, srv, cluster, name, gossipKey))
	}
	deadline := time.Now().Add(clusterWait)
	for !converged(nodes) {
		if time.Now().After(deadline) {
			dumpCluster(t, nodes)
			t.Fatal("no convergence")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return srv, nodes
}

// ownerOf returns the node serving room's shard.
func ownerOf(nodes []*clusterNode, room string) *clusterNode {
	for _, n := range nodes {
		if _, ok := n.m.ownEpoch(n.m.shardIndex(room)); ok {
			return n
		}
	}
	return nil
}

// roomOwnedBy finds a room name of namespace ns whose shard is served by want.
func roomOwnedBy(t *testing.T, nodes []*clusterNode, want *clusterNode, ns string) string {
	for i := range 1000 {
		room := fmt.Sprintf("%s:r%d", ns, i)
		if ownerOf(nodes, room) == want {
			return room
		}
	}
	t.Fatalf("no room owned by %s", want.name)
	return ""
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	t.Cleanup(cancel)
	return ctx
}

func TestClusterRoomsAcrossNodes(t *testing.T) {
	_, nodes := startCluster3(t)
	a, b, c := nodes[0], nodes[1], nodes[2]
	ctx := ctxT(t)
	// A room owned by b, a member on a, publishes from c: every hop is remote.
	room := roomOwnedBy(t, nodes, b, "chat")
	events, err := c.m.Subscribe(fabric.EventFilter{Types: []fabric.EventType{fabric.EventJoin, fabric.EventLeave}}, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()

	ua := a.ci("u", "1")
	if _, err := a.m.Join(ctx, room, ua, nil); err != nil {
		t.Fatal(err)
	}
	ub := c.ci("u", "2") // the same user on another node
	if _, err := c.m.Join(ctx, room, ub, nil); err != nil {
		t.Fatal(err)
	}
	const n = 50
	var last fabric.Position
	start := time.Now()
	for i := range n {
		last, err = c.m.Publish(ctx, fabric.Publication{Room: room, Payload: fabric.Payload{Data: []byte(fmt.Sprint(i))}})
		if err != nil {
			t.Fatal(err)
		}
	}
	want := make([]uint64, n)
	for i := range want {
		want[i] = uint64(i + 1)
	}
	t.Logf("publish through a remote owner: %v per call (sequential calls)", time.Since(start)/n)
	waitUntil(t, "deliveries on a", func() bool { return len(a.edge.offsets(room)) == n })
	if got := a.edge.offsets(room); !slices.Equal(got, want) {
		t.Fatalf("a got offsets %v, want %v", got, want)
	}
	if last.Offset != n {
		t.Fatalf("last position %v", last)
	}

	t.Run("one user on two nodes is one member", func(t *testing.T) {
		for _, n := range nodes {
			ms, err := n.m.Presence(ctx, room)
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) != 1 || ms[0].User != "u" || len(ms[0].Conns) != 2 || string(ms[0].Info) != `{"n":"u"}` {
				t.Fatalf("presence from %s: %+v", n.name, ms)
			}
			st, err := n.m.PresenceStats(ctx, room)
			if err != nil || st != (fabric.Stats{Users: 1, Conns: 2}) {
				t.Fatalf("stats from %s: %+v %v", n.name, st, err)
			}
		}
	})

	t.Run("history through any node", func(t *testing.T) {
		h, err := a.m.History(ctx, room, fabric.HistoryQuery{Limit: 2, Reverse: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(h.Messages) != 2 || h.Messages[0].Pos.Offset != n || h.Pos != last || string(h.Messages[0].Payload.Data) != fmt.Sprint(n-1) {
			t.Fatalf("history %+v", h)
		}
	})

	t.Run("join and leave events once per user", func(t *testing.T) {
		if err := a.m.Leave(ctx, room, ua); err != nil {
			t.Fatal(err)
		}
		if err := c.m.Leave(ctx, room, ub); err != nil {
			t.Fatal(err)
		}
		var got []fabric.EventType
		for len(got) < 2 {
			ev, err := events.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Room == room {
				got = append(got, ev.Type)
			}
		}
		if !slices.Equal(got, []fabric.EventType{fabric.EventJoin, fabric.EventLeave}) {
			t.Fatalf("events %v", got)
		}
		// A member_joined push reached the other node of the user's connections.
		if ms := a.edge.memberships(); len(ms) == 0 || ms[0].user != "u" || !ms[0].joined {
			t.Fatalf("a's membership pushes: %+v", ms)
		}
	})

	t.Run("ListRooms and ListNodes", func(t *testing.T) {
		var rooms []string
		for _, o := range nodes {
			r := roomOwnedBy(t, nodes, o, "hist")
			rooms = append(rooms, r)
			if _, err := a.m.Publish(ctx, fabric.Publication{Room: r, Payload: fabric.Payload{Data: []byte(`1`)}}); err != nil {
				t.Fatal(err)
			}
		}
		got, more, err := b.m.ListRooms(ctx, "hist:", "", 2)
		if err != nil || !more || len(got) != 2 {
			t.Fatalf("page 1: %+v more=%v err=%v", got, more, err)
		}
		rest, more, err := b.m.ListRooms(ctx, "hist:", got[1].Name, 10)
		if err != nil || more || len(rest) != 1 {
			t.Fatalf("page 2: %+v more=%v err=%v", rest, more, err)
		}
		var names []string
		for _, s := range append(got, rest...) {
			names = append(names, s.Name)
			if ownerOf(nodes, s.Name).name != s.Owner {
				t.Fatalf("room %s owner %q", s.Name, s.Owner)
			}
		}
		slices.Sort(rooms)
		if !slices.Equal(names, rooms) {
			t.Fatalf("rooms %v, want %v", names, rooms)
		}
		infos, err := c.m.ListNodes(ctx)
		if err != nil || len(infos) != 3 {
			t.Fatalf("nodes %+v %v", infos, err)
		}
		total := 0
		for i, info := range infos {
			if info.Name != nodes[i].name || info.State != fabric.NodeActive {
				t.Fatalf("node %d: %+v", i, info)
			}
			total += info.Shards
		}
		if total != 16 {
			t.Fatalf("shards add up to %d", total)
		}
	})
}

func TestClusterUsersAcrossNodes(t *testing.T) {
	_, nodes := startCluster3(t)
	a, b, c := nodes[0], nodes[1], nodes[2]
	ctx := ctxT(t)
	ua, ub := a.ci("u", "1"), b.ci("u", "2")
	for _, x := range []struct {
		n  *clusterNode
		ci fabric.ClientInfo
	}{{a, ua}, {b, ub}} {
		if err := x.n.m.Connect(ctx, x.ci, 2); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.m.Connect(ctx, c.ci("u", "3"), 2); !errors.Is(err, fabric.ErrLimitExceeded) {
		t.Fatalf("third connection: %v", err)
	}
	n, err := c.m.SendToUser(ctx, "u", fabric.Payload{Data: []byte(`"hi"`)})
	if err != nil || n != 2 {
		t.Fatalf("send to user: %d %v", n, err)
	}
	if s := a.edge.sends(); len(s) != 1 || s[0].conn != ua.Conn {
		t.Fatalf("a sends %+v", s)
	}
	if err := c.m.SendToConn(ctx, ub.Conn, fabric.Payload{Data: []byte(`"x"`)}); err != nil {
		t.Fatal(err)
	}
	if s := b.edge.sends(); len(s) != 2 {
		t.Fatalf("b sends %+v", s)
	}
	room := roomOwnedBy(t, nodes, c, "chat")
	if n, err := c.m.JoinRoom(ctx, room, fabric.Target{User: "u"}); err != nil || n != 2 {
		t.Fatalf("join room: %d %v", n, err)
	}
	if st, err := a.m.PresenceStats(ctx, room); err != nil || st.Conns != 2 {
		t.Fatalf("stats %+v %v", st, err)
	}
	n, err = c.m.Kick(ctx, fabric.Target{User: "u"}, fabric.Kick{Reason: "bye"})
	if err != nil || n != 2 {
		t.Fatalf("kick: %d %v", n, err)
	}
	if len(a.edge.kicks()) != 1 || len(b.edge.kicks()) != 1 {
		t.Fatalf("kicks a=%v b=%v", a.edge.kicks(), b.edge.kicks())
	}
}

func TestClusterMemberNodeDies(t *testing.T) {
	_, nodes := startCluster3(t)
	a, b, c := nodes[0], nodes[1], nodes[2]
	ctx := ctxT(t)
	room := roomOwnedBy(t, nodes, a, "chat")
	if _, err := a.m.Join(ctx, room, a.ci("ua", "1"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.m.Join(ctx, room, b.ci("ub", "1"), nil); err != nil {
		t.Fatal(err)
	}
	b.etcd.Close()
	b.m.crash()
	waitUntil(t, "b's member to leave", func() bool {
		ms, err := c.m.Presence(ctx, room)
		return err == nil && len(ms) == 1 && ms[0].User == "ua"
	})
	waitUntil(t, "member_left push on a", func() bool {
		for _, m := range a.edge.memberships() {
			if m.user == "ub" && !m.joined {
				return true
			}
		}
		return false
	})
}

func TestClusterOwnerDies(t *testing.T) {
	srv, nodes := startCluster3(t)
	a, b, c := nodes[0], nodes[1], nodes[2]
	ctx := ctxT(t)
	room := roomOwnedBy(t, nodes, c, "chat")
	if _, err := a.m.Join(ctx, room, a.ci("ua", "1"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.m.Join(ctx, room, b.ci("ub", "1"), nil); err != nil {
		t.Fatal(err)
	}
	old, err := a.m.Publish(ctx, fabric.Publication{Room: room, Payload: fabric.Payload{Data: []byte(`1`)}})
	if err != nil {
		t.Fatal(err)
	}
	c.etcd.Close()
	start := time.Now()
	c.m.crash()
	survivors := nodes[:2]
	waitUntil(t, "the room's shard served again", func() bool { return ownerOf(survivors, room) != nil })
	t.Logf("failover: crash -> shard served again in %v", time.Since(start))

	// Survivors keep delivering: the new owner rebuilt b's interest from b.
	pos, err := a.m.Publish(ctx, fabric.Publication{Room: room, Payload: fabric.Payload{Data: []byte(`2`)}})
	if err != nil {
		t.Fatal(err)
	}
	if pos.Epoch == old.Epoch {
		t.Fatalf("epoch did not change: %v then %v", old, pos)
	}
	waitUntil(t, "delivery on b after failover", func() bool {
		b.edge.mu.Lock()
		defer b.edge.mu.Unlock()
		for _, m := range b.edge.msgs {
			if m.Room == room && m.Pos == pos {
				return true
			}
		}
		return false
	})
	ms, err := b.m.Presence(ctx, room)
	if err != nil || len(ms) != 2 {
		t.Fatalf("presence after failover: %+v %v", ms, err)
	}
	res, err := b.m.Join(ctx, room, b.ci("uc", "2"), &old)
	if err != nil || res.Recovered {
		t.Fatalf("recovery across failover: %+v %v", res, err)
	}

	t.Run("wrong gossip key is never admitted", func(t *testing.T) {
		d := startClusterNode(t, srv, a.m.cl.cfg.Name, "d", bytes.Repeat([]byte{1}, 32))
		// New has joined every registered node by now; none of them admitted it.
		if n := d.m.cl.ml.NumMembers(); n != 1 {
			t.Fatalf("d sees %d members", n)
		}
		for _, n := range survivors {
			for _, mem := range n.m.cl.ml.Members() {
				if mem.Name == "d" {
					t.Fatalf("%s admitted d", n.name)
				}
			}
		}
	})
}

// dumpCluster logs each node's view, to explain a convergence failure.
func dumpCluster(t *testing.T, nodes []*clusterNode) {
	for _, n := range nodes {
		mp := n.m.cl.smap().Current()
		served, serving, ready := 0, 0, 0
		for i := range n.m.shards {
			if _, ok := n.m.ownEpoch(i); ok {
				served++
			}
			if e, ok := n.m.cl.smap().Serving(i); ok {
				serving++
				if n.m.cl.ready[i].Load() == e {
					ready++
				}
			}
		}
		t.Logf("%s: map revision %d, owners %v, serving %d shards (%d by the map, %d rebuilt), %d gossip members",
			n.name, mp.Revision, mp.Count(), served, serving, ready, n.m.cl.ml.NumMembers())
	}
}

func TestClusterEventsAndKickByConnection(t *testing.T) {
	_, nodes := startCluster3(t)
	a, b, c := nodes[0], nodes[1], nodes[2]
	ctx := ctxT(t)
	sub, err := c.m.Subscribe(fabric.EventFilter{}, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ua := a.ci("u", "1")
	a.m.Emit(fabric.Event{Type: fabric.EventConnect, Conn: ua.Conn, User: "u"})
	ev, err := sub.Next(ctx)
	if err != nil || ev.Type != fabric.EventConnect || ev.Node != "a" || ev.Conn != ua.Conn {
		t.Fatalf("event on c: %+v %v", ev, err)
	}
	if err := a.m.Connect(ctx, ua, 0); err != nil {
		t.Fatal(err)
	}
	if n, err := b.m.Kick(ctx, fabric.Target{Conn: ua.Conn}, fabric.Kick{}); err != nil || n != 1 {
		t.Fatalf("kick: %d %v", n, err)
	}
	ev, err = sub.Next(ctx)
	if err != nil || ev.Type != fabric.EventKick || ev.User != "u" || ev.Code != fabric.CloseKicked {
		t.Fatalf("kick event on c: %+v %v", ev, err)
	}
	if _, err := b.m.Kick(ctx, fabric.Target{Conn: "x@nowhere"}, fabric.Kick{}); !errors.Is(err, fabric.ErrNotFound) {
		t.Fatalf("kick of an unknown node's connection: %v", err)
	}
}

func TestClusterFencingAndStaleEpochs(t *testing.T) {
	_, nodes := startCluster3(t)
	a, b := nodes[0], nodes[1]
	ctx := ctxT(t)
	room := roomOwnedBy(t, nodes, b, "chat")
	if _, err := a.m.Join(ctx, room, a.ci("u", "1"), nil); err != nil {
		t.Fatal(err)
	}

	t.Run("stale deliveries are dropped", func(t *testing.T) {
		idx := a.m.shardIndex(room)
		_, epoch := a.m.cl.smap().Current().Owner(idx)
		env := func(epoch int64, off uint64) *meshv1.Envelope {
			return &meshv1.Envelope{Shard: uint32(idx), Epoch: epoch, Body: &meshv1.Envelope_Deliver{Deliver: &meshv1.Deliver{
				Room: room, Messages: []*pb.RoomMessage{{Room: room, Epoch: epochString(epoch), Offset: off, Payload: payloadToWire(fabric.Payload{Data: []byte(`1`)})}}}}}
		}
		a.m.cl.handle(nil, env(epoch-1, 100))
		a.m.cl.handle(nil, env(epoch, 101))
		if got := a.edge.offsets(room); !slices.Equal(got, []uint64{101}) {
			t.Fatalf("delivered %v", got)
		}
	})

	t.Run("a fenced node stops owning, hands its state on and comes back", func(t *testing.T) {
		first, err := a.m.Publish(ctx, fabric.Publication{Room: room, Payload: fabric.Payload{Data: []byte(`1`)}})
		if err != nil {
			t.Fatal(err)
		}
		before := b.m.cl.co.Load()
		if err := registry.Revoke(ctx, a.etcd, a.m.cl.cfg.Name, b.m.cl.id); err != nil {
			t.Fatal(err)
		}
		// b notices, stops serving (the shard map reports nothing served once the
		// registration is lost) and registers again.
		waitUntil(t, "b to re-register", func() bool { return b.m.cl.co.Load() != before })
		for i := range b.m.shards {
			if _, ok := before.sm.Serving(i); ok {
				t.Fatalf("the fenced shard map still serves shard %d", i)
			}
		}
		// The room is served again — by another node, or by b once it is back — and
		// its stream goes on: b's state was handed on, nothing was lost.
		pos, err := a.m.Publish(ctx, fabric.Publication{Room: room, Payload: fabric.Payload{Data: []byte(`2`)}})
		if err != nil {
			t.Fatal(err)
		}
		if pos.Offset != first.Offset+1 {
			t.Fatalf("offsets across the fencing: %v then %v", first, pos)
		}
		h, err := a.m.History(ctx, room, fabric.HistoryQuery{Since: &first})
		if err != nil || len(h.Messages) != 1 || h.Messages[0].Pos != pos {
			t.Fatalf("history since %v after fencing: %+v %v", first, h.Messages, err)
		}
		waitUntil(t, "the cluster to converge with b back", func() bool { return converged(nodes) })
		st, err := a.m.PresenceStats(ctx, room)
		if err != nil || st.Conns != 1 {
			t.Fatalf("presence after fencing: %+v %v", st, err)
		}
		waitUntil(t, "delivery after fencing", func() bool {
			got := a.edge.offsets(room)
			return len(got) > 0 && got[len(got)-1] == pos.Offset
		})
	})
}

func TestClusterConcurrentPublishersOneOrder(t *testing.T) {
	_, nodes := startCluster3(t)
	a, b, c := nodes[0], nodes[1], nodes[2]
	ctx := ctxT(t)
	room := roomOwnedBy(t, nodes, c, "plain")
	for _, n := range []*clusterNode{a, b} {
		if _, err := n.m.Join(ctx, room, n.ci("u"+n.name, "1"), nil); err != nil {
			t.Fatal(err)
		}
	}
	const per = 30
	errs := make(chan error, len(nodes))
	for _, n := range nodes {
		go func() {
			for i := range per {
				if _, err := n.m.Publish(ctx, fabric.Publication{Room: room, Payload: fabric.Payload{Data: []byte(fmt.Sprint(i))}}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range nodes {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	want := make([]uint64, per*len(nodes))
	for i := range want {
		want[i] = uint64(i + 1)
	}
	for _, n := range []*clusterNode{a, b, c} {
		waitUntil(t, "deliveries on "+n.name, func() bool { return len(n.edge.offsets(room)) >= len(want) })
		if got := n.edge.offsets(room); !slices.Equal(got, want) {
			t.Fatalf("%s got %v", n.name, got)
		}
	}
}
