// Package shardmap assigns a cluster's fixed number of shards to its live nodes and
// keeps every node's cached copy of the assignment, in etcd.
//
// One node is the leader, elected with concurrency.Election under
// /roomcast/<cluster>/shardmap/leader/ and bound to the node's registry session. The
// leader watches the registered nodes (package registry) and, whenever they change,
// computes a new assignment with Assign (balanced within ±1, minimal movement) and
// writes it to /roomcast/<cluster>/shardmap/map in a transaction that succeeds only
// while its election key still has the create revision it won with — a deposed leader
// can never overwrite its successor's map. Nothing else writes the map.
//
// Every node watches the map key and caches the decoded Map. The epoch of a shard is
// the etcd revision of the write that gave the shard its current owner: it changes
// exactly when the owner changes, and stays put for shards that did not move, so
// positions (epoch, offset) of unmoved rooms survive a rebalance. Messages carrying a
// smaller epoch than the cached one for their shard are stale.
//
// Dead nodes: NodeDead revokes the dead node's registry lease (on memberlist's verdict,
// from any node), which deletes its registration at once; the leader's watch sees that
// and moves the node's shards without waiting out the lease TTL.
//
// Draining nodes (registry.Node.Draining) get no shards while another node is live
// and not draining: the leader moves their shards away, which starts the graceful
// handover. When every node drains (the whole cluster stops), shards stay with the
// live nodes that hold them, so none is left without an owner and a node that has
// already handed its shards over gets none back.
//
// # Admission
//
// Being registered in etcd is not enough to get shards: with Config.Admitted set, the
// leader assigns shards only to registered nodes that its gossip has admitted (a node
// with the wrong gossip key registers fine but is never seen by gossip). The rules:
//
//   - The leader is always admitted: at start its own gossip view may still be empty.
//   - A registered node is admitted the first time Admitted reports it, and stays
//     admitted while it stays registered (IDs are unique per incarnation), so a gossip
//     flap never moves shards back and forth; a node gossip declares dead loses its
//     registration through NodeDead, which is what removes it.
//   - The leader asks again on Recheck (call it on every gossip join) and every
//     AdmitInterval while some registered node is not admitted yet.
//   - A new leader keeps the shards of owners it has not seen in gossip yet for
//     AdmitGrace, since its view may lag its predecessor's; after that they move.
//   - Admission protects the election too: a node whose gossip admits none of the
//     other registered nodes does not run for leader, and a leader in that state for
//     AdmitGrace resigns. Otherwise a wrong-key node could win the election and give
//     itself every shard. A node alone in the registry is never in that state.
//
// # Fencing
//
// Lost closes when the registry session ends or the registration is revoked
// (Config.Lost). From then on Serving reports false for every shard, whatever the
// cached map says: the node must stop acting as an owner at once, and its leadership
// (bound to the same lease) is gone too. Lost does not close on Close.
//
// # Concurrency contract
//
// A *ShardMap is safe for concurrent use. It owns three goroutines, started by New and
// stopped by Close: the watcher (keeps the cached map), the campaigner (runs for
// leader and, while leading, rebalances) and the loss watcher (closes Lost). Current, Serving and Recheck never block
// and never touch etcd. Updates has a single-slot, latest-value channel meant for one consumer.
package shardmap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/roomcast/roomcast/mesh/registry"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// DefaultShards is the default number of shards of a cluster. It is fixed for the life
// of a cluster: room names hash into it.
const DefaultShards = 256

// MapKey returns the etcd key of a cluster's shard map.
func MapKey(cluster string) string { return registry.Prefix(cluster) + "shardmap/map" }

// LeaderPrefix returns the etcd election prefix of a cluster's shard-map leader.
func LeaderPrefix(cluster string) string { return registry.Prefix(cluster) + "shardmap/leader/" }

// Map is one version of the shard assignment. A Map is immutable once published; do not
// modify its slices.
type Map struct {
	// Revision is the etcd revision of the write that produced this map (0: no map yet).
	Revision int64
	// Leader is the ID of the node that wrote it.
	Leader string
	// Owners holds the owner node ID of each shard ("" when unowned).
	Owners []string
	// Epochs holds each shard's epoch: the revision at which its owner was assigned.
	Epochs []int64
}

// Owner returns a shard's owner and epoch ("" and 0 when unknown).
func (m *Map) Owner(shard int) (string, int64) {
	if m == nil || shard < 0 || shard >= len(m.Owners) {
		return "", 0
	}
	return m.Owners[shard], m.Epochs[shard]
}

// Count returns how many shards each node owns.
func (m *Map) Count() map[string]int {
	out := map[string]int{}
	if m == nil {
		return out
	}
	for _, o := range m.Owners {
		if o != "" {
			out[o]++
		}
	}
	return out
}

// stored is the JSON form of a map in etcd: owners as indexes into nodes (a 256-shard
// map of 30 nodes is about 1.5 KB), and per shard the revision it was assigned at, 0
// meaning "this write".
type stored struct {
	Version int      `json:"v"`
	Leader  string   `json:"leader"`
	Nodes   []string `json:"nodes"`
	Owners  []int    `json:"owners"` // -1: unowned
	Since   []int64  `json:"since"`
}

func encode(leader string, owners []string, epochs []int64) ([]byte, error) {
	s := stored{Version: 1, Leader: leader, Owners: make([]int, len(owners)), Since: make([]int64, len(owners))}
	idx := map[string]int{}
	for i, o := range owners {
		s.Since[i] = epochs[i]
		if o == "" {
			s.Owners[i] = -1
			continue
		}
		j, ok := idx[o]
		if !ok {
			j = len(s.Nodes)
			idx[o] = j
			s.Nodes = append(s.Nodes, o)
		}
		s.Owners[i] = j
	}
	return json.Marshal(s)
}

// Decode decodes a stored map: the value of MapKey at etcd revision rev (the key's
// ModRevision), for a cluster of the given shard count. It is what every node's watcher
// does; tools and tests use it to read the map, or its history, straight from etcd.
func Decode(val []byte, rev int64, shards int) (*Map, error) { return decode(val, rev, shards) }

func decode(val []byte, rev int64, shards int) (*Map, error) {
	var s stored
	if err := json.Unmarshal(val, &s); err != nil {
		return nil, fmt.Errorf("shardmap: decode map: %w", err)
	}
	if len(s.Owners) != shards || len(s.Since) != shards {
		return nil, fmt.Errorf("shardmap: map has %d shards, want %d", len(s.Owners), shards)
	}
	m := &Map{Revision: rev, Leader: s.Leader, Owners: make([]string, shards), Epochs: make([]int64, shards)}
	for i, j := range s.Owners {
		if j >= 0 && j < len(s.Nodes) {
			m.Owners[i] = s.Nodes[j]
		}
		m.Epochs[i] = s.Since[i]
		if m.Epochs[i] == 0 {
			m.Epochs[i] = rev
		}
	}
	return m, nil
}

// Config configures a ShardMap.
type Config struct {
	// Client is the etcd client. Required; not closed by the ShardMap.
	Client *clientv3.Client
	// Session is the node's registry session; leadership is bound to it. Required.
	Session *concurrency.Session
	// Cluster is the cluster name. Required.
	Cluster string
	// Lost, when set, is closed when the node must stop serving — typically
	// registry.Registry.Lost, which also fires the moment the node's registration is
	// revoked, whereas the session itself notices only at its next keep-alive (up to a
	// third of the TTL later). The session's end always counts as lost too.
	Lost <-chan struct{}
	// ID is this node's ID (as registered). Required.
	ID string
	// Shards is the cluster's fixed shard count. Default DefaultShards.
	Shards int
	// Settle is how long the leader waits after a change of the registered nodes for
	// further changes before writing, so that simultaneous changes cost one write.
	// Default 10 ms.
	Settle time.Duration
	// Admitted, when set, reports whether gossip has admitted a node (it is a live
	// gossip member, typically membership.Membership.IsMember). The leader then
	// assigns shards only to registered nodes it admits, and a node that admits none
	// of the other registered nodes does not run for leader (see the package doc).
	// It is called from the ShardMap's own goroutine and must be safe for concurrent
	// use, quick and non-blocking. nil admits every registered node.
	Admitted func(id string) bool
	// AdmitInterval is how often the leader (or a node waiting to run for leader) asks
	// Admitted again while a registered node is not admitted, in case a Recheck was
	// missed. Default 500 ms.
	AdmitInterval time.Duration
	// AdmitGrace is how long a new leader keeps the shards of owners that Admitted
	// does not report yet, and how long a leader that admits none of the other
	// registered nodes stays leader. Default 5 s.
	AdmitGrace time.Duration
	// Logger receives the shard map's logs. Default slog.Default().
	Logger *slog.Logger
	// Registerer receives metrics. nil means do not register.
	Registerer prometheus.Registerer
}

// Stats are counters of the leader's work, for benchmarks and tests.
type Stats struct {
	// Writes is how many map transactions this node committed as leader.
	Writes int64
	// Moved is how many shard moves those writes made.
	Moved int64
	// FailedWrites is how many map transactions failed the leadership guard.
	FailedWrites int64
}

// ShardMap is a node's view of the shard assignment, and its leader role.
type ShardMap struct {
	cfg Config
	log *slog.Logger

	current atomic.Pointer[Map]
	updates chan *Map
	leading atomic.Bool
	recheck chan struct{} // capacity 1: "ask Admitted again"

	writes, moved, failed atomic.Int64
	metrics               *metrics

	lost     chan struct{} // closed when the session ends or Config.Lost closes
	lostOnce sync.Once

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// New validates cfg and starts watching the map and campaigning for leader.
func New(cfg Config) (*ShardMap, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("shardmap: etcd client is required")
	case cfg.Session == nil:
		return nil, errors.New("shardmap: session is required")
	case cfg.Cluster == "" || strings.Contains(cfg.Cluster, "/"):
		return nil, fmt.Errorf("shardmap: invalid cluster name %q", cfg.Cluster)
	case cfg.ID == "":
		return nil, errors.New("shardmap: node id is required")
	case cfg.Shards < 0:
		return nil, fmt.Errorf("shardmap: invalid shard count %d", cfg.Shards)
	}
	if cfg.Shards == 0 {
		cfg.Shards = DefaultShards
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 10 * time.Millisecond
	}
	if cfg.AdmitInterval <= 0 {
		cfg.AdmitInterval = 500 * time.Millisecond
	}
	if cfg.AdmitGrace <= 0 {
		cfg.AdmitGrace = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &ShardMap{
		cfg:     cfg,
		log:     cfg.Logger.With("node", cfg.ID),
		updates: make(chan *Map, 1),
		recheck: make(chan struct{}, 1),
		metrics: met,
		lost:    make(chan struct{}),
		ctx:     ctx,
		cancel:  cancel,
	}
	s.current.Store(&Map{})
	s.wg.Add(3)
	go s.watchLost()
	go s.watch()
	go s.campaign()
	return s, nil
}

// Current returns the cached map (a Map with Revision 0 before the first one is seen).
func (s *ShardMap) Current() *Map { return s.current.Load() }

// Updates returns a channel that receives the latest map after each change. It holds
// one map; a slow reader skips intermediate maps, never the latest.
func (s *ShardMap) Updates() <-chan *Map { return s.updates }

// Lost is closed when the node's session ends or Config.Lost closes: it must stop
// serving every shard.
func (s *ShardMap) Lost() <-chan struct{} { return s.lost }

// watchLost merges the session's end and Config.Lost into s.lost.
func (s *ShardMap) watchLost() {
	defer s.wg.Done()
	select {
	case <-s.cfg.Session.Done():
	case <-s.cfg.Lost: // nil channel when unset: never ready
	case <-s.ctx.Done():
		return
	}
	s.lostOnce.Do(func() { close(s.lost) })
}

// Serving reports whether this node may act as the owner of a shard right now, and the
// epoch to stamp on what it sends: it owns the shard in the cached map and its session
// is alive.
func (s *ShardMap) Serving(shard int) (epoch int64, ok bool) {
	select {
	case <-s.lost:
		return 0, false
	case <-s.cfg.Session.Done():
		return 0, false
	default:
	}
	owner, epoch := s.Current().Owner(shard)
	if owner != s.cfg.ID {
		return 0, false
	}
	return epoch, true
}

// Recheck asks the leader (or a node waiting to run for leader) to consult
// Config.Admitted again, typically because gossip saw a member join. It never blocks
// and is cheap: call it on every gossip join or update. Without Config.Admitted it
// does nothing.
func (s *ShardMap) Recheck() {
	select {
	case s.recheck <- struct{}{}:
	default:
	}
}

// Leader reports whether this node is currently the leader.
func (s *ShardMap) Leader() bool { return s.leading.Load() }

// Stats returns this node's leader counters.
func (s *ShardMap) Stats() Stats {
	return Stats{Writes: s.writes.Load(), Moved: s.moved.Load(), FailedWrites: s.failed.Load()}
}

// NodeDead acts on a failure detector's verdict that a node is dead: it revokes the
// node's registry lease, so the leader moves its shards at once instead of after the
// TTL. Any node may call it; calling it twice is harmless.
func (s *ShardMap) NodeDead(ctx context.Context, id string) error {
	return registry.Revoke(ctx, s.cfg.Client, s.cfg.Cluster, id)
}

// Close stops the watcher and the campaigner; a leader resigns so that a successor
// takes over at once. It is idempotent. It does not close the session.
func (s *ShardMap) Close() error {
	s.once.Do(func() {
		s.cancel()
		s.wg.Wait()
	})
	return nil
}

func (s *ShardMap) publish(m *Map) {
	old := s.current.Load()
	if m.Revision <= old.Revision {
		return
	}
	s.current.Store(m)
	s.metrics.revision.Set(float64(m.Revision))
	for {
		select {
		case s.updates <- m:
			return
		default:
		}
		select {
		case <-s.updates:
		default:
		}
	}
}

// watch keeps the cached map, re-reading it whenever the watch breaks.
func (s *ShardMap) watch() {
	defer s.wg.Done()
	key := MapKey(s.cfg.Cluster)
	for s.ctx.Err() == nil {
		resp, err := s.cfg.Client.Get(s.ctx, key)
		if err != nil {
			pause(s.ctx, 100*time.Millisecond)
			continue
		}
		if len(resp.Kvs) == 1 {
			s.apply(resp.Kvs[0])
		}
		wctx, cancel := context.WithCancel(s.ctx)
		for wr := range s.cfg.Client.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1)) {
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypePut {
					s.apply(ev.Kv)
				}
			}
		}
		cancel()
	}
}

func (s *ShardMap) apply(kv interface {
	GetValue() []byte
	GetModRevision() int64
}) {
	m, err := decode(kv.GetValue(), kv.GetModRevision(), s.cfg.Shards)
	if err != nil {
		s.log.Error("shardmap: ignoring undecodable map", "err", err)
		return
	}
	s.publish(m)
}

// campaign runs for leader until Close or the session ends, and leads when elected.
func (s *ShardMap) campaign() {
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	go func() {
		// Bound to the session: a lost session ends any campaign or leadership.
		select {
		case <-s.cfg.Session.Done():
			cancel()
		case <-s.cfg.Lost:
			cancel()
		case <-ctx.Done():
		}
	}()
	for ctx.Err() == nil {
		if err := s.awaitAdmission(ctx); err != nil {
			continue // ctx ended
		}
		el := concurrency.NewElection(s.cfg.Session, LeaderPrefix(s.cfg.Cluster))
		if err := el.Campaign(ctx, s.cfg.ID); err != nil {
			if ctx.Err() == nil {
				s.log.Warn("shardmap: campaign failed", "err", err)
				pause(ctx, 100*time.Millisecond)
			}
			continue
		}
		s.leading.Store(true)
		s.metrics.leader.Set(1)
		s.log.Info("shardmap: elected leader")
		err := s.lead(ctx, el)
		s.leading.Store(false)
		s.metrics.leader.Set(0)
		if ctx.Err() != nil {
			// Closing (not a lost session): hand leadership over at once.
			select {
			case <-s.cfg.Session.Done():
			case <-s.cfg.Lost:
			default:
				rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = el.Resign(rctx)
				rcancel()
			}
			return
		}
		if errors.Is(err, errIsolated) {
			// Step down so that a node that sees the cluster leads; awaitAdmission
			// keeps this one out of the election until its gossip sees a peer.
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			_ = el.Resign(rctx)
			rcancel()
		}
		s.log.Warn("shardmap: leadership ended", "err", err)
	}
}

// errDeposed means a map write failed its leadership guard.
var errDeposed = errors.New("shardmap: no longer leader")

// errIsolated means the leader admitted none of the other registered nodes for
// AdmitGrace: its gossip is cut off from the cluster (a wrong gossip key, say).
var errIsolated = errors.New("shardmap: gossip admits none of the registered nodes")

// lead rebalances on every change of the registered and admitted nodes until ctx
// ends, a write fails its leadership guard, or the leader finds itself isolated.
func (s *ShardMap) lead(ctx context.Context, el *concurrency.Election) error {
	guard := clientv3.Compare(clientv3.CreateRevision(el.Key()), "=", el.Rev())
	w := s.watchNodes(ctx)
	defer w.close()
	adm := newAdmission(s.cfg.ID, s.cfg.Admitted, s.Current(), time.Now().Add(s.cfg.AdmitGrace))
	var tick <-chan time.Time
	if s.cfg.Admitted != nil {
		t := time.NewTicker(s.cfg.AdmitInterval)
		defer t.Stop()
		tick = t.C
	}
	var (
		last          string // signature of the last rebalanced node set
		wrote         bool
		isolatedSince time.Time
	)
	for {
		if err := w.wait(ctx, tick); err != nil {
			return err
		}
		// Let simultaneous changes settle into one write.
		if err := w.settle(ctx, s.cfg.Settle); err != nil {
			return err
		}
		if !w.listed {
			continue
		}
		now := time.Now()
		eligible, isolated := adm.filter(w.live, now)
		switch {
		case !isolated:
			isolatedSince = time.Time{}
		case isolatedSince.IsZero():
			isolatedSince = now
		case now.Sub(isolatedSince) >= s.cfg.AdmitGrace:
			return errIsolated
		}
		sig := signature(eligible)
		if wrote && sig == last {
			continue // nothing that decides the assignment changed
		}
		if err := s.rebalance(ctx, guard, eligible); err != nil {
			return err
		}
		last, wrote = sig, true
	}
}

// awaitAdmission returns once this node may run for leader: always without
// Config.Admitted, otherwise once it is alone in the registry or its gossip admits at
// least one other registered node. The error is ctx's.
func (s *ShardMap) awaitAdmission(ctx context.Context) error {
	if s.cfg.Admitted == nil {
		return nil
	}
	w := s.watchNodes(ctx)
	defer w.close()
	tick := time.NewTicker(s.cfg.AdmitInterval)
	defer tick.Stop()
	logged := false
	for {
		if err := w.wait(ctx, tick.C); err != nil {
			return err
		}
		if !w.listed {
			continue
		}
		if seesCluster(s.cfg.ID, w.live, s.cfg.Admitted) {
			return nil
		}
		if !logged {
			s.log.Warn("shardmap: gossip admits none of the registered nodes; not running for leader", "registered", len(w.live))
			logged = true
		}
	}
}

// nodeWatch follows the registered nodes for one loop, the leader's or the
// candidate's, and is used by that loop's goroutine only.
type nodeWatch struct {
	nodes   <-chan []registry.Node
	cancel  context.CancelFunc
	recheck <-chan struct{}
	live    []registry.Node // the latest list of registered nodes
	listed  bool            // whether a list has come yet
}

func (s *ShardMap) watchNodes(ctx context.Context) *nodeWatch {
	wctx, cancel := context.WithCancel(ctx)
	return &nodeWatch{nodes: registry.Watch(wctx, s.cfg.Client, s.cfg.Cluster), cancel: cancel, recheck: s.recheck}
}

// close ends the watch and waits for its goroutine: a watch must not outlive its
// loop (the campaigner may run again).
func (w *nodeWatch) close() {
	w.cancel()
	for range w.nodes {
	}
}

// wait returns when something may have changed the loop's verdict: a new node
// list, a Recheck, or a tick (a nil tick never fires). It fails once ctx ends or
// the watch closes.
func (w *nodeWatch) wait(ctx context.Context, tick <-chan time.Time) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case l, ok := <-w.nodes:
		if !ok {
			return w.ended(ctx)
		}
		w.live, w.listed = l, true
	case <-w.recheck:
	case <-tick:
	}
	return nil
}

// ended is the error of a closed watch: ctx's (the watch closes only once its
// context ends), never nil, so a loop cannot spin on a closed channel.
func (w *nodeWatch) ended(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("shardmap: node watch ended")
}

// settle takes in node lists and Rechecks for d, so that simultaneous changes
// make one decision. It fails once the watch closes.
func (w *nodeWatch) settle(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case l, ok := <-w.nodes:
			if !ok {
				return w.ended(ctx)
			}
			w.live, w.listed = l, true
		case <-w.recheck:
		case <-t.C:
			return nil
		}
	}
}

// seesCluster reports whether a node is alone in the registry or admits another
// registered node.
func seesCluster(self string, live []registry.Node, admitted func(string) bool) bool {
	others := 0
	for _, n := range live {
		if n.ID == self {
			continue
		}
		others++
		if admitted(n.ID) {
			return true
		}
	}
	return others == 0
}

// admission is a leader's record of the registered nodes gossip has admitted. It is
// used by the leader's goroutine only.
type admission struct {
	self     string
	admitted func(string) bool // nil: admit everyone
	seen     map[string]bool   // admitted once, while registered
	inherit  map[string]bool   // owners in the predecessor's map, kept until graceEnd
	graceEnd time.Time
}

func newAdmission(self string, admitted func(string) bool, prev *Map, graceEnd time.Time) *admission {
	a := &admission{self: self, admitted: admitted, seen: map[string]bool{}, inherit: map[string]bool{}, graceEnd: graceEnd}
	for o := range prev.Count() {
		a.inherit[o] = true
	}
	return a
}

// filter returns the registered nodes that may own shards, and whether the leader is
// isolated: other nodes are registered but none of them has been admitted.
func (a *admission) filter(live []registry.Node, now time.Time) ([]registry.Node, bool) {
	if a.admitted == nil {
		return live, false
	}
	registered := make(map[string]bool, len(live))
	out := make([]registry.Node, 0, len(live))
	others, admittedOthers := 0, 0
	for _, n := range live {
		registered[n.ID] = true
		if n.ID != a.self {
			others++
		}
		if n.ID == a.self || a.seen[n.ID] || a.admitted(n.ID) {
			a.seen[n.ID] = true
			if n.ID != a.self {
				admittedOthers++
			}
			out = append(out, n)
			continue
		}
		if a.inherit[n.ID] && now.Before(a.graceEnd) {
			out = append(out, n) // the predecessor admitted it; give our gossip time
		}
	}
	for id := range a.seen {
		if !registered[id] {
			delete(a.seen, id) // deregistered: its ID never comes back
		}
	}
	return out, others > 0 && admittedOthers == 0
}

// signature identifies what decides an assignment: the eligible nodes and whether
// each drains.
func signature(nodes []registry.Node) string {
	var b strings.Builder
	for _, n := range nodes {
		b.WriteString(n.ID)
		if n.Draining {
			b.WriteString("!")
		}
		b.WriteByte(0)
	}
	return b.String()
}

// rebalance writes a new map for the live nodes if it differs from the stored one.
func (s *ShardMap) rebalance(ctx context.Context, guard clientv3.Cmp, live []registry.Node) error {
	key := MapKey(s.cfg.Cluster)
	// Read the stored map rather than the cache: the cache may lag our previous write.
	resp, err := s.cfg.Client.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("shardmap: read map: %w", err)
	}
	prev := &Map{Owners: make([]string, s.cfg.Shards), Epochs: make([]int64, s.cfg.Shards)}
	modRev := int64(0)
	if len(resp.Kvs) == 1 {
		modRev = resp.Kvs[0].ModRevision
		if m, err := decode(resp.Kvs[0].Value, modRev, s.cfg.Shards); err == nil {
			prev = m
		}
	}
	ids := make([]string, 0, len(live))
	for _, n := range live {
		if !n.Draining {
			ids = append(ids, n.ID)
		}
	}
	if len(ids) == 0 {
		// Every node is draining (the whole cluster stops): keep serving where we are
		// rather than leave every shard without an owner, and move nothing that need
		// not move — a node that has already handed its shards over gets none back.
		held := prev.Count()
		for _, n := range live {
			if held[n.ID] > 0 {
				ids = append(ids, n.ID)
			}
		}
		if len(ids) == 0 {
			for _, n := range live {
				ids = append(ids, n.ID)
			}
		}
	}
	owners := Assign(prev.Owners, ids, s.cfg.Shards)
	moved := Moved(prev.Owners, owners)
	if moved == 0 && modRev != 0 {
		return nil
	}
	epochs := make([]int64, s.cfg.Shards)
	for i := range owners {
		if owners[i] == prev.Owners[i] && modRev != 0 {
			epochs[i] = prev.Epochs[i]
		} // else 0: assigned by this write; readers resolve it to its revision
	}
	val, err := encode(s.cfg.ID, owners, epochs)
	if err != nil {
		return err
	}
	txn, err := s.cfg.Client.Txn(ctx).
		If(guard, clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpPut(key, string(val))).
		Commit()
	if err != nil {
		return fmt.Errorf("shardmap: write map: %w", err)
	}
	if !txn.Succeeded {
		// Either deposed, or the map changed under us (a previous leader's late write
		// is impossible past the guard, so only the guard can fail for long); recheck.
		s.failed.Add(1)
		g, err := s.cfg.Client.Txn(ctx).If(guard).Commit()
		if err != nil {
			return fmt.Errorf("shardmap: check leadership: %w", err)
		}
		if !g.Succeeded {
			return errDeposed
		}
		return s.rebalance(ctx, guard, live)
	}
	s.writes.Add(1)
	s.moved.Add(int64(moved))
	s.metrics.writes.Inc()
	s.metrics.moved.Add(float64(moved))
	s.log.Info("shardmap: rebalanced", "nodes", len(ids), "moved", moved, "revision", txn.Header.Revision)
	return nil
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// sortedOwners returns the distinct owners of a map, sorted; used in tests and logs.
func sortedOwners(m *Map) []string {
	var out []string
	for o := range m.Count() {
		out = append(out, o)
	}
	slices.Sort(out)
	return out
}
