package mesh

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/roomcast/roomcast/fabric"
)

// memberlist's Shutdown does not wait for a probe in flight (see package membership).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}

// fakeClock is an injectable Config.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type membership struct {
	room   string
	user   string
	conn   string
	joined bool
}

type seqEntry struct {
	room   string
	offset uint64 // a delivery
	member string // a membership push
}

type sent struct {
	conn string
	data string
}

// fakeEdge records every call. Its connections are those added with addConn;
// JoinConn and LeaveConn run the ordinary mesh flow, like the node does.
type fakeEdge struct {
	m *Mesh

	mu         sync.Mutex
	delivered  map[string][]uint64 // room -> offsets in Deliver order
	msgs       []*fabric.Message
	membership []membership
	seq        []seqEntry // deliveries and membership pushes of every room, in call order
	sent       []sent
	kicked     []string
	conns      map[string]fabric.ClientInfo
}

func newFakeEdge() *fakeEdge {
	return &fakeEdge{delivered: map[string][]uint64{}, conns: map[string]fabric.ClientInfo{}}
}

func (e *fakeEdge) Deliver(msg *fabric.Message) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.delivered[msg.Room] = append(e.delivered[msg.Room], msg.Pos.Offset)
	e.seq = append(e.seq, seqEntry{room: msg.Room, offset: msg.Pos.Offset})
	e.msgs = append(e.msgs, msg)
}

func (e *fakeEdge) DeliverMembership(room string, ci fabric.ClientInfo, joined bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.membership = append(e.membership, membership{room, ci.User, ci.Conn, joined})
	e.seq = append(e.seq, seqEntry{room: room, member: ci.User})
}

func (e *fakeEdge) conn(conn string) (fabric.ClientInfo, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ci, ok := e.conns[conn]
	return ci, ok
}

func (e *fakeEdge) SendToConn(conn string, p fabric.Payload) error {
	if _, ok := e.conn(conn); !ok {
		return fabric.ErrNotFound
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.sent = append(e.sent, sent{conn, string(p.Data)})
	return nil
}

func (e *fakeEdge) JoinConn(ctx context.Context, conn, room string) error {
	ci, ok := e.conn(conn)
	if !ok {
		return fabric.ErrNotFound
	}
	_, err := e.m.Join(ctx, room, ci, nil)
	return err
}

func (e *fakeEdge) LeaveConn(ctx context.Context, conn, room string) error {
	ci, ok := e.conn(conn)
	if !ok {
		return fabric.ErrNotFound
	}
	return e.m.Leave(ctx, room, ci)
}

func (e *fakeEdge) KickConn(conn string, k fabric.Kick) error {
	if _, ok := e.conn(conn); !ok {
		return fabric.ErrNotFound
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.kicked = append(e.kicked, conn)
	return nil
}

func (e *fakeEdge) Stats() (int, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.conns), len(e.delivered)
}

func (e *fakeEdge) offsets(room string) []uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]uint64(nil), e.delivered[room]...)
}

func (e *fakeEdge) memberships() []membership {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]membership(nil), e.membership...)
}

func (e *fakeEdge) sends() []sent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]sent(nil), e.sent...)
}

func (e *fakeEdge) kicks() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.kicked...)
}

const testNode = "n1"

var testNamespaces = []fabric.Namespace{
	{Name: "chat", Presence: true, JoinLeave: true, HistorySize: 5, HistoryTTL: time.Minute, IdempotencyWindow: time.Minute},
	{Name: "plain"},
	{Name: "hist", HistorySize: 3},
	{Name: "small", Presence: true, MaxMembers: 2},
	{Name: "log", Presence: true, HistorySize: 1000, HistoryTTL: time.Hour, IdempotencyWindow: time.Minute},
}

type testEnv struct {
	m     *Mesh
	edge  *fakeEdge
	clock *fakeClock
	reg   *prometheus.Registry
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	ns, err := fabric.NewNamespaces(testNamespaces)
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
	reg := prometheus.NewRegistry()
	m, err := New(Config{
		Node:          testNode,
		Namespaces:    ns,
		Shards:        8,
		Version:       "test",
		Logger:        slog.New(slog.DiscardHandler),
		SweepInterval: time.Hour, // tests call sweep themselves
		Registerer:    reg,
		Now:           clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	edge := newFakeEdge()
	edge.m = m
	m.Attach(edge)
	return &testEnv{m: m, edge: edge, clock: clock, reg: reg}
}

// connect makes a connection known to the fake edge and the user index.
func (env *testEnv) connect(t *testing.T, user string, seq uint64) fabric.ClientInfo {
	t.Helper()
	ci := fabric.ClientInfo{User: user, Conn: fabric.ConnID(testNode, seq), Info: []byte(`{"n":"` + user + `"}`)}
	if err := env.m.Connect(context.Background(), ci, 0); err != nil {
		t.Fatal(err)
	}
	env.edge.mu.Lock()
	env.edge.conns[ci.Conn] = ci
	env.edge.mu.Unlock()
	return ci
}

func (env *testEnv) publish(t *testing.T, room, data string) fabric.Position {
	t.Helper()
	pos, err := env.m.Publish(context.Background(), fabric.Publication{Room: room, Payload: fabric.Payload{Data: []byte(data)}})
	if err != nil {
		t.Fatalf("publish %s: %v", room, err)
	}
	return pos
}

func (env *testEnv) join(t *testing.T, room string, ci fabric.ClientInfo, from *fabric.Position) fabric.JoinResult {
	t.Helper()
	res, err := env.m.Join(context.Background(), room, ci, from)
	if err != nil {
		t.Fatalf("join %s: %v", room, err)
	}
	return res
}

func TestNewValidates(t *testing.T) {
	ns, _ := fabric.NewNamespaces(nil)
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no node", Config{Namespaces: ns}},
		{"at in node", Config{Node: "a@b", Namespaces: ns}},
		{"no namespaces", Config{Node: "n"}},
		{"negative shards", Config{Node: "n", Namespaces: ns, Shards: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if m, err := New(tc.cfg); err == nil {
				m.Close()
				t.Fatal("New succeeded")
			}
		})
	}
}

func TestEpochIsNewPerMesh(t *testing.T) {
	a, b := newTestEnv(t), newTestEnv(t)
	if len(a.m.Epoch()) != 10 || a.m.Epoch() == b.m.Epoch() {
		t.Fatalf("epochs %q and %q", a.m.Epoch(), b.m.Epoch())
	}
	if pos := a.publish(t, "plain:x", `1`); pos != (fabric.Position{Epoch: a.m.Epoch(), Offset: 1}) {
		t.Fatalf("first position %+v", pos)
	}
}

func TestListNodes(t *testing.T) {
	env := newTestEnv(t)
	env.connect(t, "u", 1)
	nodes, err := env.m.ListNodes(context.Background())
	if err != nil || len(nodes) != 1 {
		t.Fatalf("ListNodes = %v, %v", nodes, err)
	}
	n := nodes[0]
	if n.Name != testNode || n.State != fabric.NodeActive || n.Conns != 1 || n.Shards != 8 || n.Version != "test" {
		t.Fatalf("node %+v", n)
	}
	env.m.SetDraining(true)
	nodes, _ = env.m.ListNodes(context.Background())
	if nodes[0].State != fabric.NodeDraining {
		t.Fatalf("state %v after SetDraining", nodes[0].State)
	}
}

func TestMetricsRegistered(t *testing.T) {
	env := newTestEnv(t)
	env.publish(t, "chat:a", `1`)
	mfs, err := env.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		switch {
		case m.Gauge != nil:
			got[mf.GetName()] = m.Gauge.GetValue()
		case m.Counter != nil:
			got[mf.GetName()] = m.Counter.GetValue()
		case m.Histogram != nil:
			got[mf.GetName()] = float64(m.Histogram.GetSampleCount())
		}
	}
	want := map[string]float64{
		"roomcast_rooms": 1, "roomcast_messages_published_total": 1,
		"roomcast_publish_enqueue_seconds": 1, "roomcast_history_messages": 1,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	// A second mesh on the same registry is a configuration error, not a panic.
	ns, _ := fabric.NewNamespaces(nil)
	if m, err := New(Config{Node: "n2", Namespaces: ns, Registerer: env.reg}); err == nil {
		m.Close()
		t.Fatal("duplicate registration accepted")
	}
}

func TestCloseFailsLaterCalls(t *testing.T) {
	env := newTestEnv(t)
	env.m.Close()
	if _, err := env.m.Publish(context.Background(), fabric.Publication{Room: "plain:a", Payload: fabric.Payload{Data: []byte(`1`)}}); !errors.Is(err, fabric.ErrUnavailable) {
		t.Fatalf("publish after close: %v", err)
	}
	if _, err := env.m.Subscribe(fabric.EventFilter{}, "", 0); !errors.Is(err, fabric.ErrUnavailable) {
		t.Fatalf("subscribe after close: %v", err)
	}
	if err := env.m.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}
