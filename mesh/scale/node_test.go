package scale

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/roomcast/roomcast/internal/etcdtest"
	"github.com/roomcast/roomcast/mesh/membership"
	"github.com/roomcast/roomcast/mesh/registry"
	"github.com/roomcast/roomcast/mesh/shardmap"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// memberlist's Shutdown does not wait for a probe in flight (see mesh/membership).
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}

var (
	goodKey  = bytes.Repeat([]byte{7}, 32)
	wrongKey = bytes.Repeat([]byte{9}, 32)
)

const cluster = "scale"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds and returns how long that took; the deadline
// is only a failure bound.
func eventually(t testing.TB, what string, bound time.Duration, cond func() bool, detail ...func() string) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > bound {
			for _, d := range detail {
				what += " (" + d() + ")"
			}
			t.Fatalf("timed out after %v waiting for %s", bound, what)
		}
		time.Sleep(2 * time.Millisecond) // polling interval, not synchronisation
	}
	return time.Since(start)
}

// options of a simulated node.
type options struct {
	shards   int
	ttl      int
	keys     [][]byte
	timing   membership.Timing
	interval time.Duration // shardmap AdmitInterval
	grace    time.Duration // shardmap AdmitGrace
	dir      *directory    // the second opinion on a gossip verdict; nil: trust gossip
	rejoin   time.Duration // membership RejoinInterval; 0: its default, as mesh uses
}

// directory knows every simulated node of a test, so that a node can check gossip's
// verdict that a peer failed before declaring it dead — what mesh/cluster.go does by
// asking the peer over its link, where a killed process refuses the connection at
// once. Without it, a starved process that misses its 50 ms probes on a loaded
// machine gets its lease revoked, which is not what a real cluster does.
type directory struct {
	mu    sync.Mutex
	nodes map[string]*simNode

	falseVerdicts atomic.Int64 // failures reported of nodes that were running
}

func newDirectory() *directory { return &directory{nodes: map[string]*simNode{}} }

func (d *directory) add(n *simNode) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nodes[n.id] = n
}

// answers reports whether the node is still running, as a link check would.
func (d *directory) answers(id string) bool {
	d.mu.Lock()
	n := d.nodes[id]
	d.mu.Unlock()
	return n != nil && !n.killed.Load()
}

// simNode is one roomcast node's control plane: registration, gossip, shard map,
// wired as mesh/cluster.go wires them.
type simNode struct {
	name   string
	id     string
	client *clientv3.Client
	reg    *registry.Registry
	ml     *membership.Membership
	sm     *shardmap.ShardMap

	dir         *directory
	endLife     context.CancelFunc // ends the registry session's keep-alive
	gossipStart time.Time          // when its gossip started listening
	nodeDead    atomic.Int64       // NodeDead calls made by this node
	loop        sync.WaitGroup

	// failedAt and joinedAt record when this node's gossip last declared each member
	// failed and first saw it join.
	mu       sync.Mutex
	failedAt map[string]time.Time
	joinedAt map[string]time.Time

	killed   atomic.Bool
	stopping atomic.Bool
	stopOnce sync.Once
}

var incarnations atomic.Uint64 // test-binary scope: unique incarnations for simulated nodes

// startNode starts a node and joins it to the registered ones. It is stopped at
// cleanup.
func startNode(t testing.TB, srv *etcdtest.Server, name string, o options) *simNode {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	n := &simNode{name: name, client: srv.NewClient(t), failedAt: map[string]time.Time{}, joinedAt: map[string]time.Time{}, dir: o.dir}
	inc := 1000 + incarnations.Add(1)
	n.id = membership.ID(name, inc)
	var err error
	// The order of mesh/cluster.go: register (without a gossip address), start gossip,
	// publish the gossip address, start the shard map, join the registered peers.
	// registry.New binds the session's keep-alive to its context: give it one that
	// lives as long as the node, not the start-up bound.
	life, endLife := context.WithCancel(context.Background())
	n.endLife = endLife
	n.reg, err = registry.New(life, registry.Config{
		Client: n.client, Cluster: cluster, TTL: o.ttl, Node: registry.Node{ID: n.id}, Logger: quiet(),
	})
	if err != nil {
		endLife()
		t.Fatalf("register %s: %v", name, err)
	}
	n.ml, err = membership.New(membership.Config{
		Name: name, Incarnation: inc, Cluster: cluster, BindAddr: "127.0.0.1", Keys: o.keys,
		Discover: registry.Discoverer(n.client, cluster), RejoinInterval: o.rejoin,
		Timing: o.timing, Logger: quiet(), Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatalf("gossip %s: %v", name, err)
	}
	n.gossipStart = time.Now()
	if err := n.reg.Update(ctx, registry.Node{ID: n.id, GossipAddr: n.ml.Addr()}); err != nil {
		t.Fatalf("update %s: %v", name, err)
	}
	n.sm, err = shardmap.New(shardmap.Config{
		Client: n.client, Session: n.reg.Session(), Lost: n.reg.Lost(), Cluster: cluster, ID: n.id,
		Shards: o.shards, Admitted: n.ml.IsMember, AdmitInterval: o.interval, AdmitGrace: o.grace,
		Logger: quiet(),
	})
	if err != nil {
		t.Fatalf("shardmap %s: %v", name, err)
	}
	if o.dir != nil {
		o.dir.add(n)
	}
	n.loop.Add(1)
	go n.memberLoop()
	if addrs, err := registry.Discoverer(n.client, cluster)(ctx); err == nil && len(addrs) > 1 {
		_, _ = n.ml.Join(ctx, addrs...) // joining ourselves among them is harmless
	}
	t.Cleanup(n.stop)
	return n
}

// memberLoop is mesh/cluster.go's memberLoop reduced to what the control plane does:
// a failed or departed member is declared dead (its lease revoked, so its shards move
// at once); a join or update asks the shard-map leader to check admission again.
func (n *simNode) memberLoop() {
	defer n.loop.Done()
	for ev := range n.ml.Events() {
		switch ev.Type {
		case membership.EventFailed, membership.EventLeave:
			n.mu.Lock()
			n.failedAt[ev.Member.ID] = ev.At // the latest verdict
			n.mu.Unlock()
			if n.stopping.Load() || n.killed.Load() {
				continue
			}
			if n.dir != nil && n.dir.answers(ev.Member.ID) {
				n.dir.falseVerdicts.Add(1)
				continue
			}
			n.nodeDead.Add(1)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = n.sm.NodeDead(ctx, ev.Member.ID)
			cancel()
		default:
			if ev.Type == membership.EventJoin {
				n.mu.Lock()
				if _, ok := n.joinedAt[ev.Member.ID]; !ok {
					n.joinedAt[ev.Member.ID] = ev.At
				}
				n.mu.Unlock()
			}
			n.sm.Recheck()
		}
	}
}

// joined returns when this node first saw id join.
func (n *simNode) joined(id string) (time.Time, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	at, ok := n.joinedAt[id]
	return at, ok
}

// failed returns when this node last learned that id failed.
func (n *simNode) failed(id string) (time.Time, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	at, ok := n.failedAt[id]
	return at, ok
}

// kill stops the node as kill -9 would look to its peers: gossip stops without a
// leave, and its etcd connection drops without revoking its lease (which lives until
// its TTL or a peer's NodeDead). The rest of the teardown waits for cleanup.
func (n *simNode) kill() {
	if n.killed.Swap(true) {
		return
	}
	_ = n.ml.Close()
	_ = n.client.Close()
}

// stop is the cleanup: a graceful stop (resign, deregister, stop gossip) for a node
// still running, the rest of the teardown for a killed one. Idempotent.
func (n *simNode) stop() {
	n.stopOnce.Do(func() {
		n.stopping.Store(true)
		if !n.killed.Load() {
			_ = n.sm.Close()
			_ = n.reg.Close()
			n.kill()
		}
		n.loop.Wait()
		// For a killed node these fail fast or wind down the etcd client's
		// keep-alive of the closed connection, which takes a few seconds.
		_ = n.sm.Close()
		_ = n.reg.Close()
		n.endLife()
	})
}

// owns reports how many shards this node's cached map gives id.
func (n *simNode) owns(id string) int { return n.sm.Current().Count()[id] }
