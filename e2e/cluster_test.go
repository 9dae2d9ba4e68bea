package e2e

import (
	"testing"
	"time"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/etcdtest"
	"github.com/roomcast/roomcast/internal/testnode"
)

// startCluster runs n real nodes (WebSocket edge, control API, mesh in cluster mode)
// on one embedded etcd, and waits until every node sees all of them and every shard
// is owned.
func startCluster(t *testing.T, n int) []*testnode.Node {
	t.Helper()
	etcd := etcdtest.Start(t)
	var nodes []*testnode.Node
	for range n {
		nodes = append(nodes, testnode.Start(t, testnode.Options{Etcd: etcd.Endpoints()}))
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, nd := range nodes {
		for {
			r, err := nd.Control.ListNodes(ctxT(t), &pb.ListNodesRequest{})
			shards := uint32(0)
			for _, info := range r.GetNodes() {
				shards += info.GetShards()
			}
			if err == nil && len(r.GetNodes()) == n && shards == 16 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster did not converge: %v %v", r, err)
			}
			time.Sleep(20 * time.Millisecond) // polling a condition; the deadline is the bound
		}
	}
	return nodes
}

// One fabric across nodes: a publish on node C reaches clients on nodes A and B, in
// order; one user on two nodes is one presence member; send-to-user and kick reach
// every node.
func TestClusterOneFabric(t *testing.T) {
	nodes := startCluster(t, 3)
	a, _ := connect(t, nodes[0], "alice")
	b, _ := connect(t, nodes[1], "alice")
	c, _ := connect(t, nodes[2], "carol")
	for _, cl := range []*wsClient{a, b, c} {
		cl.mustJoin("chat:cluster")
	}
	ctx := ctxT(t)
	const msgs = 50
	for i := range msgs {
		if _, err := nodes[2].Control.Publish(ctx, &pb.PublishRequest{Room: "chat:cluster", Payload: jsonPayload(t, i)}); err != nil {
			t.Fatal(err)
		}
	}
	for name, cl := range map[string]*wsClient{"node A": a, "node B": b, "node C": c} {
		var last uint64
		for i := range msgs {
			m := cl.nextMessage()
			if i > 0 && m.GetOffset() != last+1 {
				t.Fatalf("%s: offset %d after %d", name, m.GetOffset(), last)
			}
			last = m.GetOffset()
		}
	}
	p, err := nodes[1].Control.GetPresence(ctx, &pb.GetPresenceRequest{Room: "chat:cluster"})
	if err != nil || len(p.GetMembers()) != 2 || p.GetMembers()[0].GetUser() != "alice" || len(p.GetMembers()[0].GetConnections()) != 2 {
		t.Fatalf("presence across nodes: %v %v", p, err)
	}
	r, err := nodes[2].Control.SendToUser(ctx, &pb.SendToUserRequest{User: "alice", Payload: jsonPayload(t, "hi")})
	if err != nil || r.GetConnections() != 2 {
		t.Fatalf("send to a user on two other nodes: %v %v", r, err)
	}
	for _, cl := range []*wsClient{a, b} {
		for {
			if m := cl.next(); m.GetDirect() != nil {
				break
			}
		}
	}
	k, err := nodes[2].Control.Kick(ctx, &pb.KickRequest{Target: &pb.Target{Target: &pb.Target_User{User: "alice"}}, Reconnect: true})
	if err != nil || k.GetConnections() != 2 {
		t.Fatalf("kick across nodes: %v %v", k, err)
	}
	for _, cl := range []*wsClient{a, b} {
		if code, _ := cl.closeCode(); code != int(pb.CloseCode_CLOSE_CODE_KICKED) {
			t.Fatalf("kicked with %d", code)
		}
	}
}
