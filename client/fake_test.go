package client

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// fakeServer speaks enough of the roomcast client protocol to test the SDK: connect,
// join with recovery from an in-memory history, leave, publish with fan-out, presence,
// history, send, refresh and pong. Tests steer it through its fields and methods.
type fakeServer struct {
	t   *testing.T
	srv *httptest.Server

	mu       sync.Mutex
	epoch    string
	past     map[string]bool // earlier epochs the stream went on from (handOver)
	rooms    map[string][]*pb.RoomMessage
	conns    []*fakeConn
	seq      int
	accepted chan *fakeConn // every authenticated connection
	// Steering, guarded by mu.
	refuse       bool                                      // answer upgrades with 503
	checkToken   func(token string) (code int, msg string) // non-zero code: close with it
	pingInterval time.Duration
	expires      time.Duration   // token lifetime reported at connect and refresh
	connectRooms []string        // rooms joined at connect
	hold         map[string]bool // command kinds left unanswered
	forbidden    map[string]bool // rooms whose join/publish is denied
	noHistory    map[string]bool // rooms whose joins say recoverable=false
}

type fakeConn struct {
	s    *fakeServer
	ws   *websocket.Conn
	id   string
	bin  bool
	wmu  sync.Mutex
	cmds chan *pb.ClientCommand // everything after connect
	done chan struct{}

	mu     sync.Mutex
	joined map[string]bool
	token  string // current token (refresh replaces it)

	connectToken string // the token of the connect command; read-only once accepted
}

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	fs := &fakeServer{
		t: t, epoch: "e1", rooms: map[string][]*pb.RoomMessage{}, accepted: make(chan *fakeConn, 64),
		hold: map[string]bool{}, forbidden: map[string]bool{}, noHistory: map[string]bool{},
	}
	up := websocket.Upgrader{Subprotocols: []string{SubprotocolJSON, SubprotocolProto}}
	fs.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fs.mu.Lock()
		refuse := fs.refuse
		fs.mu.Unlock()
		if refuse {
			http.Error(w, "go away", http.StatusServiceUnavailable)
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		fs.serve(ws)
	}))
	t.Cleanup(func() {
		fs.srv.CloseClientConnections()
		fs.srv.Close()
	})
	return fs
}

func (fs *fakeServer) url() string { return "ws" + strings.TrimPrefix(fs.srv.URL, "http") + "/ws" }

func (fs *fakeServer) set(f func(fs *fakeServer)) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f(fs)
}

func (fc *fakeConn) read() (*pb.ClientCommand, error) {
	mt, data, err := fc.ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	cmd := &pb.ClientCommand{}
	if mt == websocket.BinaryMessage {
		err = proto.Unmarshal(data, cmd)
	} else {
		err = protojson.Unmarshal(data, cmd)
	}
	return cmd, err
}

func (fc *fakeConn) send(m *pb.ServerMessage) {
	var data []byte
	mt := websocket.TextMessage
	if fc.bin {
		data, _ = proto.Marshal(m)
		mt = websocket.BinaryMessage
	} else {
		data, _ = protojson.Marshal(m)
	}
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	_ = fc.ws.WriteMessage(mt, data)
}

// kill sends a Disconnect push and closes with code.
func (fc *fakeConn) kill(code int, reason string, reconnect bool) {
	fc.send(&pb.ServerMessage{Body: &pb.ServerMessage_Disconnect{Disconnect: &pb.Disconnect{Code: uint32(code), Reason: reason, Reconnect: reconnect}}})
	fc.wmu.Lock()
	_ = fc.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
	fc.wmu.Unlock()
	_ = fc.ws.Close()
}

// cut drops the TCP connection without a close frame.
func (fc *fakeConn) cut() { _ = fc.ws.UnderlyingConn().Close() }

func (fs *fakeServer) serve(ws *websocket.Conn) {
	fc := &fakeConn{s: fs, ws: ws, bin: ws.Subprotocol() == SubprotocolProto, cmds: make(chan *pb.ClientCommand, 256),
		done: make(chan struct{}), joined: map[string]bool{}}
	defer close(fc.done)
	defer ws.Close()
	first, err := fc.read()
	if err != nil || first.GetConnect() == nil {
		return
	}
	fs.mu.Lock()
	fs.seq++
	fc.id = fmt.Sprintf("fake.%d", fs.seq)
	fc.token = first.GetConnect().GetToken()
	fc.connectToken = fc.token
	check, ping, exp, auto := fs.checkToken, fs.pingInterval, fs.expires, fs.connectRooms
	fs.mu.Unlock()
	if check != nil {
		if code, msg := check(fc.token); code != 0 {
			fc.kill(code, msg, false)
			return
		}
	}
	cr := &pb.ConnectResult{Connection: fc.id, Node: "fake", User: "u-" + fc.connectToken, PingInterval: durationpb.New(ping)}
	if exp > 0 {
		cr.Expires = timestamppb.New(time.Now().Add(exp))
	}
	for _, room := range auto {
		cr.Rooms = append(cr.Rooms, fs.join(fc, room, nil))
	}
	fc.send(&pb.ServerMessage{Id: first.GetId(), Body: &pb.ServerMessage_Connect{Connect: cr}})
	fs.mu.Lock()
	fs.conns = append(fs.conns, fc)
	fs.mu.Unlock()
	fs.accepted <- fc
	for {
		cmd, err := fc.read()
		if err != nil {
			return
		}
		fc.cmds <- cmd
		if r := fs.reply(fc, cmd); r != nil {
			r.Id = cmd.GetId()
			fc.send(r)
		}
	}
}

func kindOf(cmd *pb.ClientCommand) string {
	return string(cmd.ProtoReflect().WhichOneof(cmd.ProtoReflect().Descriptor().Oneofs().ByName("command")).Name())
}

func errMsg(code pb.ErrorCode, msg string) *pb.ServerMessage {
	return &pb.ServerMessage{Error: &pb.Error{Code: code, Message: msg}}
}

// join registers fc in room and builds the join result, recovering when asked.
func (fs *fakeServer) join(fc *fakeConn, room string, from *pb.Position) *pb.JoinResult {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fc.mu.Lock()
	fc.joined[room] = true
	fc.mu.Unlock()
	hist := fs.rooms[room]
	jr := &pb.JoinResult{Room: room, Position: &pb.Position{Epoch: fs.epoch, Offset: uint64(len(hist))}, Recoverable: !fs.noHistory[room]}
	if from != nil && jr.Recoverable {
		if fs.onStream(from) && from.GetOffset() <= uint64(len(hist)) {
			jr.Recovered = true
			jr.Messages = append(jr.Messages, hist[from.GetOffset():]...)
		}
	}
	return jr
}

func (fs *fakeServer) reply(fc *fakeConn, cmd *pb.ClientCommand) *pb.ServerMessage {
	fs.mu.Lock()
	held := fs.hold[kindOf(cmd)]
	fs.mu.Unlock()
	if held || cmd.GetPong() != nil {
		return nil
	}
	switch c := cmd.GetCommand().(type) {
	case *pb.ClientCommand_Join:
		fs.mu.Lock()
		denied := fs.forbidden[c.Join.GetRoom()]
		fs.mu.Unlock()
		if denied {
			return errMsg(pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, "no")
		}
		fc.mu.Lock()
		already := fc.joined[c.Join.GetRoom()]
		fc.mu.Unlock()
		if already {
			return errMsg(pb.ErrorCode_ERROR_CODE_ALREADY_JOINED, "already")
		}
		return &pb.ServerMessage{Body: &pb.ServerMessage_Join{Join: fs.join(fc, c.Join.GetRoom(), c.Join.GetRecoverFrom())}}
	case *pb.ClientCommand_Leave:
		fc.mu.Lock()
		delete(fc.joined, c.Leave.GetRoom())
		fc.mu.Unlock()
		return &pb.ServerMessage{Body: &pb.ServerMessage_Leave{Leave: &pb.LeaveResult{}}}
	case *pb.ClientCommand_Publish:
		fs.mu.Lock()
		denied := fs.forbidden[c.Publish.GetRoom()]
		fs.mu.Unlock()
		if denied {
			return errMsg(pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, "no")
		}
		pos := fs.publish(c.Publish.GetRoom(), c.Publish.GetPayload(), &pb.ClientInfo{User: "u-" + fc.connectToken, Connection: fc.id})
		return &pb.ServerMessage{Body: &pb.ServerMessage_Publish{Publish: &pb.PublishResult{Position: pos}}}
	case *pb.ClientCommand_Presence:
		return &pb.ServerMessage{Body: &pb.ServerMessage_Presence{Presence: &pb.PresenceResult{Members: []*pb.Member{{User: "u-" + fc.connectToken, Connections: []string{fc.id}}}}}}
	case *pb.ClientCommand_PresenceStats:
		return &pb.ServerMessage{Body: &pb.ServerMessage_PresenceStats{PresenceStats: &pb.PresenceStatsResult{Users: 1, Connections: 1}}}
	case *pb.ClientCommand_History:
		fs.mu.Lock()
		defer fs.mu.Unlock()
		if since := c.History.GetSince(); since.GetEpoch() != "" && !fs.onStream(since) {
			return errMsg(pb.ErrorCode_ERROR_CODE_BAD_REQUEST, "position of another epoch")
		}
		hist := fs.rooms[c.History.GetRoom()]
		return &pb.ServerMessage{Body: &pb.ServerMessage_History{History: &pb.HistoryResult{
			Messages: hist, Position: &pb.Position{Epoch: fs.epoch, Offset: uint64(len(hist))}}}}
	case *pb.ClientCommand_Send:
		return &pb.ServerMessage{Body: &pb.ServerMessage_Send{Send: &pb.SendResult{}}}
	case *pb.ClientCommand_Refresh:
		fc.mu.Lock()
		fc.token = c.Refresh.GetToken()
		fc.mu.Unlock()
		fs.mu.Lock()
		exp := fs.expires
		fs.mu.Unlock()
		return &pb.ServerMessage{Body: &pb.ServerMessage_Refresh{Refresh: &pb.RefreshResult{Expires: timestamppb.New(time.Now().Add(exp))}}}
	}
	return errMsg(pb.ErrorCode_ERROR_CODE_UNKNOWN_COMMAND, "unknown")
}

// publish appends to room's history and pushes to every connection in it.
func (fs *fakeServer) publish(room string, p *pb.Payload, from *pb.ClientInfo) *pb.Position {
	if jt, ok := p.GetKind().(*pb.Payload_JsonText); ok {
		// Like the real node, deliver JSON as a JSON value, never as text.
		v := &structpb.Value{}
		if err := protojson.Unmarshal([]byte(jt.JsonText), v); err == nil {
			p = &pb.Payload{Kind: &pb.Payload_Json{Json: v}}
		}
	}
	fs.mu.Lock()
	m := &pb.RoomMessage{Room: room, Epoch: fs.epoch, Offset: uint64(len(fs.rooms[room]) + 1), Payload: p, Publisher: from,
		TimeUnixMs: time.Now().UnixMilli()}
	fs.rooms[room] = append(fs.rooms[room], m)
	conns := append([]*fakeConn(nil), fs.conns...)
	fs.mu.Unlock()
	for _, fc := range conns {
		fc.mu.Lock()
		in := fc.joined[room]
		fc.mu.Unlock()
		if in {
			fc.send(&pb.ServerMessage{Body: &pb.ServerMessage_Message{Message: m}})
		}
	}
	return &pb.Position{Epoch: m.GetEpoch(), Offset: m.GetOffset()}
}

// record appends to room's history without pushing to anyone: a message the
// connections in the room miss.
func (fs *fakeServer) record(room string, p *pb.Payload) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	m := &pb.RoomMessage{Room: room, Epoch: fs.epoch, Offset: uint64(len(fs.rooms[room]) + 1), Payload: p}
	fs.rooms[room] = append(fs.rooms[room], m)
}

// onStream reports whether p is a position of the current stream (fs.mu held).
func (fs *fakeServer) onStream(p *pb.Position) bool {
	return p.GetEpoch() == fs.epoch || fs.past[p.GetEpoch()]
}

// handOver starts a new epoch whose offsets go on from the old one's, keeping the
// history, like a shard moving between live owners.
func (fs *fakeServer) handOver(epoch string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.past == nil {
		fs.past = map[string]bool{}
	}
	fs.past[fs.epoch] = true
	fs.epoch = epoch
}

// restart forgets every room and starts a new epoch.
func (fs *fakeServer) restart(epoch string) {
	fs.mu.Lock()
	fs.epoch = epoch
	fs.past = nil
	fs.rooms = map[string][]*pb.RoomMessage{}
	fs.mu.Unlock()
}

// next waits for the next authenticated connection.
func (fs *fakeServer) next(t *testing.T) *fakeConn {
	t.Helper()
	select {
	case fc := <-fs.accepted:
		return fc
	case <-time.After(10 * time.Second):
		t.Fatal("no connection arrived")
		return nil
	}
}

// expect waits for the next command of kind on fc.
func (fc *fakeConn) expect(t *testing.T, kind string) *pb.ClientCommand {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case cmd := <-fc.cmds:
			if kindOf(cmd) == kind {
				return cmd
			}
		case <-deadline:
			t.Fatalf("no %s command arrived", kind)
			return nil
		}
	}
}

// buffered returns the commands fc received and no test consumed yet, without
// waiting.
func (fc *fakeConn) buffered() []*pb.ClientCommand {
	var out []*pb.ClientCommand
	for {
		select {
		case cmd := <-fc.cmds:
			out = append(out, cmd)
		default:
			return out
		}
	}
}

func jsonPayload(s string) *pb.Payload {
	return &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: s}}
}
