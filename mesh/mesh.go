package mesh

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roomcast/roomcast/fabric"
)

// Defaults for Config fields left zero.
const (
	DefaultShards        = 256
	DefaultHistoryLimit  = 1000
	DefaultSweepInterval = 5 * time.Second
	// DefaultEventBuffer is the queue size of an event subscription that asks for none.
	DefaultEventBuffer = 1024
	// MaxEventBuffer bounds one subscription's queue.
	MaxEventBuffer = 1 << 16
	// MaxListRooms bounds one ListRooms page; DefaultListRooms is used for limit <= 0.
	MaxListRooms     = 1000
	DefaultListRooms = 100
)

// Config configures a Mesh.
type Config struct {
	// Node is this node's name, unique per incarnation. Required; it must not contain
	// '@' because connection ids name their node after the last '@'.
	Node string
	// Namespaces is the live namespace table. Required.
	Namespaces *fabric.Namespaces
	// Shards is the fixed number of shards rooms and users hash into (default 256).
	Shards int
	// Version, ClientAddr and ControlAddr describe this node in ListNodes.
	Version, ClientAddr, ControlAddr string
	// HistoryLimit caps the messages one History query returns (default 1000).
	HistoryLimit int
	// SweepInterval is how often expired history and idempotency keys are dropped
	// (default 5s). Expiry is also applied whenever a room is used, so this only
	// bounds how long an idle room's memory lingers.
	SweepInterval time.Duration
	// Logger receives the mesh's logs (default slog.Default()).
	Logger *slog.Logger
	// Registerer receives the mesh's metrics; nil means do not register.
	Registerer prometheus.Registerer
	// Now is the clock for message times, history TTLs and idempotency windows
	// (default time.Now); tests inject a fake.
	Now func() time.Time
	// Cluster, when set, makes this mesh one node of a cluster (see ClusterConfig);
	// nil is the mesh of one, which owns every shard.
	Cluster *ClusterConfig
}

// Mesh is the fabric seen from one node: the owner of the shards of rooms and users
// this node serves (every shard in a mesh of one) and the router to the owners of the
// others. It implements node.Fabric and control.Fabric. Create it with New, then
// Attach the edge before any other call.
type Mesh struct {
	cfg       Config
	log       *slog.Logger
	epoch     string
	startedAt time.Time

	edgeBox  atomic.Pointer[edgeBox]
	draining atomic.Bool
	closed   atomic.Bool

	shards []*shard
	users  []*userShard
	hub    *hub
	met    *metrics

	stop     chan struct{}
	sweeping sync.WaitGroup
	closeMu  sync.Once

	// cl is the cluster machinery; nil for a mesh of one.
	cl *cluster
	// ledger is what this node's edge registered through the mesh (cluster mode): the
	// source a new owner rebuilds presence and interest from.
	ledger ledger
}

// ep is the epoch of a shard's ownership under which owner state is read or written:
// s is its form in positions, n its shard-map epoch (0 in a mesh of one).
type ep struct {
	s string
	n int64
}

// edgeBox lets an interface value live in an atomic.Pointer.
type edgeBox struct{ e Edge }

// shard is one slice of the room space: the owner state of its rooms, held while this
// node owns it (always, in a mesh of one).
type shard struct {
	mu    sync.Mutex
	rooms map[string]*room
	// floor is the highest offset any dropped room of this shard reached. A room
	// created again starts after it, so a room's offsets never repeat within an epoch
	// (see the package doc).
	floor uint64
	// epochN is the shard-map epoch the rooms belong to (always 0 in a mesh of one).
	epochN int64
}

type metrics struct {
	rooms     prometheus.Gauge
	published prometheus.Counter
	latency   prometheus.Histogram
	retained  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		rooms: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "roomcast_rooms",
			Help: "Rooms whose owner state this node holds (members, history or idempotency keys).",
		}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "roomcast_messages_published_total",
			Help: "Messages accepted by this node as room owner (idempotent retries excluded).",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "roomcast_publish_enqueue_seconds",
			Help:    "Time from accepting a publish to the edge having enqueued it to local members.",
			Buckets: prometheus.ExponentialBucketsRange(10e-6, 1, 16),
		}),
		retained: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "roomcast_history_messages",
			Help: "Messages retained in room histories on this node.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.rooms, m.published, m.latency, m.retained} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register mesh metrics: %w", err)
			}
		}
	}
	return m, nil
}

// New validates cfg, fills its defaults, starts a new epoch and the sweeper. Call
// Attach before using the mesh and Close to stop it.
func New(cfg Config) (*Mesh, error) {
	if cfg.Node == "" {
		return nil, errors.New("mesh: node name is required")
	}
	if strings.Contains(cfg.Node, "@") {
		return nil, fmt.Errorf("mesh: node name %q must not contain '@'", cfg.Node)
	}
	if cfg.Namespaces == nil {
		return nil, errors.New("mesh: namespaces are required")
	}
	if cfg.Shards < 0 || cfg.HistoryLimit < 0 || cfg.SweepInterval < 0 {
		return nil, errors.New("mesh: negative shards, history limit or sweep interval")
	}
	if cfg.Shards == 0 {
		cfg.Shards = DefaultShards
	}
	if cfg.HistoryLimit == 0 {
		cfg.HistoryLimit = DefaultHistoryLimit
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	epoch, err := newEpoch()
	if err != nil {
		return nil, err
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	m := &Mesh{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "mesh", "node", cfg.Node),
		epoch:     epoch,
		startedAt: cfg.Now(),
		shards:    make([]*shard, cfg.Shards),
		users:     make([]*userShard, cfg.Shards),
		met:       met,
		stop:      make(chan struct{}),
	}
	for i := range m.shards {
		m.shards[i] = &shard{rooms: make(map[string]*room)}
		m.users[i] = &userShard{users: make(map[string][]string), conns: make(map[string]string)}
	}
	m.hub = newHub(m)
	if cfg.Cluster != nil {
		m.hub.view = newGroupView()
		cl, err := startCluster(m, *cfg.Cluster)
		if err != nil {
			m.hub.closeAll()
			return nil, err
		}
		m.cl = cl
	}
	m.sweeping.Add(1)
	go m.sweepLoop()
	m.log.Info("mesh started", "epoch", epoch, "shards", cfg.Shards, "cluster", cfg.Cluster != nil)
	return m, nil
}

// newEpoch returns 10 random base32 characters: a standalone node's history does not
// survive a restart, so each process start must name a new stream.
func newEpoch() (string, error) {
	var b [7]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("mesh: epoch: %w", err)
	}
	s := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])
	return strings.ToLower(s[:10]), nil
}

// Attach plugs in the local edge. It must be called before any other method (the node
// is built after the mesh because it needs the mesh as its Fabric).
func (m *Mesh) Attach(e Edge) { m.edgeBox.Store(&edgeBox{e: e}) }

// edge returns the attached Edge, or a no-op one before Attach so early calls cannot
// crash the node.
func (m *Mesh) edge() Edge {
	if b := m.edgeBox.Load(); b != nil {
		return b.e
	}
	return noEdge{}
}

// Epoch returns the epoch of every room a mesh of one owns. In cluster mode each
// shard has its own epoch (the shard map's) and this is only the process's epoch.
func (m *Mesh) Epoch() string { return m.epoch }

// ownEpoch reports whether this node may act as the owner of shard idx now, and
// under which epoch. A mesh of one always may.
func (m *Mesh) ownEpoch(idx int) (ep, bool) {
	if m.cl == nil {
		return ep{s: m.epoch}, true
	}
	return m.cl.ownEpoch(idx)
}

// SetDraining marks the node as draining (or active again) in ListNodes.
func (m *Mesh) SetDraining(draining bool) { m.draining.Store(draining) }

// Close stops the sweeper and ends every event subscription (their Next returns an
// error). Later calls fail with fabric.ErrUnavailable. Close is idempotent.
func (m *Mesh) Close() error {
	m.closeMu.Do(func() {
		m.closed.Store(true)
		if m.cl != nil {
			m.cl.stop(true)
		}
		close(m.stop)
		m.sweeping.Wait()
		m.hub.closeAll()
	})
	return nil
}

func (m *Mesh) errClosed() error {
	return fabric.Errorf(fabric.CodeUnavailable, "mesh of node %s is closed", m.cfg.Node)
}

// shardIndex hashes a name (room or user) to its shard. FNV-1a is stable across
// processes and versions, which a cluster's shard map needs.
func (m *Mesh) shardIndex(name string) int {
	h := uint32(2166136261)
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return int(h % uint32(len(m.shards)))
}

// ListNodes returns every node of the cluster ordered by name (this node alone in a
// mesh of one).
func (m *Mesh) ListNodes(ctx context.Context) ([]fabric.NodeInfo, error) {
	if m.closed.Load() {
		return nil, m.errClosed()
	}
	if m.cl != nil {
		return m.cl.listNodes(ctx)
	}
	return []fabric.NodeInfo{m.selfInfo()}, nil
}

// selfInfo describes this node for ListNodes.
func (m *Mesh) selfInfo() fabric.NodeInfo {
	conns, rooms := m.edge().Stats()
	state := fabric.NodeActive
	if m.draining.Load() {
		state = fabric.NodeDraining
	}
	shards := len(m.shards)
	if m.cl != nil {
		shards = m.cl.smap().Current().Count()[m.cl.id]
	}
	return fabric.NodeInfo{
		Name:        m.cfg.Node,
		State:       state,
		ClientAddr:  m.cfg.ClientAddr,
		ControlAddr: m.cfg.ControlAddr,
		Version:     m.cfg.Version,
		Conns:       conns,
		Rooms:       rooms,
		Shards:      shards,
		StartedAt:   m.startedAt,
	}
}

// sweepLoop periodically expires history and idempotency keys so idle rooms are
// dropped. It is owned by the Mesh and ends on Close.
func (m *Mesh) sweepLoop() {
	defer m.sweeping.Done()
	t := time.NewTicker(m.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.sweep()
		}
	}
}

// roomsInto appends the shard's rooms to buf (taken under s.mu, so callers then lock
// each room without holding the shard) and returns it.
func (s *shard) roomsInto(buf []*room) []*room {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.rooms {
		buf = append(buf, r)
	}
	return buf
}

// sweep expires every room's history and keys and drops rooms left empty.
func (m *Mesh) sweep() {
	now := m.cfg.Now()
	var batch []*room
	for _, s := range m.shards {
		batch = s.roomsInto(batch[:0])
		for _, r := range batch {
			r.mu.Lock()
			if !r.dead {
				ns, err := m.cfg.Namespaces.Lookup(r.name)
				if err != nil {
					// The namespace was removed: nobody can read this history any more.
					m.met.retained.Sub(float64(r.hist.clear()))
					r.keys.clear()
				} else {
					r.expire(m, ns, now)
				}
				m.dropIfEmpty(s, r)
			}
			r.mu.Unlock()
		}
		clear(batch)
	}
}

// noEdge stands in before Attach: deliveries go nowhere and connections are unknown.
type noEdge struct{}

func (noEdge) Deliver(*fabric.Message)                           {}
func (noEdge) DeliverMembership(string, fabric.ClientInfo, bool) {}
func (noEdge) SendToConn(string, fabric.Payload) error           { return fabric.ErrNotFound }
func (noEdge) JoinConn(context.Context, string, string) error    { return fabric.ErrNotFound }
func (noEdge) LeaveConn(context.Context, string, string) error   { return fabric.ErrNotFound }
func (noEdge) KickConn(string, fabric.Kick) error                { return fabric.ErrNotFound }
func (noEdge) Stats() (int, int)                                 { return 0, 0 }
