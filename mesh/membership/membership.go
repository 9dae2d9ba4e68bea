package membership

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults applied by New when a Config field is zero.
const (
	// DefaultBindAddr is the address gossip listens on (TCP and UDP).
	DefaultBindAddr = "0.0.0.0"
	// DefaultRejoinInterval is how often the re-joiner contacts seeds that are not
	// alive members. It bounds how long two halves of a healed partition stay apart:
	// each side ignores the other's "alive" until that side refutes the "dead" it
	// learns of in a push-pull, so a merge takes a few rounds. A round costs nothing
	// while every registered node is alive.
	DefaultRejoinInterval = 2 * time.Second
	// metaMaxSize is memberlist's limit on node metadata.
	metaMaxSize = memberlist.MetaMaxSize
)

// Timing holds memberlist's failure-detection and gossip timers. The zero value of a
// field means "use the LAN-fast default" (see LANFast).
type Timing struct {
	// ProbeInterval is how often each member probes one other member.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a direct probe waits for an ack before indirect probes.
	ProbeTimeout time.Duration
	// SuspicionMult scales the time a suspect member has to refute before it is
	// declared dead: SuspicionMult * max(1, log10(members)) * ProbeInterval.
	SuspicionMult int
	// SuspicionMaxTimeoutMult bounds the suspicion timeout when no other member
	// confirms the suspicion, as a multiple of the minimum.
	SuspicionMaxTimeoutMult int
	// GossipInterval is how often each member gossips queued broadcasts.
	GossipInterval time.Duration
	// GossipNodes is how many members each gossip round sends to.
	GossipNodes int
	// RetransmitMult scales how many times a broadcast is retransmitted.
	RetransmitMult int
	// PushPullInterval is how often a member does a full state sync with a random peer.
	PushPullInterval time.Duration
	// TCPTimeout bounds a TCP exchange (join, push-pull, TCP fallback ping).
	TCPTimeout time.Duration
}

// LANFast returns the timers roomcast uses by default. They make a crashed member known
// to every peer of a small LAN cluster in well under a second (memberlist's LAN
// defaults take 6-8 s): a probe every 100 ms, 50 ms to answer it, and a suspicion
// window of 300 ms (up to 600 ms when no peer confirms the suspicion), scaled by
// log10 of the cluster size. The cost is gossip traffic: each member sends a few small
// UDP packets every 100 ms, which stays cheap for tens of nodes.
func LANFast() Timing {
	return Timing{
		ProbeInterval:           100 * time.Millisecond,
		ProbeTimeout:            50 * time.Millisecond,
		SuspicionMult:           3,
		SuspicionMaxTimeoutMult: 2,
		GossipInterval:          20 * time.Millisecond,
		GossipNodes:             4,
		RetransmitMult:          4,
		PushPullInterval:        10 * time.Second,
		TCPTimeout:              2 * time.Second,
	}
}

func (t *Timing) fill() {
	d := LANFast()
	if t.ProbeInterval <= 0 {
		t.ProbeInterval = d.ProbeInterval
	}
	if t.ProbeTimeout <= 0 {
		t.ProbeTimeout = d.ProbeTimeout
	}
	if t.SuspicionMult <= 0 {
		t.SuspicionMult = d.SuspicionMult
	}
	if t.SuspicionMaxTimeoutMult <= 0 {
		t.SuspicionMaxTimeoutMult = d.SuspicionMaxTimeoutMult
	}
	if t.GossipInterval <= 0 {
		t.GossipInterval = d.GossipInterval
	}
	if t.GossipNodes <= 0 {
		t.GossipNodes = d.GossipNodes
	}
	if t.RetransmitMult <= 0 {
		t.RetransmitMult = d.RetransmitMult
	}
	if t.PushPullInterval <= 0 {
		t.PushPullInterval = d.PushPullInterval
	}
	if t.TCPTimeout <= 0 {
		t.TCPTimeout = d.TCPTimeout
	}
}

// Meta is the metadata a node gossips about itself. It is encoded as JSON and must
// stay under memberlist's 512-byte limit.
type Meta struct {
	// Version is the roomcast version the node runs (for rolling upgrades).
	Version string `json:"v,omitempty"`
	// Protocol is the highest mesh.v1 protocol version the node speaks.
	Protocol uint32 `json:"p,omitempty"`
	// PeerAddr is the host:port of the node's mesh.v1 peer-link server.
	PeerAddr string `json:"peer,omitempty"`
	// ClientAddr is the host:port of the node's WebSocket listener.
	ClientAddr string `json:"client,omitempty"`
	// ControlAddr is the host:port of the node's gRPC control API.
	ControlAddr string `json:"control,omitempty"`
	// State is a short free-form state word ("serving", "draining").
	State string `json:"s,omitempty"`
	// Leaving is set by Leave just before the member leaves, so that peers can tell a
	// graceful leave from a failure (memberlist's leave notification does not say).
	Leaving bool `json:"leaving,omitempty"`
}

// Member is a snapshot of one member of the cluster.
type Member struct {
	// ID is the gossip name, "<name>.<incarnation>": unique per process lifetime.
	ID string
	// Name is the node's stable name.
	Name string
	// Incarnation distinguishes successive processes of one node name.
	Incarnation uint64
	// Addr is the member's gossip address (host:port).
	Addr string
	// Meta is the metadata the member gossips. It is zero if it could not be decoded.
	Meta Meta
}

// EventType says what happened to a member.
type EventType int

// Event types.
const (
	// EventJoin means a member joined (or became known after a merge).
	EventJoin EventType = iota + 1
	// EventUpdate means a member's metadata changed.
	EventUpdate
	// EventLeave means a member left gracefully (it called Leave).
	EventLeave
	// EventFailed means the failure detector declared a member dead.
	EventFailed
)

// String returns the lowercase name of the event type.
func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventLeave:
		return "leave"
	case EventFailed:
		return "failed"
	default:
		return "unknown"
	}
}

// Event is a change of membership as seen by this member. Events about the local
// member itself are not emitted.
type Event struct {
	// Type is what happened.
	Type EventType
	// Member is the member it happened to.
	Member Member
	// At is when this member learned about it.
	At time.Time
}

// Config configures a Membership.
type Config struct {
	// Name is the node's stable name. Required; it must not contain '.' after which
	// only digits follow, since the gossip ID appends ".<incarnation>".
	Name string
	// Incarnation distinguishes this process from earlier ones of the same Name.
	// Default: the current time in nanoseconds.
	Incarnation uint64
	// Cluster is the cluster name. Gossip packets are labelled with it, so members of
	// different clusters sharing a network ignore each other. Required.
	Cluster string
	// BindAddr is the gossip listen address. Default DefaultBindAddr.
	BindAddr string
	// BindPort is the gossip port (TCP and UDP). 0 picks a free port (tests).
	BindPort int
	// AdvertiseAddr is the address peers should use; default: derived by memberlist
	// from BindAddr (or the first private address when binding to 0.0.0.0).
	AdvertiseAddr string
	// AdvertisePort is the port peers should use; default: the bound port.
	AdvertisePort int
	// Keys is the gossip keyring: each key 16, 24 or 32 bytes (AES-128/192/256).
	// Keys[0] is the primary key used to encrypt; every key is tried to decrypt, which
	// is what makes rotation possible. Required: gossip is never sent in clear text.
	Keys [][]byte
	// Meta is the initial metadata this member gossips.
	Meta Meta
	// Seeds are static gossip addresses (host:port) joined by Join and periodically
	// re-joined.
	Seeds []string
	// Discover returns further gossip addresses to (re-)join, typically the members
	// registered in etcd. It is called by the re-joiner; nil means seeds only.
	Discover func(ctx context.Context) ([]string, error)
	// RejoinInterval is how often the re-joiner runs. Default DefaultRejoinInterval.
	// A negative value disables the re-joiner.
	RejoinInterval time.Duration
	// Timing holds the gossip timers. Zero fields take LANFast values.
	Timing Timing
	// Logger receives memberlist's and this package's logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives this package's metrics. nil means do not register.
	Registerer prometheus.Registerer
}

// Membership is this node's view of the cluster.
type Membership struct {
	cfg     Config
	id      string
	addr    string // advertised gossip address, fixed at start
	log     *slog.Logger
	list    *memberlist.Memberlist
	keyring *memberlist.Keyring
	metrics *metrics

	metaMu sync.Mutex
	meta   []byte

	// peers is this member's own copy of the live peers, maintained from memberlist's
	// notifications (which run under memberlist's node lock, so copying the node there
	// is safe). memberlist.Members returns pointers into live state that gossip
	// rewrites without a lock callers can take, so it is never read directly.
	peersMu sync.Mutex
	peers   map[string]Member

	qmu    sync.Mutex
	queue  []Event
	signal chan struct{} // capacity 1: "queue is not empty"
	out    chan Event

	stop      chan struct{}
	done      sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// ID returns the gossip ID of a node name and incarnation: "<name>.<incarnation>".
func ID(name string, incarnation uint64) string {
	return name + "." + strconv.FormatUint(incarnation, 10)
}

// ParseID splits a gossip ID into the node name and incarnation.
func ParseID(id string) (name string, incarnation uint64, ok bool) {
	i := strings.LastIndexByte(id, '.')
	if i <= 0 {
		return "", 0, false
	}
	inc, err := strconv.ParseUint(id[i+1:], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return id[:i], inc, true
}

// New validates cfg, fills defaults, and starts gossiping on the bound port. The
// member is alone until Join (or the re-joiner) reaches a peer. Close (or Leave) must
// be called to stop it.
func New(cfg Config) (*Membership, error) {
	if cfg.Name == "" {
		return nil, errors.New("membership: name is required")
	}
	if cfg.Cluster == "" {
		return nil, errors.New("membership: cluster name is required")
	}
	if len(cfg.Keys) == 0 {
		return nil, errors.New("membership: at least one gossip key is required")
	}
	for i, k := range cfg.Keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return nil, fmt.Errorf("membership: key %d: %w", i, err)
		}
	}
	if cfg.Incarnation == 0 {
		cfg.Incarnation = uint64(time.Now().UnixNano())
	}
	if cfg.BindAddr == "" {
		cfg.BindAddr = DefaultBindAddr
	}
	if cfg.RejoinInterval == 0 {
		cfg.RejoinInterval = DefaultRejoinInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Seeds = slices.Clone(cfg.Seeds)
	cfg.Timing.fill()

	meta, err := encodeMeta(cfg.Meta)
	if err != nil {
		return nil, err
	}
	keyring, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
	if err != nil {
		return nil, fmt.Errorf("membership: keyring: %w", err)
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}

	m := &Membership{
		cfg:     cfg,
		id:      ID(cfg.Name, cfg.Incarnation),
		keyring: keyring,
		metrics: met,
		meta:    meta,
		peers:   make(map[string]Member),
		signal:  make(chan struct{}, 1),
		out:     make(chan Event),
		stop:    make(chan struct{}),
	}
	m.log = cfg.Logger.With("member", m.id)

	mc := memberlist.DefaultLANConfig()
	mc.Name = m.id
	mc.Label = "roomcast/" + cfg.Cluster
	mc.BindAddr = cfg.BindAddr
	mc.BindPort = cfg.BindPort
	mc.AdvertiseAddr = cfg.AdvertiseAddr
	mc.AdvertisePort = cfg.AdvertisePort
	if cfg.AdvertisePort == 0 {
		mc.AdvertisePort = cfg.BindPort
	}
	t := cfg.Timing
	mc.ProbeInterval = t.ProbeInterval
	mc.ProbeTimeout = t.ProbeTimeout
	mc.SuspicionMult = t.SuspicionMult
	mc.SuspicionMaxTimeoutMult = t.SuspicionMaxTimeoutMult
	mc.GossipInterval = t.GossipInterval
	mc.GossipNodes = t.GossipNodes
	mc.RetransmitMult = t.RetransmitMult
	mc.PushPullInterval = t.PushPullInterval
	mc.TCPTimeout = t.TCPTimeout
	// Dead members' names are never reused (incarnations), so there is nothing to
	// reclaim; gossip to the dead only long enough for them to learn and refute.
	mc.GossipToTheDeadTime = 2 * time.Second
	mc.Keyring = keyring
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	mc.Delegate = &delegate{m: m}
	mc.Events = &events{m: m}
	mc.Conflict = &conflicts{m: m}
	mc.Logger = log.New(&logWriter{log: m.log}, "", 0)

	list, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("membership: start gossip: %w", err)
	}
	m.list = list
	// LocalNode returns memberlist's live struct, which UpdateNode rewrites without a
	// lock we can take, so read it once here, before anything else can update it.
	m.addr = list.LocalNode().Address()
	m.metrics.members.Set(1)

	m.done.Add(1)
	go m.pump()
	if cfg.RejoinInterval > 0 {
		m.done.Add(1)
		go m.rejoinLoop()
	}
	return m, nil
}

// ID returns this member's gossip ID.
func (m *Membership) ID() string { return m.id }

// Addr returns this member's advertised gossip address (host:port), which peers use
// to join it.
func (m *Membership) Addr() string { return m.addr }

// Events returns the channel of membership changes seen by this member, in the order
// they happened. It is closed after Close.
func (m *Membership) Events() <-chan Event { return m.out }

// Local returns this member, with the metadata it currently gossips.
func (m *Membership) Local() Member {
	m.metaMu.Lock()
	meta := m.meta
	m.metaMu.Unlock()
	mem := Member{ID: m.id, Name: m.cfg.Name, Incarnation: m.cfg.Incarnation, Addr: m.addr}
	_ = json.Unmarshal(meta, &mem.Meta) // our own encoding; cannot fail
	return mem
}

// Members returns the members currently believed alive (including suspects and this
// member), sorted by ID.
func (m *Membership) Members() []Member {
	m.peersMu.Lock()
	out := make([]Member, 0, len(m.peers)+1)
	for _, p := range m.peers {
		out = append(out, p)
	}
	m.peersMu.Unlock()
	out = append(out, m.Local())
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// NumMembers returns how many members are believed alive, this one included.
func (m *Membership) NumMembers() int {
	m.peersMu.Lock()
	defer m.peersMu.Unlock()
	return len(m.peers) + 1
}

// IsMember reports whether a gossip ID is a member believed alive (suspects
// included), this member included. It is cheap and never blocks on gossip, so it fits
// shardmap.Config.Admitted: a node that gossip has not admitted (a wrong gossip key,
// say) is never a member.
func (m *Membership) IsMember(id string) bool {
	if id == m.id {
		return true
	}
	m.peersMu.Lock()
	defer m.peersMu.Unlock()
	_, ok := m.peers[id]
	return ok
}

// Join contacts the given gossip addresses (or the configured seeds when none are
// given) and merges state with every one that answers. It returns how many answered;
// the error is non-nil only if none did. The context is checked between addresses.
func (m *Membership) Join(ctx context.Context, addrs ...string) (int, error) {
	if len(addrs) == 0 {
		addrs = m.cfg.Seeds
	}
	if len(addrs) == 0 {
		return 0, nil
	}
	joined := 0
	var errs []error
	for _, a := range addrs {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		n, err := m.list.Join([]string{a})
		joined += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	m.metrics.joins.Add(float64(joined))
	if joined > 0 {
		return joined, nil
	}
	return 0, fmt.Errorf("membership: join: %w", errors.Join(errs...))
}

// UpdateMeta replaces the metadata this member gossips and waits (up to the context's
// deadline, at most the TCP timeout) for the change to be pushed to peers.
func (m *Membership) UpdateMeta(ctx context.Context, meta Meta) error {
	b, err := encodeMeta(meta)
	if err != nil {
		return err
	}
	m.metaMu.Lock()
	m.meta = b
	m.metaMu.Unlock()
	timeout := m.cfg.Timing.TCPTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	if err := m.list.UpdateNode(timeout); err != nil {
		return fmt.Errorf("membership: update meta: %w", err)
	}
	return nil
}

// AddKey installs an extra gossip key used for decryption. Rotation is: AddKey(new) on
// every member, then UseKey(new) on every member, then RemoveKey(old) on every member.
func (m *Membership) AddKey(key []byte) error { return m.keyring.AddKey(key) }

// UseKey makes an installed key the primary (encrypting) key.
func (m *Membership) UseKey(key []byte) error { return m.keyring.UseKey(key) }

// RemoveKey uninstalls a key. The primary key cannot be removed.
func (m *Membership) RemoveKey(key []byte) error { return m.keyring.RemoveKey(key) }

// Keys returns the installed keys, the primary key first.
func (m *Membership) Keys() [][]byte { return m.keyring.GetKeys() }

// Leave tells the cluster this member is leaving, waits for the broadcast up to the
// context's deadline, and then closes the member. Peers see EventLeave rather than
// EventFailed: Leave first gossips metadata with Leaving set (memberlist's own leave
// notification does not distinguish a leave from a death), so a peer that missed that
// update reports EventFailed, which is the safe side.
func (m *Membership) Leave(ctx context.Context) error {
	meta := m.Local().Meta
	meta.Leaving = true
	err := m.UpdateMeta(ctx, meta)
	timeout := 2 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	if lerr := m.list.Leave(timeout); err == nil {
		err = lerr
	}
	if cerr := m.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("membership: leave: %w", err)
	}
	return nil
}

// Close stops gossiping at once, without telling peers (they detect a failure, as for
// a crash), stops the background goroutines and closes the Events channel. It is
// idempotent. memberlist's Shutdown does not wait for a probe already in flight: that
// goroutine of memberlist's ends on its own within about one probe interval.
func (m *Membership) Close() error {
	m.closeOnce.Do(func() {
		m.closeErr = m.list.Shutdown()
		close(m.stop)
		m.done.Wait()
		close(m.out)
	})
	return m.closeErr
}

// enqueue hands an event to the pump. It never blocks: memberlist calls it with its
// own locks held.
func (m *Membership) enqueue(ev Event) {
	m.qmu.Lock()
	m.queue = append(m.queue, ev)
	m.qmu.Unlock()
	select {
	case m.signal <- struct{}{}:
	default:
	}
}

// pump moves queued events to the Events channel in order until Close.
func (m *Membership) pump() {
	defer m.done.Done()
	for {
		m.qmu.Lock()
		var ev Event
		have := len(m.queue) > 0
		if have {
			ev = m.queue[0]
			m.queue[0] = Event{}
			m.queue = m.queue[1:]
		}
		m.qmu.Unlock()
		if !have {
			select {
			case <-m.signal:
				continue
			case <-m.stop:
				return
			}
		}
		select {
		case m.out <- ev:
		case <-m.stop:
			return
		}
	}
}

// rejoinLoop periodically joins seeds and discovered addresses that are not alive
// members. memberlist never re-contacts members it declared dead, so without this two
// halves of a healed partition would each go on believing the other is dead.
func (m *Membership) rejoinLoop() {
	defer m.done.Done()
	t := time.NewTicker(m.cfg.RejoinInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		m.rejoin()
	}
}

func (m *Membership) rejoin() {
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.RejoinInterval)
	defer cancel()
	go func() {
		// Tie the discovery call to Close as well as to its timeout.
		select {
		case <-m.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	candidates := slices.Clone(m.cfg.Seeds)
	if m.cfg.Discover != nil {
		found, err := m.cfg.Discover(ctx)
		if err != nil {
			m.log.Debug("membership: discovery failed", "err", err)
		}
		candidates = append(candidates, found...)
	}
	alive := map[string]bool{}
	for _, p := range m.Members() {
		alive[p.Addr] = true
	}
	var targets []string
	for _, c := range candidates {
		if !alive[c] && !slices.Contains(targets, c) {
			targets = append(targets, c)
		}
	}
	if len(targets) == 0 {
		return
	}
	m.metrics.rejoins.Inc()
	n, err := m.Join(ctx, targets...)
	if err != nil {
		m.log.Debug("membership: re-join reached no peer", "targets", targets, "err", err)
		return
	}
	m.log.Debug("membership: re-joined", "targets", targets, "reached", n)
}

func encodeMeta(meta Meta) ([]byte, error) {
	b, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("membership: encode meta: %w", err)
	}
	if len(b) > metaMaxSize {
		return nil, fmt.Errorf("membership: meta is %d bytes, limit %d", len(b), metaMaxSize)
	}
	return b, nil
}

func toMember(n *memberlist.Node) Member {
	mem := Member{ID: n.Name, Addr: n.Address()}
	if name, inc, ok := ParseID(n.Name); ok {
		mem.Name, mem.Incarnation = name, inc
	} else {
		mem.Name = n.Name
	}
	if len(n.Meta) > 0 {
		_ = json.Unmarshal(n.Meta, &mem.Meta) // a peer's bad meta leaves it zero, as documented
	}
	return mem
}

// delegate is memberlist's Delegate: it only serves this member's metadata. roomcast
// sends no user messages or state through gossip.
type delegate struct{ m *Membership }

var _ memberlist.Delegate = (*delegate)(nil)

func (d *delegate) NodeMeta(limit int) []byte {
	d.m.metaMu.Lock()
	defer d.m.metaMu.Unlock()
	if len(d.m.meta) > limit {
		return nil
	}
	return bytes.Clone(d.m.meta)
}

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// events is memberlist's EventDelegate: it copies the node and hands it to the pump.
type events struct{ m *Membership }

var _ memberlist.EventDelegate = (*events)(nil)

func (e *events) NotifyJoin(n *memberlist.Node) { e.emit(EventJoin, n) }

func (e *events) NotifyLeave(n *memberlist.Node) {
	// memberlist passes the node with a stale State field, so the last metadata the
	// member gossiped tells a graceful leave from a failure.
	if toMember(n).Meta.Leaving {
		e.emit(EventLeave, n)
		return
	}
	e.emit(EventFailed, n)
}

func (e *events) NotifyUpdate(n *memberlist.Node) { e.emit(EventUpdate, n) }

func (e *events) emit(t EventType, n *memberlist.Node) {
	if n.Name == e.m.id {
		return
	}
	mem := toMember(n)
	e.m.metrics.events.WithLabelValues(t.String()).Inc()
	e.m.peersMu.Lock()
	switch t {
	case EventJoin, EventUpdate:
		e.m.peers[mem.ID] = mem
	case EventLeave, EventFailed:
		delete(e.m.peers, mem.ID)
	}
	e.m.metrics.members.Set(float64(len(e.m.peers) + 1))
	e.m.peersMu.Unlock()
	e.m.enqueue(Event{Type: t, Member: mem, At: time.Now()})
}

// conflicts is memberlist's ConflictDelegate: two processes claiming one gossip ID
// should be impossible with incarnations, so it is worth a warning.
type conflicts struct{ m *Membership }

var _ memberlist.ConflictDelegate = (*conflicts)(nil)

func (c *conflicts) NotifyConflict(existing, other *memberlist.Node) {
	c.m.log.Warn("membership: two members claim one gossip id",
		"id", existing.Name, "existing", existing.Address(), "other", other.Address())
}

// logWriter turns memberlist's "[LEVEL] memberlist: msg" lines into slog records.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{
		"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo,
		"[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError,
	} {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			line, level = strings.TrimSpace(rest), l
			break
		}
	}
	w.log.Log(context.Background(), level, line, "component", "memberlist")
	return len(p), nil
}
