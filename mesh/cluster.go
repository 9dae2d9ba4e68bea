package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/roomcast/roomcast/fabric"
	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	gossip "github.com/roomcast/roomcast/mesh/membership"
	"github.com/roomcast/roomcast/mesh/peer"
	"github.com/roomcast/roomcast/mesh/registry"
	"github.com/roomcast/roomcast/mesh/shardmap"
)

// Defaults of ClusterConfig.
const (
	DefaultPeerAddr       = ":7947"
	DefaultRouteTimeout   = 3 * time.Second
	DefaultRebuildTimeout = time.Second
	// sendTimeout bounds the wait for a link being dialed when an owner fans a
	// delivery out under a room lock.
	sendTimeout = 200 * time.Millisecond
)

// ClusterConfig makes a Mesh one node of a cluster: etcd registration and shard map,
// gossip membership and peer links. Mesh.Config.Node is the node's stable name and
// Mesh.Config.Shards the cluster's fixed shard count (every node must agree).
type ClusterConfig struct {
	// Etcd is the etcd client. Required; the mesh does not close it.
	Etcd *clientv3.Client
	// Name is the cluster name (the etcd prefix and gossip label). Required.
	Name string
	// Incarnation distinguishes this process from earlier ones of the node (default:
	// the start time in nanoseconds).
	Incarnation uint64
	// GossipAddr and GossipPort are the gossip listen address (default 0.0.0.0) and
	// port (0: any free port).
	GossipAddr string
	GossipPort int
	// GossipKeys is the gossip keyring (Keys[0] encrypts). Required.
	GossipKeys [][]byte
	// Seeds are static gossip addresses to join.
	Seeds []string
	// RejoinInterval is how often seeds and registered nodes are re-joined (default
	// gossip.DefaultRejoinInterval).
	RejoinInterval time.Duration
	// Timing holds the gossip timers (zero fields: gossip.LANFast).
	Timing gossip.Timing
	// PeerAddr is the listen address of the peer-link gRPC server (default :7947).
	PeerAddr string
	// Advertise is the host other nodes reach this node at, for gossip and peer
	// links. Default: the listen host when it names one; when listening on all
	// interfaces, the address gossip advertises (the host's private IP).
	Advertise string
	// PeerSecrets are the link secrets (see peer.Config.Secrets). Required.
	PeerSecrets [][]byte
	// LeaseTTL is the registry lease TTL in seconds (default registry.DefaultTTL).
	LeaseTTL int
	// Settle is the shard-map leader's settle time (default 10 ms).
	Settle time.Duration
	// RouteTimeout bounds how long an operation waits for a serving owner of its
	// shard (map changes, rebuilds) before failing with fabric.ErrUnavailable
	// (default 3 s).
	RouteTimeout time.Duration
	// RebuildTimeout bounds how long a new owner waits for each node's local state
	// (default 1 s); a node that does not answer in time is left out.
	RebuildTimeout time.Duration
}

// cluster is the cluster machinery of a Mesh. Goroutines it owns: the membership
// loop, the map loop, one per peer request being handled, and short-lived helpers;
// all tracked by wg and ended by stop.
type cluster struct {
	m   *Mesh
	cfg ClusterConfig
	id  string // gossip ID, "<name>.<incarnation>"

	ml    *gossip.Membership
	links *peer.Links
	lis   net.Listener
	srv   *grpc.Server

	// peerAddr is the peer-link address other nodes dial (see ClusterConfig.Advertise).
	peerAddr string

	// co is the node's etcd standing: its registration and the shard map bound to it.
	// Replaced (under coMu) when the node re-registers after being fenced.
	co       atomic.Pointer[coord]
	coMu     sync.Mutex
	stopping bool
	// draining is set by HandOver: a re-registration keeps the node draining.
	draining atomic.Bool

	// ready holds, per shard, the epoch whose rebuild finished: the node serves a
	// shard only at the epoch of the map and once its state is rebuilt.
	ready []atomic.Int64

	mu      sync.RWMutex
	ids     map[string]string // live node name -> gossip ID
	addrs   map[string]string // gossip ID -> peer address
	mapWait chan struct{}     // closed and replaced whenever a new map was applied
	// applied is the revision of the last map whose departures were applied (the
	// shards that moved away stopped and were stashed); MaxInt64 while fenced, when
	// everything served until then is stashed.
	applied atomic.Int64

	// hoMu guards handoffs: owner state of shards that moved away, kept for their
	// next owner (see handover.go).
	hoMu     sync.Mutex
	handoffs map[int]*handoff

	// evMu guards the event outbox (a leaf lock; taken under room locks).
	evMu      sync.Mutex
	evQueue   []*pb.Event
	evDropped int
	evNotify  chan struct{} // capacity 1: "the outbox has events"

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
}

func epochString(n int64) string { return strconv.FormatInt(n, 10) }

// startCluster starts registry, membership, peer links and shard map, in that order.
func startCluster(m *Mesh, cfg ClusterConfig) (_ *cluster, err error) {
	switch {
	case cfg.Etcd == nil:
		return nil, errors.New("mesh: cluster needs an etcd client")
	case cfg.Name == "":
		return nil, errors.New("mesh: cluster needs a name")
	}
	if cfg.Incarnation == 0 {
		cfg.Incarnation = uint64(time.Now().UnixNano())
	}
	if cfg.PeerAddr == "" {
		cfg.PeerAddr = DefaultPeerAddr
	}
	if cfg.RouteTimeout <= 0 {
		cfg.RouteTimeout = DefaultRouteTimeout
	}
	if cfg.RebuildTimeout <= 0 {
		cfg.RebuildTimeout = DefaultRebuildTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &cluster{
		m: m, cfg: cfg, id: peer.ID(m.cfg.Node, cfg.Incarnation),
		ready: make([]atomic.Int64, len(m.shards)),
		ids:   map[string]string{}, addrs: map[string]string{}, handoffs: map[int]*handoff{},
		mapWait: make(chan struct{}), evNotify: make(chan struct{}, 1),
		ctx: ctx, cancel: cancel,
	}
	defer func() {
		if err != nil {
			c.stop(false)
		}
	}()
	c.lis, err = net.Listen("tcp", cfg.PeerAddr)
	if err != nil {
		return nil, fmt.Errorf("mesh: peer listener: %w", err)
	}
	peerAddr := advertised(c.lis.Addr().String(), cfg.Advertise)
	c.peerAddr = peerAddr
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	// The session lives as long as the cluster: registry.New binds its keep-alive to
	// the context it is given, so it gets the cluster's context and the start-up
	// bound is applied around it.
	regDone := make(chan struct{})
	go func() {
		defer close(regDone)
		var reg *registry.Registry
		reg, err = registry.New(ctx, c.regConfig(registry.Node{ID: c.id, PeerAddr: peerAddr, ClientAddr: m.cfg.ClientAddr, ControlAddr: m.cfg.ControlAddr, Version: m.cfg.Version}))
		if err == nil {
			c.co.Store(&coord{reg: reg})
		}
	}()
	select {
	case <-regDone:
	case <-sctx.Done():
		cancel()
		<-regDone
	}
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	c.ml, err = gossip.New(gossip.Config{
		Name: m.cfg.Node, Incarnation: cfg.Incarnation, Cluster: cfg.Name,
		BindAddr: cfg.GossipAddr, BindPort: cfg.GossipPort, AdvertiseAddr: cfg.Advertise, Keys: cfg.GossipKeys,
		Meta:  gossip.Meta{Version: m.cfg.Version, Protocol: peer.ProtocolMax, PeerAddr: peerAddr, ClientAddr: m.cfg.ClientAddr, ControlAddr: m.cfg.ControlAddr, State: "serving"},
		Seeds: cfg.Seeds, Discover: registry.Discoverer(cfg.Etcd, cfg.Name), RejoinInterval: cfg.RejoinInterval,
		Timing: cfg.Timing, Logger: m.cfg.Logger, Registerer: m.cfg.Registerer,
	})
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	if host, _, err := net.SplitHostPort(c.peerAddr); err == nil && unspecified(host) {
		// Listening on all interfaces: other nodes reach us where gossip says we are.
		if ghost, _, err := net.SplitHostPort(c.ml.Addr()); err == nil {
			_, port, _ := net.SplitHostPort(c.peerAddr)
			c.peerAddr = net.JoinHostPort(ghost, port)
			meta := c.ml.Local().Meta
			meta.PeerAddr = c.peerAddr
			if err := c.ml.UpdateMeta(sctx, meta); err != nil {
				return nil, fmt.Errorf("mesh: %w", err)
			}
		}
	}
	if err := c.registry().Update(sctx, c.regNode()); err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	c.noteMember(c.ml.Local())
	c.links, err = peer.New(peer.Config{
		Cluster: cfg.Name, Node: m.cfg.Node, Incarnation: cfg.Incarnation, Version: m.cfg.Version,
		Secrets: cfg.PeerSecrets, Resolve: c.resolve, Handler: peer.HandlerFunc(c.handle),
		BackoffMin: 20 * time.Millisecond, BackoffMax: time.Second, Logger: m.cfg.Logger,
		Registerer: m.cfg.Registerer,
	})
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	c.srv = grpc.NewServer(peer.ServerOptions()...)
	c.links.Register(c.srv)
	lis := c.lis
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		_ = c.srv.Serve(lis)
	}()
	sm, err := c.newShardMap(c.registry())
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	c.co.Store(&coord{reg: c.registry(), sm: sm})
	if _, err := c.ml.Join(sctx, cfg.Seeds...); err != nil && len(cfg.Seeds) > 0 {
		m.log.Warn("joining seeds failed; the re-joiner keeps trying", "err", err)
	}
	if addrs, err := registry.Discoverer(cfg.Etcd, cfg.Name)(sctx); err == nil && len(addrs) > 0 {
		_, _ = c.ml.Join(sctx, addrs...)
	}
	for _, mem := range c.ml.Members() {
		c.noteMember(mem)
	}
	c.wg.Add(3)
	go c.memberLoop()
	go c.mapLoop()
	go c.eventLoop()
	return c, nil
}

// stop shuts the cluster machinery down in reverse order. graceful tells peers
// (Goodbye, gossip leave, lease revoked); otherwise the node just stops, as a crash
// would look to its peers apart from its lease, which the caller may let expire.
func (c *cluster) stop(graceful bool) {
	c.stopOnce.Do(func() {
		c.coMu.Lock()
		c.stopping = true
		co := c.co.Load()
		c.coMu.Unlock()
		if co != nil && co.sm != nil {
			_ = co.sm.Close()
		}
		if graceful && c.links != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			c.links.Goodbye(ctx, "shutdown")
			cancel()
		}
		if c.ml != nil {
			if graceful {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_ = c.ml.Leave(ctx)
				cancel()
			} else {
				_ = c.ml.Close()
			}
		}
		c.cancel()
		if c.links != nil {
			_ = c.links.Close()
		}
		if c.srv != nil {
			c.srv.Stop()
		} else if c.lis != nil {
			_ = c.lis.Close()
		}
		c.wg.Wait()
		if co != nil {
			_ = co.reg.Close()
		}
	})
}

// noteMember records a live member's name, ID and peer address.
func (c *cluster) noteMember(mem gossip.Member) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ids[mem.Name] = mem.ID
	if mem.Meta.PeerAddr != "" {
		c.addrs[mem.ID] = mem.Meta.PeerAddr
	}
}

// idOf returns the gossip ID of a live node name ("" if unknown).
func (c *cluster) idOf(name string) string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.ids[name]
}

// liveIDs returns the IDs of the live nodes other than this one.
func (c *cluster) liveIDs() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]string, 0, len(c.ids))
	for _, id := range c.ids {
		if id != c.id {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

func (c *cluster) resolve(ctx context.Context, id string) (string, error) {
	c.mu.RLock()
	addr := c.addrs[id]
	c.mu.RUnlock()
	if addr != "" {
		return addr, nil
	}
	nodes, _, err := registry.List(ctx, c.cfg.Etcd, c.cfg.Name)
	if err != nil {
		return "", err
	}
	for _, n := range nodes {
		if n.ID == id && n.PeerAddr != "" {
			return n.PeerAddr, nil
		}
	}
	return "", fmt.Errorf("node %s is not registered", id)
}

// memberLoop follows membership: a failed or departed node is declared dead to the
// shard map (its lease revoked so its shards move at once), forgotten by the links,
// and its members are dropped from the rooms this node owns.
func (c *cluster) memberLoop() {
	defer c.wg.Done()
	for ev := range c.ml.Events() {
		switch ev.Type {
		case gossip.EventFailed, gossip.EventLeave:
			mem := ev.Member
			certain := ev.Type == gossip.EventLeave
			if ev.Type == gossip.EventFailed {
				switch c.verdict(mem.ID) {
				case nodeAnswers:
					// A second opinion: gossip's verdict was wrong (a starved process
					// misses probes) while the node still answers on its link.
					c.m.log.Warn("gossip says a node failed but its link answers; not declaring it dead", "node", mem.ID)
					continue
				case nodeGone:
					certain = true
				}
			}
			c.m.log.Info("node gone", "gone", mem.ID, "event", ev.Type.String(), "certain", certain)
			c.mu.Lock()
			if c.ids[mem.Name] == mem.ID {
				delete(c.ids, mem.Name)
			}
			delete(c.addrs, mem.ID)
			c.mu.Unlock()
			c.links.Forget(mem.ID)
			if certain {
				// Its process is gone: revoke its lease so its shards move now.
				// Otherwise (out of reach: a partition, a dead host) it may still
				// serve until its lease lapses — which it stops doing on its own
				// before then (Registry.Valid) — so the lease must run out first.
				ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
				if err := c.smap().NodeDead(ctx, mem.ID); err != nil && c.ctx.Err() == nil {
					c.m.log.Warn("declaring a node dead failed", "node", mem.ID, "err", err)
				}
				cancel()
			}
			c.m.dropNode(mem.Name)
			c.m.hub.view.drop(mem.Name)
		default:
			if ev.Member.ID != c.id {
				c.noteMember(ev.Member)
				c.smap().Recheck()      // the leader may admit it now
				c.m.hub.groupsChanged() // tell the newcomer our groups
				if ev.Type == gossip.EventJoin {
					id := ev.Member.ID
					c.wg.Add(1)
					go func() {
						defer c.wg.Done()
						c.retryPull(id, true)
					}()
				}
			}
		}
	}
}

// verdicts on a node gossip says failed.
const (
	nodeAnswers     = iota // it answers on its link: gossip was wrong
	nodeGone               // its host refuses the connection: the process is gone
	nodeUnreachable        // no answer at all: a partition or a dead host
)

// verdict gives a second opinion on a failure verdict: the node's link, then a plain
// TCP dial to its peer port, which a live host with a dead process refuses at once.
func (c *cluster) verdict(id string) int {
	if c.answers(id) {
		return nodeAnswers
	}
	c.mu.RLock()
	addr := c.addrs[id]
	c.mu.RUnlock()
	if addr == "" {
		return nodeUnreachable
	}
	conn, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
	switch {
	case err == nil:
		_ = conn.Close()
		return nodeAnswers // something listens there; let the lease decide
	case errors.Is(err, syscall.ECONNREFUSED):
		return nodeGone
	}
	return nodeUnreachable
}

// answerTimeout bounds the second opinion on a failure verdict. A crashed process
// refuses the connection at once, so it only delays the verdict on a host that
// vanished from the network (partition, power loss); a starved process that missed
// its gossip probes gets this long to prove it is alive.
const answerTimeout = time.Second

// answers asks a node for its stats over the peer link, briefly: a crashed process
// refuses the connection at once, so this costs little on a real failure.
func (c *cluster) answers(id string) bool {
	ctx, cancel := context.WithTimeout(c.ctx, answerTimeout)
	defer cancel()
	resp, err := c.links.Request(ctx, id, &meshv1.Envelope{Body: &meshv1.Envelope_NodeStats{NodeStats: &meshv1.NodeStatsRequest{}}})
	return err == nil && resp.GetNodeStatsReply() != nil
}

// mapLoop applies every new shard map: shards that became this node's are rebuilt
// before they are served; state of shards that moved away is forgotten.
func (c *cluster) mapLoop() {
	defer c.wg.Done()
	for {
		co := c.co.Load()
		select {
		case <-c.ctx.Done():
			return
		case mp := <-co.sm.Updates():
			c.apply(mp)
		case <-co.reg.Lost():
			c.refence(co)
		}
	}
}

func (c *cluster) apply(mp *shardmap.Map) {
	var shards []uint32
	var epochs []int64
	for i := range c.m.shards {
		owner, epoch := mp.Owner(i)
		if owner == c.id {
			if c.ready[i].Load() != epoch {
				shards = append(shards, uint32(i))
				epochs = append(epochs, epoch)
			}
			continue
		}
		if c.ready[i].Swap(0) != 0 && owner != "" {
			c.stashShard(i, epoch, epoch) // served here until now: keep it for the next owner
		} else {
			c.m.forgetShard(i)
		}
	}
	c.applied.Store(mp.Revision)
	c.wakeMapWaiters()
	if len(shards) > 0 {
		start := time.Now()
		c.rebuild(shards, epochs)
		c.m.log.Info("shards acquired", "shards", len(shards), "rebuild", time.Since(start), "revision", mp.Revision)
		c.wakeMapWaiters()
	}
}

// wakeMapWaiters wakes every waitMap.
func (c *cluster) wakeMapWaiters() {
	c.mu.Lock()
	close(c.mapWait)
	c.mapWait = make(chan struct{})
	c.mu.Unlock()
}

// sleepCtx waits d, or less when ctx ends first; it reports whether the whole wait
// passed (the retry loops' pause between attempts).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// waitMap waits until the map is newer than rev or a rebuild finished, bounded by ctx
// and by d.
func (c *cluster) waitMap(ctx context.Context, rev int64, d time.Duration) {
	c.mu.RLock()
	ch := c.mapWait
	c.mu.RUnlock()
	if c.smap().Current().Revision > rev {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-ctx.Done():
	}
}

// ownEpoch reports whether this node serves shard idx now, and its epoch.
func (c *cluster) ownEpoch(idx int) (ep, bool) {
	n, ok := c.smap().Serving(idx)
	if !ok || c.ready[idx].Load() != n || !c.registry().Valid() {
		// Not serving also while the lease is not surely valid (etcd out of reach):
		// etcd may expire it any moment and give the shard to another node.
		return ep{}, false
	}
	return ep{s: epochString(n), n: n}, true
}

// routeRoom runs an operation on room at its owner: local when this node serves
// the room's shard, else as a request over the peer link. NotOwner answers and link
// failures wait for a newer map (or a rebuild) and retry, up to RouteTimeout; then
// the operation fails with fabric.ErrUnavailable. retryLinkDown says whether the
// operation may be retried after a link failed with the request possibly applied.
func (c *cluster) routeRoom(ctx context.Context, room string, retryLinkDown bool, local func(ep) error, req *meshv1.Envelope, onReply func(*meshv1.Envelope) error) error {
	return c.routeShard(ctx, c.m.shardIndex(room), retryLinkDown, local, req, onReply)
}

func (c *cluster) routeShard(ctx context.Context, idx int, retryLinkDown bool, local func(ep) error, req *meshv1.Envelope, onReply func(*meshv1.Envelope) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RouteTimeout)
	defer cancel()
	backoff := 10 * time.Millisecond
	for {
		if c.ctx.Err() != nil {
			return fabric.Errorf(fabric.CodeUnavailable, "mesh of node %s is closed", c.m.cfg.Node)
		}
		mp := c.smap().Current()
		owner, epoch := mp.Owner(idx)
		var err error
		switch {
		case owner == "":
			err = errNotOwner
		case owner == c.id:
			if e, ok := c.ownEpoch(idx); ok && e.n == epoch {
				err = local(e)
			} else {
				err = errNotOwner
			}
		default:
			env := &meshv1.Envelope{MapRevision: mp.Revision, Shard: uint32(idx), Epoch: epoch, Body: req.Body}
			resp, rerr := c.links.Request(ctx, owner, env)
			switch {
			case rerr != nil && !retryLinkDown:
				return fabric.Errorf(fabric.CodeUnavailable, "owner %s of shard %d: %v", owner, idx, rerr)
			case rerr != nil:
				err = errNotOwner
			default:
				if err = replyErr(resp); err == nil {
					return onReply(resp)
				}
			}
		}
		if !errors.Is(err, errNotOwner) {
			return err
		}
		if ctx.Err() != nil {
			return fabric.Errorf(fabric.CodeUnavailable, "shard %d has no serving owner", idx)
		}
		c.waitMap(ctx, mp.Revision, backoff)
		backoff = min(backoff*2, 200*time.Millisecond)
	}
}

// sendToNodes queues env to every node other than this one holding members of r.
// Called with r.mu held: Send only enqueues (a link being dialed is waited for up to
// sendTimeout); a node whose link is down misses the envelope, which is what a node
// that lost its link to the owner gets anyway.
func (c *cluster) sendToNodes(r *room, env *meshv1.Envelope) {
	var ctx context.Context
	for name := range r.nodes {
		if name == c.m.cfg.Node {
			continue
		}
		id := c.idOf(name)
		if id == "" {
			continue
		}
		if ctx == nil {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(c.ctx, sendTimeout)
			defer cancel()
		}
		if err := c.links.Send(ctx, id, env); err != nil {
			c.m.log.Debug("fan-out to a node failed", "node", id, "room", r.name, "err", err)
		}
	}
}

// maxEventOutbox bounds the events waiting to be broadcast; beyond it they are
// dropped and counted (subscribers on other nodes miss them).
const maxEventOutbox = 1 << 16

// broadcastEvent queues an event for every other live node's subscribers. It never
// blocks (it runs under room locks); the event loop sends what is queued, in order,
// batched into one EventsPush per node. Consumer groups are cluster-wide: see
// groups.go.
func (c *cluster) broadcastEvent(ev *fabric.Event) {
	c.evMu.Lock()
	if len(c.evQueue) >= maxEventOutbox {
		c.evDropped++
		c.evMu.Unlock()
		return
	}
	c.evQueue = append(c.evQueue, eventToWire(ev))
	c.evMu.Unlock()
	select {
	case c.evNotify <- struct{}{}:
	default:
	}
}

// eventLoop sends queued events to every other live node, and this node's consumer
// groups when they change and every groupRefresh. Both go out from this one goroutine,
// so a node's group announcement and its events reach each peer in order.
func (c *cluster) eventLoop() {
	defer c.wg.Done()
	refresh := time.NewTicker(groupRefresh)
	defer refresh.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.m.hub.groupNotify:
			c.pushGroups()
			continue
		case <-refresh.C:
			c.pushGroups()
			continue
		case <-c.evNotify:
		}
		c.evMu.Lock()
		batch, dropped := c.evQueue, c.evDropped
		c.evQueue, c.evDropped = nil, 0
		c.evMu.Unlock()
		if dropped > 0 {
			c.m.log.Warn("event outbox overflowed; other nodes miss events", "dropped", dropped)
		}
		env := &meshv1.Envelope{Body: &meshv1.Envelope_Events{Events: &meshv1.EventsPush{Events: batch}}}
		for _, id := range c.liveIDs() {
			c.sendBounded(id, env)
		}
	}
}

// sendBounded queues env to a node, waiting up to sendTimeout for a link being dialed.
func (c *cluster) sendBounded(id string, env *meshv1.Envelope) {
	ctx, cancel := context.WithTimeout(c.ctx, sendTimeout)
	defer cancel()
	if err := c.links.Send(ctx, id, env); err != nil {
		c.m.log.Debug("push to a node failed", "node", id, "err", err)
	}
}

// handle receives envelopes on a link's reader goroutine: pushes are applied at once
// (they never block), requests are answered from their own goroutine because owner
// work may itself need the network.
func (c *cluster) handle(from *peer.Peer, env *meshv1.Envelope) {
	switch b := env.GetBody().(type) {
	case *meshv1.Envelope_Deliver:
		if c.stale(env) {
			return
		}
		for _, msg := range b.Deliver.GetMessages() {
			c.m.edge().Deliver(messageFromWire(msg))
		}
	case *meshv1.Envelope_MembershipPush:
		if c.stale(env) {
			return
		}
		p := b.MembershipPush
		mem := p.GetMember()
		ci := fabric.ClientInfo{User: mem.GetUser(), Info: infoFromWire(mem.GetInfo())}
		if cs := mem.GetConnections(); len(cs) > 0 {
			ci.Conn = cs[0]
		}
		c.m.edge().DeliverMembership(p.GetRoom(), ci, p.GetChange() == meshv1.MembershipChange_MEMBERSHIP_CHANGE_JOINED)
	case *meshv1.Envelope_Events:
		for _, ev := range b.Events.GetEvents() {
			c.m.hub.emit(eventFromWire(ev))
		}
	case *meshv1.Envelope_GroupInterest:
		c.m.hub.view.set(from.Node(), b.GroupInterest)
	case *meshv1.Envelope_Goodbye:
	default:
		if env.GetRequestId() == 0 {
			return
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			_ = from.Reply(env, c.serve(env))
		}()
	}
}

// stale reports whether a room envelope carries an epoch older than this node's map
// knows for its shard.
func (c *cluster) stale(env *meshv1.Envelope) bool {
	_, epoch := c.smap().Current().Owner(int(env.GetShard()))
	return env.GetEpoch() < epoch
}

// serve answers one request.
func (c *cluster) serve(env *meshv1.Envelope) *meshv1.Envelope {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.RouteTimeout)
	defer cancel()
	m := c.m
	// owned checks that this node serves the request's shard at the sender's epoch.
	owned := func(name string) (ep, *meshv1.Envelope) {
		idx := m.shardIndex(name)
		e, ok := c.ownEpoch(idx)
		if !ok || uint32(idx) != env.GetShard() || e.n != env.GetEpoch() {
			owner, epoch := c.smap().Current().Owner(idx)
			return ep{}, &meshv1.Envelope{Body: &meshv1.Envelope_NotOwner{NotOwner: &meshv1.NotOwner{
				Shard: uint32(idx), Owner: owner, Epoch: epoch, MapRevision: c.smap().Current().Revision}}}
		}
		return e, nil
	}
	reply := func(resp *meshv1.Envelope, err error) *meshv1.Envelope {
		switch {
		case errors.Is(err, errNotOwner):
			return &meshv1.Envelope{Body: &meshv1.Envelope_NotOwner{NotOwner: &meshv1.NotOwner{Shard: env.GetShard()}}}
		case err != nil:
			return errToWire(err)
		}
		return resp
	}
	switch b := env.GetBody().(type) {
	case *meshv1.Envelope_Publish:
		r := b.Publish
		e, no := owned(r.GetRoom())
		if no != nil {
			return no
		}
		p := fabric.Publication{Room: r.GetRoom(), Payload: payloadFromWire(r.GetPayload()), IdempotencyKey: r.GetIdempotencyKey()}
		if r.Publisher != nil {
			p.Publisher = clientFromWire(r.Publisher)
		}
		pos, err := m.publishLocal(ctx, p, e)
		return reply(&meshv1.Envelope{Body: &meshv1.Envelope_PublishReply{PublishReply: &meshv1.PublishReply{Position: posToWire(pos)}}}, err)
	case *meshv1.Envelope_PublishBatch:
		ps := b.PublishBatch.GetPublishes()
		if len(ps) == 0 {
			return errToWire(fabric.Errorf(fabric.CodeBadRequest, "empty publish batch"))
		}
		e, no := owned(ps[0].GetRoom())
		if no != nil {
			return no
		}
		for _, r := range ps[1:] {
			if r.GetRoom() != ps[0].GetRoom() {
				return errToWire(fabric.Errorf(fabric.CodeBadRequest, "a publish batch is for one room"))
			}
		}
		res := m.publishBatchLocal(ctx, b.PublishBatch, e)
		if len(res) == 0 {
			return reply(nil, errNotOwner)
		}
		return &meshv1.Envelope{Body: &meshv1.Envelope_PublishBatchReply{PublishBatchReply: &meshv1.PublishBatchReply{Results: res}}}
	case *meshv1.Envelope_Join:
		r := b.Join
		e, no := owned(r.GetRoom())
		if no != nil {
			return no
		}
		var from *fabric.Position
		if r.RecoverFrom != nil {
			p := posFromWire(r.RecoverFrom)
			from = &p
		}
		res, err := m.joinLocal(ctx, r.GetRoom(), clientFromWire(r.GetClient()), from, r.GetAttempt(), e)
		return reply(&meshv1.Envelope{Body: &meshv1.Envelope_JoinReply{JoinReply: &meshv1.JoinReply{
			Position: posToWire(res.Pos), Recovered: res.Recovered, Missed: messagesToWire(res.Missed)}}}, err)
	case *meshv1.Envelope_Leave:
		r := b.Leave
		e, no := owned(r.GetRoom())
		if no != nil {
			return no
		}
		return reply(ack(), m.leaveLocal(ctx, r.GetRoom(), clientFromWire(r.GetClient()), e))
	case *meshv1.Envelope_Presence:
		e, no := owned(b.Presence.GetRoom())
		if no != nil {
			return no
		}
		ms, err := m.presenceLocal(ctx, b.Presence.GetRoom(), e)
		out := make([]*pb.Member, len(ms))
		for i, mm := range ms {
			out[i] = memberToWire(mm)
		}
		return reply(&meshv1.Envelope{Body: &meshv1.Envelope_PresenceReply{PresenceReply: &meshv1.PresenceReply{Members: out}}}, err)
	case *meshv1.Envelope_PresenceStats:
		e, no := owned(b.PresenceStats.GetRoom())
		if no != nil {
			return no
		}
		st, err := m.presenceStatsLocal(ctx, b.PresenceStats.GetRoom(), e)
		return reply(&meshv1.Envelope{Body: &meshv1.Envelope_PresenceStatsReply{PresenceStatsReply: &meshv1.PresenceStatsReply{
			Users: uint32(st.Users), Connections: uint32(st.Conns)}}}, err)
	case *meshv1.Envelope_History:
		r := b.History
		e, no := owned(r.GetRoom())
		if no != nil {
			return no
		}
		q := fabric.HistoryQuery{Limit: int(r.GetLimit()), Reverse: r.GetReverse()}
		if r.Since != nil {
			p := posFromWire(r.Since)
			q.Since = &p
		}
		h, err := m.historyLocal(ctx, r.GetRoom(), q, e)
		return reply(&meshv1.Envelope{Body: &meshv1.Envelope_HistoryReply{HistoryReply: &meshv1.HistoryReply{
			Messages: messagesToWire(h.Messages), Position: posToWire(h.Pos)}}}, err)
	case *meshv1.Envelope_UserIndex:
		r := b.UserIndex
		e, no := owned(r.GetUser())
		if no != nil {
			return no
		}
		if r.GetOp() == meshv1.UserIndexOp_USER_INDEX_OP_ADD {
			return reply(ack(), m.userAddLocal(r.GetUser(), r.GetConnection(), int(r.GetMaxPerUser()), e))
		}
		return reply(ack(), m.userRemoveLocal(r.GetUser(), r.GetConnection(), e))
	case *meshv1.Envelope_UserConnections:
		e, no := owned(b.UserConnections.GetUser())
		if no != nil {
			return no
		}
		conns, err := m.userConnsLocal(b.UserConnections.GetUser(), e)
		return reply(&meshv1.Envelope{Body: &meshv1.Envelope_UserConnectionsReply{UserConnectionsReply: &meshv1.UserConnectionsReply{Connections: conns}}}, err)
	case *meshv1.Envelope_SendToConnection:
		r := b.SendToConnection
		return reply(ack(), m.edge().SendToConn(r.GetConnection(), payloadFromWire(r.GetPayload())))
	case *meshv1.Envelope_KickConnection:
		r := b.KickConnection
		return reply(ack(), m.kickLocal(r.GetConnection(), fabric.Kick{Code: fabric.CloseCode(r.GetCode()), Reason: r.GetReason(), Reconnect: r.GetReconnect()}))
	case *meshv1.Envelope_MoveConnection:
		r := b.MoveConnection
		if r.GetJoin() {
			return reply(ack(), m.edge().JoinConn(ctx, r.GetConnection(), r.GetRoom()))
		}
		return reply(ack(), m.edge().LeaveConn(ctx, r.GetConnection(), r.GetRoom()))
	case *meshv1.Envelope_Rebuild:
		return c.serveRebuild(ctx, b.Rebuild)
	case *meshv1.Envelope_NodeStats:
		info := m.selfInfo()
		out := &pb.NodeInfo{Name: info.Name, State: pb.NodeState(info.State), ClientAddress: info.ClientAddr,
			ControlAddress: info.ControlAddr, Version: info.Version, Connections: uint32(info.Conns),
			Rooms: uint32(info.Rooms), Shards: uint32(info.Shards), StartedAt: timestamppb.New(info.StartedAt)}
		return &meshv1.Envelope{Body: &meshv1.Envelope_NodeStatsReply{NodeStatsReply: &meshv1.NodeStatsReply{Node: out}}}
	case *meshv1.Envelope_ListRooms:
		r := b.ListRooms
		rooms, more, err := m.listRoomsLocal(ctx, r.GetPrefix(), r.GetAfter(), int(r.GetLimit()))
		out := make([]*pb.RoomSummary, len(rooms))
		for i, s := range rooms {
			out[i] = &pb.RoomSummary{Name: s.Name, Users: uint32(s.Stats.Users), Connections: uint32(s.Stats.Conns), Position: posToWire(s.Pos), Owner: s.Owner}
		}
		return reply(&meshv1.Envelope{Body: &meshv1.Envelope_ListRoomsReply{ListRoomsReply: &meshv1.ListRoomsReply{Rooms: out, More: more}}}, err)
	}
	return &meshv1.Envelope{Body: &meshv1.Envelope_Error{Error: &pb.Error{Message: "unknown request"}}}
}

// userIndex adds or removes a connection at the owner of the user's shard.
func (c *cluster) userIndex(ctx context.Context, user, conn string, add bool, maxPerUser int) error {
	op := meshv1.UserIndexOp_USER_INDEX_OP_REMOVE
	if add {
		op = meshv1.UserIndexOp_USER_INDEX_OP_ADD
	}
	return c.routeShard(ctx, c.m.shardIndex(user), true,
		func(e ep) error {
			if add {
				return c.m.userAddLocal(user, conn, maxPerUser, e)
			}
			return c.m.userRemoveLocal(user, conn, e)
		},
		&meshv1.Envelope{Body: &meshv1.Envelope_UserIndex{UserIndex: &meshv1.UserIndexRequest{Op: op, User: user, Connection: conn, MaxPerUser: uint32(max(maxPerUser, 0))}}},
		func(*meshv1.Envelope) error { return nil })
}

// userConns asks the owner of the user's shard for the user's connections.
func (c *cluster) userConns(ctx context.Context, user string) ([]string, error) {
	var out []string
	err := c.routeShard(ctx, c.m.shardIndex(user), true,
		func(e ep) (err error) {
			out, err = c.m.userConnsLocal(user, e)
			return err
		},
		&meshv1.Envelope{Body: &meshv1.Envelope_UserConnections{UserConnections: &meshv1.UserConnectionsRequest{User: user}}},
		func(resp *meshv1.Envelope) error {
			out = resp.GetUserConnectionsReply().GetConnections()
			return nil
		})
	return out, err
}

// request sends a request to a live node by name and returns its reply or error.
func (c *cluster) request(ctx context.Context, node string, env *meshv1.Envelope) (*meshv1.Envelope, error) {
	id := c.idOf(node)
	if id == "" {
		return nil, fabric.Errorf(fabric.CodeNotFound, "node %q is not in the cluster", node)
	}
	resp, err := c.links.Request(ctx, id, env)
	if err != nil {
		return nil, fabric.Errorf(fabric.CodeUnavailable, "node %s: %v", node, err)
	}
	if err := replyErr(resp); err != nil {
		return nil, err
	}
	return resp, nil
}

func (c *cluster) sendConn(ctx context.Context, node, conn string, p fabric.Payload) error {
	_, err := c.request(ctx, node, &meshv1.Envelope{Body: &meshv1.Envelope_SendToConnection{SendToConnection: &meshv1.SendToConnectionRequest{Connection: conn, Payload: payloadToWire(p)}}})
	return err
}

func (c *cluster) kickConn(ctx context.Context, node, conn string, k fabric.Kick) error {
	_, err := c.request(ctx, node, &meshv1.Envelope{Body: &meshv1.Envelope_KickConnection{KickConnection: &meshv1.KickConnectionRequest{
		Connection: conn, Code: pb.CloseCode(k.Code), Reason: k.Reason, Reconnect: k.Reconnect}}})
	return err
}

func (c *cluster) moveConn(ctx context.Context, node, conn, room string, join bool) error {
	_, err := c.request(ctx, node, &meshv1.Envelope{Body: &meshv1.Envelope_MoveConnection{MoveConnection: &meshv1.MoveConnectionRequest{Connection: conn, Room: room, Join: join}}})
	return err
}

// listNodes returns every live node with its own stats (asked over its link; a node
// that does not answer is shown as suspect with what gossip says about it).
func (c *cluster) listNodes(ctx context.Context) ([]fabric.NodeInfo, error) {
	counts := c.smap().Current().Count()
	members := c.ml.Members()
	out := make([]fabric.NodeInfo, len(members))
	var wg sync.WaitGroup
	for i, mem := range members {
		if mem.ID == c.id {
			out[i] = c.m.selfInfo()
			continue
		}
		out[i] = fabric.NodeInfo{Name: mem.Name, State: fabric.NodeSuspect, ClientAddr: mem.Meta.ClientAddr,
			ControlAddr: mem.Meta.ControlAddr, Version: mem.Meta.Version, Shards: counts[mem.ID]}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			resp, err := c.links.Request(rctx, mem.ID, &meshv1.Envelope{Body: &meshv1.Envelope_NodeStats{NodeStats: &meshv1.NodeStatsRequest{}}})
			if err != nil || resp.GetNodeStatsReply() == nil {
				return
			}
			n := resp.GetNodeStatsReply().GetNode()
			out[i] = fabric.NodeInfo{Name: n.GetName(), State: fabric.NodeState(n.GetState()), ClientAddr: n.GetClientAddress(),
				ControlAddr: n.GetControlAddress(), Version: n.GetVersion(), Conns: int(n.GetConnections()),
				Rooms: int(n.GetRooms()), Shards: int(n.GetShards()), StartedAt: n.GetStartedAt().AsTime()}
		}()
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// listRooms gathers every node's owned rooms and merges them.
func (c *cluster) listRooms(ctx context.Context, prefix, after string, limit int) ([]fabric.RoomSummary, bool, error) {
	local, more, err := c.m.listRoomsLocal(ctx, prefix, after, limit)
	if err != nil {
		return nil, false, err
	}
	ids := c.liveIDs()
	pages := make([][]fabric.RoomSummary, len(ids)+1)
	pages[len(ids)] = local
	mores := make([]bool, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			resp, err := c.links.Request(rctx, id, &meshv1.Envelope{Body: &meshv1.Envelope_ListRooms{ListRooms: &meshv1.ListRoomsRequest{Prefix: prefix, After: after, Limit: uint32(limit)}}})
			if err != nil || resp.GetListRoomsReply() == nil {
				return
			}
			r := resp.GetListRoomsReply()
			mores[i] = r.GetMore()
			for _, s := range r.GetRooms() {
				pages[i] = append(pages[i], fabric.RoomSummary{Name: s.GetName(),
					Stats: fabric.Stats{Users: int(s.GetUsers()), Conns: int(s.GetConnections())},
					Pos:   posFromWire(s.GetPosition()), Owner: s.GetOwner()})
			}
		}()
	}
	wg.Wait()
	more = more || slices.Contains(mores, true)
	rooms, more := mergeRooms(pages, more, limit)
	return rooms, more, nil
}

// crash stops the mesh the way a killed process looks to its peers: no goodbye, no
// gossip leave. Its lease is revoked only if the etcd client still works, so tests
// close the client first. For tests.
func (m *Mesh) crash() {
	if m.cl != nil {
		m.cl.stop(false)
	}
	_ = m.Close()
}
