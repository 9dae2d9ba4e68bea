package scale

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gometrics "github.com/hashicorp/go-metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/roomcast/roomcast/internal/etcdtest"
	"github.com/roomcast/roomcast/mesh/registry"
	"github.com/roomcast/roomcast/mesh/shardmap"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// gossipBytes is a go-metrics sink that sums the bytes memberlist sends (UDP packets
// and TCP push-pull/join streams), across every member in the process. memberlist
// reports these only through go-metrics' global sink.
type gossipBytes struct {
	udp, tcp atomic.Int64
}

func (g *gossipBytes) add(key []string, val float32) {
	switch strings.Join(key, ".") {
	case "memberlist.udp.sent":
		g.udp.Add(int64(val))
	case "memberlist.tcp.sent":
		g.tcp.Add(int64(val))
	}
}

func (g *gossipBytes) SetGauge([]string, float32)                               {}
func (g *gossipBytes) SetGaugeWithLabels([]string, float32, []gometrics.Label)  {}
func (g *gossipBytes) EmitKey([]string, float32)                                {}
func (g *gossipBytes) IncrCounter(key []string, val float32)                    { g.add(key, val) }
func (g *gossipBytes) AddSample([]string, float32)                              {}
func (g *gossipBytes) AddSampleWithLabels([]string, float32, []gometrics.Label) {}
func (g *gossipBytes) IncrCounterWithLabels(k []string, v float32, _ []gometrics.Label) {
	g.add(k, v)
}

// etcdCounters flattens the embedded etcd's Prometheus metrics (registered by etcd on
// the default registry) into "name{labels}" -> value.
func etcdCounters(t testing.TB) map[string]float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatalf("gather etcd metrics: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, "etcd_") && !strings.HasPrefix(name, "grpc_server_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				if l.GetName() == "grpc_type" || l.GetName() == "grpc_service" {
					continue
				}
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			key := name + "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.Counter != nil:
				out[key] += m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] += m.Gauge.GetValue()
			case m.Histogram != nil:
				out[name+"_sum{}"] += m.Histogram.GetSampleSum()
				out[name+"_count{}"] += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

// keyLog records every write under the cluster's etcd prefix, by kind.
type keyLog struct {
	mu     sync.Mutex
	events []keyEvent
}

type keyEvent struct {
	at   time.Time // when the watch delivered it
	key  string
	rev  int64
	kind string // "node put", "node delete", "election put", "election delete", "map put", ...
}

func (k *keyLog) run(ctx context.Context, c *clientv3.Client) {
	prefix := registry.Prefix(cluster)
	for wr := range c.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(1)) {
		for _, ev := range wr.Events {
			key := strings.TrimPrefix(string(ev.Kv.Key), prefix)
			kind := "other"
			switch {
			case strings.HasPrefix(key, "nodes/"):
				kind = "registry"
			case strings.HasPrefix(key, "shardmap/leader/"):
				kind = "election"
			case key == "shardmap/map":
				kind = "map"
			}
			op := "put"
			if ev.Type == clientv3.EventTypeDelete {
				op = "delete"
			}
			k.mu.Lock()
			k.events = append(k.events, keyEvent{at: time.Now(), key: key, rev: ev.Kv.ModRevision, kind: kind + " " + op})
			k.mu.Unlock()
		}
	}
}

// first returns when the watch delivered the first event after revision from whose
// key and kind match.
func (k *keyLog) first(from int64, kind, key string) (time.Time, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, e := range k.events {
		if e.rev > from && e.kind == kind && (key == "" || e.key == key) {
			return e.at, true
		}
	}
	return time.Time{}, false
}

// count returns how many events of a kind the watch delivered in revisions (from, to].
func (k *keyLog) count(from, to int64, kind string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, e := range k.events {
		if e.rev > from && e.rev <= to && e.kind == kind {
			n++
		}
	}
	return n
}

// between summarises the writes in revisions (from, to]: key events by kind, and the
// number of distinct revisions (etcd transactions that wrote something).
func (k *keyLog) between(from, to int64) (string, int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	counts := map[string]int{}
	revs := map[int64]bool{}
	for _, e := range k.events {
		if e.rev > from && e.rev <= to {
			counts[e.kind]++
			revs[e.rev] = true
		}
	}
	var parts []string
	for kind, n := range counts {
		parts = append(parts, fmt.Sprintf("%s %d", kind, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", "), len(revs)
}

// fleet is the running nodes of the benchmark.
type fleet struct {
	t     *testing.T
	srv   *etcdtest.Server
	nodes []*simNode
}

func (f *fleet) without(victim *simNode) *fleet {
	return &fleet{t: f.t, srv: f.srv, nodes: slices.DeleteFunc(slices.Clone(f.nodes), func(n *simNode) bool { return n == victim })}
}

// allSeen: every node has seen every other node join at least once. (Under heavy
// load, false suspicions make some member briefly missing from some view most of
// the time, so "every view lists everyone at one instant" may never be observed.)
func (f *fleet) allSeen() bool {
	for _, n := range f.nodes {
		for _, o := range f.nodes {
			if o == n {
				continue
			}
			if _, ok := n.joined(o.id); !ok {
				return false
			}
		}
	}
	return true
}

// mapConverged: every node caches the same map, owned by exactly the fleet.
func (f *fleet) mapConverged() bool {
	first := f.nodes[0].sm.Current()
	counts := first.Count()
	if len(counts) != len(f.nodes) {
		return false
	}
	for _, n := range f.nodes {
		if counts[n.id] == 0 {
			return false
		}
	}
	for _, n := range f.nodes[1:] {
		if n.sm.Current().Revision != first.Revision {
			return false
		}
	}
	return true
}

// describe says what the nodes see, for failure messages.
func (f *fleet) describe() string {
	regs, _, err := registry.List(ctxFor(f.t, 5*time.Second), f.srv.Client(), cluster)
	revs := map[int64]int{}
	leaders := 0
	for _, n := range f.nodes {
		revs[n.sm.Current().Revision]++
		if n.sm.Leader() {
			leaders++
		}
	}
	m := f.nodes[0].sm.Current()
	e := etcdCounters(f.t)
	var fenced int
	for _, n := range f.nodes {
		select {
		case <-n.reg.Lost():
			fenced++
		default:
		}
	}
	return fmt.Sprintf("%d nodes, %d registered (err %v), %d fenced, %d leaders, cached map revisions %v, map owners %d written by %s; etcd leases expired %g, revoked %g",
		len(f.nodes), len(regs), err, fenced, leaders, revs, len(m.Count()), m.Leader,
		e["etcd_debugging_server_lease_expired_total{}"], e["grpc_server_handled_total{grpc_code=OK,grpc_method=LeaseRevoke}"])
}

func (f *fleet) stats() shardmap.Stats {
	var s shardmap.Stats
	for _, n := range f.nodes {
		st := n.sm.Stats()
		s.Writes += st.Writes
		s.Moved += st.Moved
		s.FailedWrites += st.FailedWrites
	}
	return s
}

func (f *fleet) nodeDeadCalls() int64 {
	var c int64
	for _, n := range f.nodes {
		c += n.nodeDead.Load()
	}
	return c
}

func (f *fleet) leader() *simNode {
	for _, n := range f.nodes {
		if n.sm.Leader() {
			return n
		}
	}
	return nil
}

func (f *fleet) revision() int64 {
	resp, err := f.srv.Client().Get(ctxFor(f.t, 5*time.Second), "rev")
	if err != nil {
		f.t.Fatal(err)
	}
	return resp.Header.Revision
}

// snapshot is the counters before a membership change.
type snapshot struct {
	at    time.Time
	stats shardmap.Stats
	rev   int64
	dead  int64
	etcd  map[string]float64
}

func (f *fleet) snap() snapshot {
	return snapshot{stats: f.stats(), rev: f.revision(), dead: f.nodeDeadCalls(), etcd: etcdCounters(f.t), at: time.Now()}
}

// etcdDelta formats the etcd request counters that changed since s.
func etcdDelta(t testing.TB, before, after map[string]float64) string {
	t.Helper()
	var parts []string
	for k, v := range after {
		d := v - before[k]
		if d == 0 || math.IsNaN(d) {
			continue
		}
		switch {
		case strings.HasPrefix(k, "grpc_server_handled_total"),
			strings.HasPrefix(k, "grpc_server_msg_received_total"),
			strings.HasPrefix(k, "etcd_server_proposals_committed_total"),
			strings.HasPrefix(k, "etcd_mvcc_put_total"),
			strings.HasPrefix(k, "etcd_mvcc_delete_total"),
			strings.HasPrefix(k, "etcd_mvcc_txn_total"),
			strings.HasPrefix(k, "etcd_mvcc_range_total"):
			parts = append(parts, fmt.Sprintf("%s +%g", k, d))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, "\n\t")
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestScale runs N nodes (default 30) with real gossip and one real etcd and reports
// membership convergence, shard movement, rebalance time and etcd load for a join, a
// member crash and a leader crash, and the steady gossip and etcd load. See doc.go.
func TestScale(t *testing.T) {
	if os.Getenv("ROOMCAST_SCALE") == "" {
		t.Skip("set ROOMCAST_SCALE=1 to run the many-node benchmark")
	}
	if raceEnabled {
		t.Skip("timing measurement; meaningless under the race detector")
	}
	n := envInt("ROOMCAST_SCALE_NODES", 30)
	const bound = 60 * time.Second

	sink := &gossipBytes{}
	mcfg := gometrics.DefaultConfig("")
	mcfg.EnableHostname, mcfg.EnableRuntimeMetrics, mcfg.EnableServiceLabel = false, false, false
	if _, err := gometrics.NewGlobal(mcfg, sink); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = gometrics.NewGlobal(mcfg, &gometrics.BlackholeSink{}) })

	srv := etcdtest.Start(t)
	var keys keyLog
	wctx, wcancel := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() { defer close(watchDone); keys.run(wctx, srv.Client()) }()
	t.Cleanup(func() { wcancel(); <-watchDone })

	dir := newDirectory()
	o := options{shards: shardmap.DefaultShards, ttl: envInt("ROOMCAST_SCALE_TTL", registry.DefaultTTL), keys: [][]byte{goodKey}, dir: dir}
	f := &fleet{t: t, srv: srv}
	start := time.Now()
	for i := range n {
		f.nodes = append(f.nodes, startNode(t, srv, fmt.Sprintf("n%02d", i), o))
	}
	started := time.Since(start)
	eventually(t, "the map to converge", bound, f.mapConverged, f.describe)
	eventually(t, "every node to have seen every other join", bound, f.allSeen)
	t.Logf("%d nodes started in %v; gossip and map converged %v after the first start", n, started, time.Since(start))
	load, _ := os.ReadFile("/proc/loadavg")
	t.Logf("%d CPUs, shards=%d, lease TTL=%ds, timers LANFast, load average %s", runtime.NumCPU(), o.shards, o.ttl, strings.TrimSpace(string(load)))

	// Steady state: gossip bytes and etcd requests per second with nothing changing.
	const window = 10 * time.Second
	u0, t0, e0, fv0 := sink.udp.Load(), sink.tcp.Load(), etcdCounters(t), dir.falseVerdicts.Load()
	w0 := time.Now()
	time.Sleep(window) // the measurement window itself, not synchronisation
	el := time.Since(w0).Seconds()
	u1, t1, e1 := sink.udp.Load(), sink.tcp.Load(), etcdCounters(t)
	t.Logf("steady state over %.1fs, %d nodes: gossip sent per node %.0f B/s UDP + %.0f B/s TCP (push-pull); whole cluster %.0f B/s",
		el, n, float64(u1-u0)/el/float64(n), float64(t1-t0)/el/float64(n), float64(u1-u0+t1-t0)/el)
	t.Logf("steady state etcd requests over %.1fs:\n\t%s", el, etcdDelta(t, e0, e1))
	t.Logf("steady state: %d false failure verdicts (running nodes reported failed) in %.1fs", dir.falseVerdicts.Load()-fv0, el)

	report := func(what string, s snapshot, f *fleet) {
		// The leader counts a write after its transaction returns, which can be after
		// the watchers have seen the map: wait for the counters to catch up.
		eventually(t, "the leader's counters", bound, func() bool {
			return f.stats().Writes-s.stats.Writes >= int64(keys.count(s.rev, f.revision(), "map put"))
		})
		after := f.snap()
		summary, revs := keys.between(s.rev, after.rev)
		m := f.nodes[0].sm.Current()
		t.Logf("%s: %d shards moved in %d map writes (%d failed guards; the map is now written by %s, leader %v); %d etcd revisions: %s; NodeDead calls %d",
			what, after.stats.Moved-s.stats.Moved, after.stats.Writes-s.stats.Writes,
			after.stats.FailedWrites-s.stats.FailedWrites, m.Leader, f.leader() != nil, revs, summary, after.dead-s.dead)
		t.Logf("%s: etcd requests:\n\t%s", what, etcdDelta(t, s.etcd, after.etcd))
	}

	// A join.
	s := f.snap()
	joiner := startNode(t, srv, fmt.Sprintf("n%02d", n), o)
	f.nodes = append(f.nodes, joiner)
	eventually(t, "every node to see the joiner", bound, func() bool {
		for _, n := range f.nodes[:len(f.nodes)-1] {
			if _, ok := n.joined(joiner.id); !ok {
				return false
			}
		}
		return true
	})
	var lastJoin time.Duration
	for _, n := range f.nodes[:len(f.nodes)-1] {
		at, _ := n.joined(joiner.id)
		lastJoin = max(lastJoin, at.Sub(joiner.gossipStart))
	}
	eventually(t, "the map to include the joiner", bound, f.mapConverged, f.describe)
	dm := time.Since(joiner.gossipStart)
	t.Logf("join of node %d (registered, then gossip started): every node saw it join %v after its gossip started; every node's map gives the joiner its %d shards %v after its gossip started (observed; poll every 2 ms)",
		n+1, lastJoin, joiner.owns(joiner.id), dm)
	if written, ok := keys.first(s.rev, "map put", ""); ok {
		t.Logf("join: breakdown: new map written (seen by a watcher) +%v after its gossip started", written.Sub(joiner.gossipStart))
	}
	if resp, err := srv.Client().Get(ctxFor(t, 5*time.Second), shardmap.MapKey(cluster)); err == nil && len(resp.Kvs) == 1 {
		t.Logf("the stored map of %d shards and %d nodes is %d bytes", o.shards, len(f.nodes), len(resp.Kvs[0].Value))
	}
	report("join", s, f)

	crash := func(what string, victim *simNode) {
		rest := f.without(victim)
		s := rest.snap()
		victim.kill()
		killed := time.Now()
		dg := eventually(t, "every survivor to mark the victim failed", bound, func() bool {
			for _, n := range rest.nodes {
				// A survivor that had dropped the victim on a false verdict just before
				// the kill gets no new failure event; it counts as knowing.
				if at, ok := n.failed(victim.id); (!ok || at.Before(killed)) && n.ml.IsMember(victim.id) {
					return false
				}
			}
			return true
		})
		first, last := time.Duration(math.MaxInt64), time.Duration(0)
		for _, n := range rest.nodes {
			if at, ok := n.failed(victim.id); ok && !at.Before(killed) {
				first, last = min(first, at.Sub(killed)), max(last, at.Sub(killed))
			}
		}
		dm := eventually(t, "every survivor's map to drop the victim", bound, rest.mapConverged, rest.describe) + dg
		t.Logf("%s: first survivor marked it failed after %v, every survivor after %v (observed %v); every survivor's map moved its shards after %v (%v after the first verdict)",
			what, first, last, dg, dm, dm-first)
		revoked, ok1 := keys.first(s.rev, "registry delete", "nodes/"+victim.id)
		written, ok2 := keys.first(s.rev, "map put", "")
		if ok1 && ok2 {
			t.Logf("%s: breakdown from the kill: registration revoked (seen by a watcher) +%v, new map written (seen by a watcher) +%v",
				what, revoked.Sub(killed), written.Sub(killed))
		}
		report(what, s, rest)
		f.nodes = rest.nodes
	}
	victim := f.nodes[len(f.nodes)/2]
	if victim.sm.Leader() {
		victim = f.nodes[len(f.nodes)/2+1]
	}
	crash("crash of a member", victim)
	crash("crash of the leader", f.leader())
	if e := etcdCounters(t); e["etcd_disk_wal_fsync_duration_seconds_count{}"] > 0 {
		t.Logf("etcd WAL fsync over the run: %g fsyncs, mean %.1f ms",
			e["etcd_disk_wal_fsync_duration_seconds_count{}"],
			1000*e["etcd_disk_wal_fsync_duration_seconds_sum{}"]/e["etcd_disk_wal_fsync_duration_seconds_count{}"])
	}
	t.Logf("gossip bytes sent in total during the run: %d UDP, %d TCP; false failure verdicts (a running node reported failed, ignored as the link check would): %d",
		sink.udp.Load(), sink.tcp.Load(), dir.falseVerdicts.Load())
}
