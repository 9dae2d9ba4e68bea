package node

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/jwtauth"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeFabric is an in-memory mesh of one: rooms with offsets and history, calling
// the node's Deliver in offset order under its lock.
type fakeFabric struct {
	edge *Node
	// joinHook, when set, runs outside the lock before a join registers (stage 0)
	// and after it registered but before Join returns (stage 1).
	joinHook atomic.Pointer[func(stage int)]

	mu    sync.Mutex
	rooms map[string]*fakeRoom
	users map[string]int

	evMu   sync.Mutex
	events []fabric.Event
	evCh   chan struct{} // signalled on every event
}

type fakeRoom struct {
	offset  uint64
	history []*fabric.Message
	members map[string]fabric.ClientInfo
}

func newFakeFabric() *fakeFabric {
	return &fakeFabric{rooms: map[string]*fakeRoom{}, users: map[string]int{}, evCh: make(chan struct{}, 1)}
}

func (f *fakeFabric) room(name string) *fakeRoom {
	r := f.rooms[name]
	if r == nil {
		r = &fakeRoom{members: map[string]fabric.ClientInfo{}}
		f.rooms[name] = r
	}
	return r
}

func (f *fakeFabric) Connect(_ context.Context, ci fabric.ClientInfo, maxPerUser int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if maxPerUser > 0 && f.users[ci.User] >= maxPerUser {
		return fabric.ErrLimitExceeded
	}
	f.users[ci.User]++
	return nil
}

func (f *fakeFabric) Disconnect(_ context.Context, ci fabric.ClientInfo, rooms []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.users[ci.User]--
	for _, r := range rooms {
		delete(f.room(r).members, ci.Conn)
	}
}

func (f *fakeFabric) Join(_ context.Context, room string, ci fabric.ClientInfo, from *fabric.Position) (fabric.JoinResult, error) {
	if hook := f.joinHook.Load(); hook != nil {
		(*hook)(0)
		defer (*hook)(1)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.room(room)
	r.members[ci.Conn] = ci
	res := fabric.JoinResult{Pos: fabric.Position{Epoch: "e1", Offset: r.offset}, Recoverable: true}
	if from != nil {
		res.Recovered = from.Epoch == "e1"
		if res.Recovered {
			for _, m := range r.history {
				if m.Pos.Offset > from.Offset {
					res.Missed = append(res.Missed, m)
				}
			}
		}
	}
	return res, nil
}

func (f *fakeFabric) Leave(_ context.Context, room string, ci fabric.ClientInfo) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.room(room)
	if _, ok := r.members[ci.Conn]; !ok {
		return fabric.ErrNotJoined
	}
	delete(r.members, ci.Conn)
	return nil
}

func (f *fakeFabric) Publish(_ context.Context, p fabric.Publication) (fabric.Position, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.room(p.Room)
	r.offset++
	m := &fabric.Message{Room: p.Room, Pos: fabric.Position{Epoch: "e1", Offset: r.offset},
		Payload: p.Payload, Publisher: p.Publisher, Time: time.UnixMilli(1700000000000 + int64(r.offset))}
	r.history = append(r.history, m)
	f.edge.Deliver(m) // even without members: the edge must cope with early arrivals
	return m.Pos, nil
}

func (f *fakeFabric) Presence(_ context.Context, room string) ([]fabric.Member, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fabric.Member
	for _, ci := range f.room(room).members {
		out = append(out, fabric.Member{User: ci.User, Conns: []string{ci.Conn}, Info: ci.Info})
	}
	slices.SortFunc(out, func(a, b fabric.Member) int { return strings.Compare(a.User, b.User) })
	return out, nil
}

func (f *fakeFabric) PresenceStats(_ context.Context, room string) (fabric.Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.room(room).members)
	return fabric.Stats{Users: n, Conns: n}, nil
}

func (f *fakeFabric) History(_ context.Context, room string, q fabric.HistoryQuery) (fabric.History, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.room(room)
	return fabric.History{Messages: slices.Clone(r.history), Pos: fabric.Position{Epoch: "e1", Offset: r.offset}}, nil
}

func (f *fakeFabric) Emit(ev fabric.Event) {
	f.evMu.Lock()
	f.events = append(f.events, ev)
	f.evMu.Unlock()
	select {
	case f.evCh <- struct{}{}:
	default:
	}
}

// waitEvent waits for an event matching ok.
func (f *fakeFabric) waitEvent(t *testing.T, ok func(fabric.Event) bool) fabric.Event {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		f.evMu.Lock()
		for _, ev := range f.events {
			if ok(ev) {
				f.evMu.Unlock()
				return ev
			}
		}
		f.evMu.Unlock()
		select {
		case <-f.evCh:
		case <-deadline:
			t.Fatal("event not seen")
		}
	}
}

func (f *fakeFabric) members(room string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.room(room).members)
}

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// harness is a node behind an httptest server.
type harness struct {
	n   *Node
	fab *fakeFabric
	srv *httptest.Server
	url string
}

func testNamespaces(t testing.TB) *fabric.Namespaces {
	ns, err := fabric.NewNamespaces([]fabric.Namespace{
		{Name: "chat", Presence: true, JoinLeave: true, HistorySize: 100, ClientPublish: true},
		{Name: "news"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

func newHarness(t testing.TB, mod func(*Config)) *harness {
	t.Helper()
	v, err := jwtauth.New(jwtauth.Config{Keys: []jwtauth.Key{{Algorithm: "HS256", Secret: testSecret}}})
	if err != nil {
		t.Fatal(err)
	}
	fab := newFakeFabric()
	cfg := Config{
		Name:           "n1",
		Fabric:         fab,
		Verifier:       v,
		Namespaces:     testNamespaces(t),
		AllowedOrigins: []string{"https://app.example.com"},
	}
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fab.edge = n
	srv := httptest.NewServer(n)
	t.Cleanup(func() {
		_ = n.Close()
		srv.Close()
	})
	return &harness{n: n, fab: fab, srv: srv, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
}

// token mints a token for user with broad rights unless c overrides them.
func token(t *testing.T, c jwtauth.Claims) string {
	t.Helper()
	if c.User == "" {
		c.User = "alice"
	}
	if c.Join == nil {
		c.Join = []string{"chat:*"}
	}
	if c.Publish == nil {
		c.Publish = []string{"chat:*"}
	}
	tok, err := jwtauth.Mint("HS256", "", testSecret, c, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// client is a test WebSocket client.
type client struct {
	t      testing.TB
	ws     *websocket.Conn
	binary bool
	id     uint32
}

func (h *harness) dial(t testing.TB, subprotocol string, hdr http.Header) *client {
	t.Helper()
	c, resp, err := h.tryDial(subprotocol, hdr)
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	c.t = t
	return c
}

func (h *harness) tryDial(subprotocol string, hdr http.Header) (*client, *http.Response, error) {
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	if subprotocol != "" {
		d.Subprotocols = []string{subprotocol}
	}
	ws, resp, err := d.Dial(h.url, hdr)
	if err != nil {
		return nil, resp, err
	}
	c := &client{ws: ws, binary: ws.Subprotocol() == SubprotocolProto}
	return c, resp, nil
}

func (c *client) close() { _ = c.ws.Close() }

// send sends cmd with a fresh id and returns the id.
func (c *client) send(cmd *pb.ClientCommand) uint32 {
	c.t.Helper()
	c.id++
	cmd.Id = c.id
	c.sendRaw(cmd)
	return c.id
}

func (c *client) sendRaw(cmd *pb.ClientCommand) {
	c.t.Helper()
	var err error
	if c.binary {
		var b []byte
		if b, err = proto.Marshal(cmd); err == nil {
			err = c.ws.WriteMessage(websocket.BinaryMessage, b)
		}
	} else {
		var b []byte
		if b, err = protojson.Marshal(cmd); err == nil {
			err = c.ws.WriteMessage(websocket.TextMessage, b)
		}
	}
	if err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// read reads the next server message; the deadline only bounds a failing test.
func (c *client) read() (*pb.ServerMessage, error) {
	_ = c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, data, err := c.ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	if (typ == websocket.BinaryMessage) != c.binary {
		c.t.Errorf("frame type %d on subprotocol binary=%v", typ, c.binary)
	}
	m := &pb.ServerMessage{}
	if c.binary {
		err = proto.Unmarshal(data, m)
	} else {
		err = protojson.Unmarshal(data, m)
	}
	if err != nil {
		c.t.Fatalf("decoding %q: %v", data, err)
	}
	return m, nil
}

func (c *client) mustRead() *pb.ServerMessage {
	c.t.Helper()
	m, err := c.read()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

// reply reads until the reply to id, skipping pushes.
func (c *client) reply(id uint32) *pb.ServerMessage {
	c.t.Helper()
	for {
		m := c.mustRead()
		if m.Id == id {
			return m
		}
	}
}

// call sends cmd and waits for its reply.
func (c *client) call(cmd *pb.ClientCommand) *pb.ServerMessage {
	c.t.Helper()
	return c.reply(c.send(cmd))
}

// expectClose reads until the connection closes and checks the disconnect push and
// the close code.
func (c *client) expectClose(code fabric.CloseCode) {
	c.t.Helper()
	var disc *pb.Disconnect
	for {
		m, err := c.read()
		if err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				c.t.Fatalf("want close %d, got %v", code, err)
			}
			if fabric.CloseCode(ce.Code) != code {
				c.t.Fatalf("close code %d, want %d (%q)", ce.Code, code, ce.Text)
			}
			if disc == nil {
				c.t.Fatalf("close %d without a disconnect push", code)
			}
			if fabric.CloseCode(disc.Code) != code || disc.Reconnect != code.Reconnect() {
				c.t.Fatalf("disconnect push %v, want code %d", disc, code)
			}
			return
		}
		if d := m.GetDisconnect(); d != nil {
			disc = d
		}
	}
}

func connectCmd(tok string) *pb.ClientCommand {
	return &pb.ClientCommand{Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: tok, Client: "test/1"}}}
}

func joinCmd(room string, from *pb.Position) *pb.ClientCommand {
	return &pb.ClientCommand{Command: &pb.ClientCommand_Join{Join: &pb.JoinCommand{Room: room, RecoverFrom: from}}}
}

func publishCmd(room, jsonText string) *pb.ClientCommand {
	return &pb.ClientCommand{Command: &pb.ClientCommand_Publish{Publish: &pb.PublishCommand{
		Room: room, Payload: &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: jsonText}},
	}}}
}

// connect dials and authenticates a client.
func (h *harness) connect(t *testing.T, subprotocol string, c jwtauth.Claims) (*client, *pb.ConnectResult) {
	t.Helper()
	cl := h.dial(t, subprotocol, nil)
	t.Cleanup(cl.close)
	r := cl.call(connectCmd(token(t, c)))
	if r.Error != nil || r.GetConnect() == nil {
		t.Fatalf("connect: %v", r)
	}
	return cl, r.GetConnect()
}

// join joins room and fails the test on error.
func (c *client) join(room string) *pb.JoinResult {
	c.t.Helper()
	r := c.call(joinCmd(room, nil))
	if r.Error != nil {
		c.t.Fatalf("join %s: %v", room, r.Error)
	}
	return r.GetJoin()
}

// waitFor polls cond until it holds; the deadline only bounds a failing test.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling interval, not synchronisation
	}
}
