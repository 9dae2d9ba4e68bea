package node

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/wsio"
)

func TestConnectResult(t *testing.T) {
	h := newHarness(t, nil)
	cl, res := h.connect(t, "", jwtauth.Claims{
		User: "alice", Info: json.RawMessage(`{"name":"Alice"}`), Rooms: []string{"chat:lobby", "nope:x"},
	})
	if cl.ws.Subprotocol() != SubprotocolJSON && cl.ws.Subprotocol() != "" {
		t.Errorf("subprotocol %q", cl.ws.Subprotocol())
	}
	if !strings.HasSuffix(res.Connection, "@n1") || res.Node != "n1" || res.User != "alice" {
		t.Errorf("connect result %v", res)
	}
	if res.PingInterval.AsDuration() != DefaultPingInterval || res.Expires == nil {
		t.Errorf("ping interval %v, expires %v", res.PingInterval, res.Expires)
	}
	if l := res.Limits; l.MaxRooms != DefaultMaxRoomsPerConn || l.CommandBurst != DefaultCommandBurst || l.MaxFrameBytes != 65536 {
		t.Errorf("limits %v", l)
	}
	// The token's rooms are joined; the one in an unknown namespace is skipped.
	if len(res.Rooms) != 1 || res.Rooms[0].Room != "chat:lobby" {
		t.Fatalf("auto-joined rooms %v", res.Rooms)
	}
	ev := h.fab.waitEvent(t, func(ev fabric.Event) bool { return ev.Type == fabric.EventConnect })
	if ev.Conn != res.Connection || ev.User != "alice" || ev.Node != "n1" {
		t.Errorf("connect event %+v", ev)
	}
	// The auto-joined room delivers, with the publisher's info.
	if _, err := h.fab.Publish(context.Background(), fabric.Publication{Room: "chat:lobby", Payload: fabric.Payload{Data: []byte(`{"a":1}`)}}); err != nil {
		t.Fatal(err)
	}
	m := cl.mustRead().GetMessage()
	if m == nil || m.Offset != 1 || m.Payload.GetJson().GetStructValue().Fields["a"].GetNumberValue() != 1 {
		t.Fatalf("message %v", m)
	}
	if conns, rooms := h.n.Stats(); conns != 1 || rooms != 1 {
		t.Errorf("stats %d conns %d rooms", conns, rooms)
	}
}

func TestHandshakeFailures(t *testing.T) {
	expired, err := jwtauth.Mint("HS256", "", testSecret, jwtauth.Claims{User: "bob", ExpiresAt: time.Now().Add(-time.Hour)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		first *pb.ClientCommand
		code  fabric.CloseCode
	}{
		{"not connect first", joinCmd("chat:lobby", nil), fabric.CloseConnectExpected},
		{"bad token", connectCmd("not-a-token"), fabric.CloseUnauthorized},
		{"empty token", connectCmd(""), fabric.CloseUnauthorized},
		{"expired token", connectCmd(expired), fabric.CloseUnauthorized},
	}
	h := newHarness(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := h.dial(t, "", nil)
			defer cl.close()
			cl.send(tt.first)
			cl.expectClose(tt.code)
		})
	}
	t.Run("second connect", func(t *testing.T) {
		cl, _ := h.connect(t, "", jwtauth.Claims{})
		cl.send(connectCmd(token(t, jwtauth.Claims{})))
		cl.expectClose(fabric.CloseConnectExpected)
	})
	t.Run("too many connections", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.MaxConnsPerUser = 1 })
		h.connect(t, "", jwtauth.Claims{User: "carol"})
		cl := h.dial(t, "", nil)
		defer cl.close()
		cl.send(connectCmd(token(t, jwtauth.Claims{User: "carol"})))
		cl.expectClose(fabric.CloseTooManyConnections)
	})
}

func TestAuthTimeout(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AuthTimeout = time.Minute })
	cl := h.dial(t, "", nil)
	defer cl.close()
	waitFor(t, "registration", func() bool { c, _ := h.n.Stats(); return c == 1 })
	h.n.sweep(time.Now()) // not yet
	h.n.sweep(time.Now().Add(time.Minute + time.Second))
	cl.expectClose(fabric.CloseAuthTimeout)
}

func TestUpgradeRefusals(t *testing.T) {
	h := newHarness(t, nil)
	tests := []struct {
		name   string
		header http.Header
		status int
	}{
		{"foreign origin", http.Header{"Origin": {"https://evil.example.com"}}, http.StatusForbidden},
		{"substring origin", http.Header{"Origin": {"https://app.example.com.evil.com"}}, http.StatusForbidden},
		{"bad bearer", http.Header{"Authorization": {"Bearer nope"}}, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, resp, err := h.tryDial("", tt.header)
			if err == nil || resp == nil || resp.StatusCode != tt.status {
				t.Fatalf("err %v resp %v, want status %d", err, resp, tt.status)
			}
		})
	}
	t.Run("allowed origin", func(t *testing.T) {
		cl := h.dial(t, "", http.Header{"Origin": {"https://app.example.com"}})
		cl.close()
	})
	t.Run("connect rate", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.ConnectRate = 0.001 }) // burst of 1
		cl := h.dial(t, "", nil)
		defer cl.close()
		_, resp, err := h.tryDial("", nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("err %v resp %v, want 503", err, resp)
		}
	})
}

func TestHeaderAuth(t *testing.T) {
	h := newHarness(t, nil)
	hdr := http.Header{"Authorization": {"Bearer " + token(t, jwtauth.Claims{User: "dave"})}}
	cl := h.dial(t, "", hdr)
	defer cl.close()
	// The connection is established at once; the result arrives as a push.
	push := cl.mustRead().GetConnect()
	if push == nil || push.User != "dave" {
		t.Fatalf("connect push %v", push)
	}
	// A connect with an empty token is still answered.
	r := cl.call(connectCmd(""))
	if r.GetConnect().GetConnection() != push.Connection {
		t.Fatalf("connect reply %v", r)
	}
	if j := cl.join("chat:a"); j.Room != "chat:a" {
		t.Fatalf("join %v", j)
	}
}

func TestCommandErrors(t *testing.T) {
	h := newHarness(t, nil)
	cl, _ := h.connect(t, "", jwtauth.Claims{Join: []string{"chat:ok*", "news:*"}, Publish: []string{"chat:ok"}})
	cl.join("chat:ok")
	cl.join("news:today")
	pres := func(room string) *pb.ClientCommand {
		return &pb.ClientCommand{Command: &pb.ClientCommand_Presence{Presence: &pb.PresenceCommand{Room: room}}}
	}
	tests := []struct {
		name string
		cmd  *pb.ClientCommand
		code pb.ErrorCode
	}{
		{"join denied", joinCmd("chat:secret", nil), pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED},
		{"join unknown namespace", joinCmd("zzz:a", nil), pb.ErrorCode_ERROR_CODE_UNKNOWN_NAMESPACE},
		{"join bad name", joinCmd("chat:a b", nil), pb.ErrorCode_ERROR_CODE_BAD_REQUEST},
		{"join twice", joinCmd("chat:ok", nil), pb.ErrorCode_ERROR_CODE_ALREADY_JOINED},
		{"publish no right", publishCmd("chat:okay", `1`), pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED},
		{"publish no client publish", publishCmd("news:today", `1`), pb.ErrorCode_ERROR_CODE_NOT_AVAILABLE},
		{"publish bad json", publishCmd("chat:ok", `{`), pb.ErrorCode_ERROR_CODE_BAD_REQUEST},
		{"presence no right", pres("chat:other"), pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED},
		{"presence off", pres("news:today"), pb.ErrorCode_ERROR_CODE_NOT_AVAILABLE},
		{"leave not joined", &pb.ClientCommand{Command: &pb.ClientCommand_Leave{Leave: &pb.LeaveCommand{Room: "chat:zz"}}}, pb.ErrorCode_ERROR_CODE_NOT_JOINED},
		{"unknown command", &pb.ClientCommand{}, pb.ErrorCode_ERROR_CODE_UNKNOWN_COMMAND},
		{"refresh other user", &pb.ClientCommand{Command: &pb.ClientCommand_Refresh{Refresh: &pb.RefreshCommand{Token: token(t, jwtauth.Claims{User: "mallory"})}}}, pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl.t = t
			r := cl.call(tt.cmd)
			if r.Error.GetCode() != tt.code {
				t.Fatalf("got %v, want %v", r, tt.code)
			}
		})
	}
	cl.t = t
	t.Run("publish needs joining", func(t *testing.T) {
		h := newHarness(t, nil)
		cl, _ := h.connect(t, "", jwtauth.Claims{})
		cl.t = t
		if r := cl.call(publishCmd("chat:x", `1`)); r.Error.GetCode() != pb.ErrorCode_ERROR_CODE_NOT_JOINED {
			t.Fatalf("got %v", r)
		}
	})
}

// TestDeniedRoomNeverDelivered checks that a refused join leaves nothing behind:
// messages of that room never reach the connection.
func TestDeniedRoomNeverDelivered(t *testing.T) {
	h := newHarness(t, nil)
	cl, _ := h.connect(t, "", jwtauth.Claims{Join: []string{"chat:open"}})
	if r := cl.call(joinCmd("chat:secret", nil)); r.Error.GetCode() != pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED {
		t.Fatalf("join: %v", r)
	}
	if h.fab.members("chat:secret") != 0 {
		t.Fatal("the fabric registered a denied join")
	}
	_, _ = h.fab.Publish(context.Background(), fabric.Publication{Room: "chat:secret", Payload: fabric.Payload{Data: []byte(`1`)}})
	// The next frame is the reply to a later command, not the secret message.
	id := cl.send(joinCmd("chat:open", nil))
	if m := cl.mustRead(); m.Id != id || m.GetJoin() == nil {
		t.Fatalf("got %v", m)
	}
}

func TestPresenceHistorySend(t *testing.T) {
	h := newHarness(t, nil)
	cl, res := h.connect(t, "", jwtauth.Claims{Info: json.RawMessage(`{"n":1}`)})
	cl.join("chat:r")
	// The publisher, a member, receives its own message (the fake fabric delivers
	// it before acknowledging, so it may come first).
	id := cl.send(publishCmd("chat:r", `{"x":"y"}`))
	for got := 0; got < 2; got++ {
		m := cl.mustRead()
		switch {
		case m.Id == id:
			if m.GetPublish().GetPosition().GetOffset() != 1 {
				t.Fatalf("publish %v", m)
			}
		case m.GetMessage() != nil:
			if m.GetMessage().GetPublisher().GetConnection() != res.Connection {
				t.Fatalf("message %v", m)
			}
		default:
			t.Fatalf("unexpected %v", m)
		}
	}
	p := cl.call(&pb.ClientCommand{Command: &pb.ClientCommand_Presence{Presence: &pb.PresenceCommand{Room: "chat:r"}}})
	if ms := p.GetPresence().GetMembers(); len(ms) != 1 || ms[0].User != "alice" || ms[0].Info == nil {
		t.Fatalf("presence %v", p)
	}
	s := cl.call(&pb.ClientCommand{Command: &pb.ClientCommand_PresenceStats{PresenceStats: &pb.PresenceStatsCommand{Room: "chat:r"}}})
	if s.GetPresenceStats().GetUsers() != 1 {
		t.Fatalf("stats %v", s)
	}
	hist := cl.call(&pb.ClientCommand{Command: &pb.ClientCommand_History{History: &pb.HistoryCommand{Room: "chat:r"}}})
	if ms := hist.GetHistory().GetMessages(); len(ms) != 1 || ms[0].Offset != 1 {
		t.Fatalf("history %v", hist)
	}
	send := cl.call(&pb.ClientCommand{Command: &pb.ClientCommand_Send{Send: &pb.SendCommand{Payload: &pb.Payload{Kind: &pb.Payload_Binary{Binary: []byte{1, 2}}}}}})
	if send.GetSend() == nil {
		t.Fatalf("send %v", send)
	}
	ev := h.fab.waitEvent(t, func(ev fabric.Event) bool { return ev.Type == fabric.EventClientMessage })
	if ev.Payload == nil || !ev.Payload.Binary || string(ev.Payload.Data) != "\x01\x02" || ev.Conn != res.Connection {
		t.Fatalf("event %+v", ev)
	}
	if r := cl.call(&pb.ClientCommand{Command: &pb.ClientCommand_Leave{Leave: &pb.LeaveCommand{Room: "chat:r"}}}); r.GetLeave() == nil {
		t.Fatalf("leave %v", r)
	}
	if h.fab.members("chat:r") != 0 {
		t.Fatal("fabric still has the member")
	}
}

// transportModes are the wsio read modes the delivery tests run over.
var transportModes = []wsio.Mode{wsio.ModeAuto, wsio.ModeGoroutine}

func TestPublishDeliverOrder(t *testing.T) {
	for _, mode := range transportModes {
		for _, sub := range []string{SubprotocolJSON, SubprotocolProto} {
			t.Run(mode.String()+"/"+sub, func(t *testing.T) { testPublishDeliverOrder(t, mode, sub) })
		}
	}
}

func testPublishDeliverOrder(t *testing.T, mode wsio.Mode, sub string) {
	h := newHarness(t, func(c *Config) { c.CommandBurst = 1000; c.Transport.Mode = mode })
	var clients []*client
	for i := 0; i < 4; i++ {
		cl, _ := h.connect(t, sub, jwtauth.Claims{})
		if cl.ws.Subprotocol() != sub {
			t.Fatalf("subprotocol %q", cl.ws.Subprotocol())
		}
		cl.join("chat:order")
		clients = append(clients, cl)
	}
	// A dedicated publisher waits for each acknowledgement (the command
	// queue is bounded); the members check order.
	pubc, _ := h.connect(t, sub, jwtauth.Claims{User: "pub"})
	pubc.join("chat:order")
	const count = 200
	for i := 1; i <= count; i++ {
		if r := pubc.call(publishCmd("chat:order", `{"i":`+itoa(i)+`}`)); r.Error != nil {
			t.Fatalf("publish %d: %v", i, r.Error)
		}
	}
	for ci, cl := range clients {
		next := uint64(1)
		for next <= count {
			m := cl.mustRead()
			rm := m.GetMessage()
			if rm == nil {
				t.Fatalf("client %d: unexpected %v", ci, m)
			}
			if rm.Offset != next || int(rm.Payload.GetJson().GetStructValue().Fields["i"].GetNumberValue()) != int(next) {
				t.Fatalf("client %d: got offset %d, want %d", ci, rm.Offset, next)
			}
			next++
		}
	}
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}

// TestJoinRecoveryRace races a publisher against many concurrent joins (client
// joins, some recovering from the start, and backend joins) and checks that each
// connection sees a gap-free, duplicate-free sequence after its join position.
func TestJoinRecoveryRace(t *testing.T) {
	for _, mode := range transportModes {
		t.Run(mode.String(), func(t *testing.T) { testJoinRecoveryRace(t, mode) })
	}
}

func testJoinRecoveryRace(t *testing.T, mode wsio.Mode) {
	h := newHarness(t, func(c *Config) { c.Transport.Mode = mode })
	const room = "chat:race"
	const joiners, backend = 12, 4
	var clients []*client
	var ids []string
	for i := 0; i < joiners+backend; i++ {
		cl, res := h.connect(t, SubprotocolProto, jwtauth.Claims{User: "u" + itoa(i)})
		clients = append(clients, cl)
		ids = append(ids, res.Connection)
	}
	publish := func(data string) {
		_, _ = h.fab.Publish(context.Background(), fabric.Publication{Room: room, Payload: fabric.Payload{Data: []byte(data)}})
	}
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 0; i < 20000; i++ {
			select {
			case <-stop:
				for j := 0; j < 100; j++ { // some live traffic after every join
					publish(`1`)
				}
				publish(`"end"`)
				return
			default:
				publish(`1`)
			}
		}
		publish(`"end"`)
	}()

	// Each joiner joins concurrently with the publisher, then reads until "end".
	var joined, done sync.WaitGroup
	for i, cl := range clients {
		joined.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			recovering := i < joiners && i%2 == 1
			var first *pb.ServerMessage
			var err error
			if i < joiners {
				var from *pb.Position
				if recovering {
					from = &pb.Position{Epoch: "e1", Offset: 0}
				}
				cl.id++
				cmd := joinCmd(room, from)
				cmd.Id = cl.id
				b, _ := proto.Marshal(cmd)
				err = cl.ws.WriteMessage(websocket.BinaryMessage, b)
			} else {
				err = h.n.JoinConn(context.Background(), ids[i], room)
			}
			if err == nil {
				first, err = cl.read()
			}
			joined.Done()
			if err != nil {
				t.Errorf("joiner %d: %v", i, err)
				return
			}
			j := first.GetJoin()
			if i >= joiners {
				j = first.GetJoined().GetJoin()
			}
			if j == nil {
				t.Errorf("joiner %d: first message %v", i, first)
				return
			}
			if recovering {
				if !j.Recovered || uint64(len(j.Messages)) != j.Position.Offset {
					t.Errorf("joiner %d: recovered=%v with %d messages up to %d", i, j.Recovered, len(j.Messages), j.Position.Offset)
					return
				}
				for k, m := range j.Messages {
					if m.Offset != uint64(k+1) {
						t.Errorf("joiner %d: missed[%d] has offset %d", i, k, m.Offset)
						return
					}
				}
			}
			for next := j.Position.Offset + 1; ; next++ {
				m, err := cl.read()
				if err != nil {
					t.Errorf("joiner %d: %v", i, err)
					return
				}
				rm := m.GetMessage()
				if rm == nil || rm.Offset != next {
					t.Errorf("joiner %d: got %v, want offset %d", i, m, next)
					return
				}
				if rm.Payload.GetJson().GetStringValue() == "end" {
					return
				}
			}
		}()
	}
	joined.Wait()
	close(stop)
	<-pubDone
	done.Wait()
}

// TestJoinBuffering checks the join invariant deterministically: deliveries that
// arrive while the join is in flight are buffered; those at or before the join
// position are dropped, later ones follow the join reply, then live ones.
func TestJoinBuffering(t *testing.T) {
	h := newHarness(t, nil)
	cl, _ := h.connect(t, "", jwtauth.Claims{})
	publish := func() {
		_, _ = h.fab.Publish(context.Background(), fabric.Publication{Room: "chat:buf", Payload: fabric.Payload{Data: []byte(`1`)}})
	}
	hook := func(stage int) {
		publish() // stage 0: offset 1 (before the join position); stage 1: offset 2 (after)
	}
	h.fab.joinHook.Store(&hook)
	id := cl.send(joinCmd("chat:buf", nil))
	r := cl.mustRead()
	if r.Id != id || r.GetJoin().GetPosition().GetOffset() != 1 {
		t.Fatalf("want the join reply at offset 1 first, got %v", r)
	}
	h.fab.joinHook.Store(nil)
	publish()
	for want := uint64(2); want <= 3; want++ {
		if m := cl.mustRead().GetMessage(); m.GetOffset() != want {
			t.Fatalf("got %v, want offset %d", m, want)
		}
	}
}

func TestSlowConsumer(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.Transport.MaxQueueMessages = 64
		c.Transport.MaxQueueBytes = 2 << 20
	})
	slow, slowRes := h.connect(t, "", jwtauth.Claims{User: "slow"})
	slow.join("chat:flood")
	fast, _ := h.connect(t, SubprotocolProto, jwtauth.Claims{User: "fast"})
	fast.join("chat:flood")
	payload := []byte(`"` + strings.Repeat("x", 16<<10) + `"`)
	const count = 1500 // 24 MB: more than socket buffers hold
	// The fast client acknowledges progress, and the publisher stays at most a few
	// messages ahead of it, so only the client that does not read falls behind.
	progress := make(chan int, count)
	go func() {
		defer close(progress)
		for i := 1; i <= count; i++ {
			m, err := fast.read()
			if err != nil || m.GetMessage().GetOffset() != uint64(i) {
				t.Errorf("fast: got %v (%v), want offset %d", m, err, i)
				return
			}
			progress <- i
		}
	}()
	const window = 16
	received := 0
	for i := 1; i <= count; i++ {
		for received < i-window {
			r, ok := <-progress
			if !ok {
				t.Fatal("fast client failed")
			}
			received = r
		}
		_, _ = h.fab.Publish(context.Background(), fabric.Publication{Room: "chat:flood", Payload: fabric.Payload{Data: payload}})
	}
	ev := h.fab.waitEvent(t, func(ev fabric.Event) bool {
		return ev.Type == fabric.EventDisconnect && ev.Conn == slowRes.Connection
	})
	if ev.Code != fabric.CloseSlow {
		t.Fatalf("slow consumer closed with %d", ev.Code)
	}
	for range progress {
	}
}

func TestRateLimit(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.CommandRate = 0.001; c.CommandBurst = 3 })
	cl, _ := h.connect(t, "", jwtauth.Claims{}) // connect used one token
	stats := &pb.ClientCommand{Command: &pb.ClientCommand_Send{Send: &pb.SendCommand{Payload: &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: "1"}}}}}
	for i := 0; i < 2; i++ {
		if r := cl.call(stats); r.Error != nil {
			t.Fatalf("command %d: %v", i, r.Error)
		}
	}
	r := cl.call(stats)
	if r.Error.GetCode() != pb.ErrorCode_ERROR_CODE_RATE_LIMITED || !r.Error.Temporary {
		t.Fatalf("want RATE_LIMITED, got %v", r)
	}
	// Keep going: 2*burst refusals in a row close the connection.
	for i := 0; i < 6; i++ {
		cl.send(stats)
	}
	cl.expectClose(fabric.CloseRateLimited)
}

func TestBadFrames(t *testing.T) {
	h := newHarness(t, nil)
	tests := []struct {
		name  string
		sub   string
		typ   int
		frame string
	}{
		{"not json", SubprotocolJSON, websocket.TextMessage, "hello"},
		{"unknown field", SubprotocolJSON, websocket.TextMessage, `{"connect":{"token":"x"},"bogus":1}`},
		{"binary on json", SubprotocolJSON, websocket.BinaryMessage, "\x0a\x00"},
		{"text on proto", SubprotocolProto, websocket.TextMessage, `{}`},
		{"bad proto", SubprotocolProto, websocket.BinaryMessage, "\xff\xff\xff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := h.dial(t, tt.sub, nil)
			defer cl.close()
			if err := cl.ws.WriteMessage(tt.typ, []byte(tt.frame)); err != nil {
				t.Fatal(err)
			}
			cl.expectClose(fabric.CloseBadFrame)
		})
	}
}

func TestDrain(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.DrainTimeout = 2 * time.Second })
	var clients []*client
	for i := 0; i < 3; i++ {
		cl, _ := h.connect(t, "", jwtauth.Claims{User: "u" + itoa(i)})
		cl.join("chat:d")
		clients = append(clients, cl)
	}
	// Clients read concurrently: Drain waits for their close handshakes.
	var wg sync.WaitGroup
	for _, cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl.expectClose(fabric.CloseShutdown)
		}()
	}
	if err := h.n.Drain(context.Background()); err != nil {
		t.Fatalf("drain: %v", err)
	}
	wg.Wait()
	_, resp, err := h.tryDial("", nil)
	if err == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("dial while draining: %v %v", err, resp)
	}
	if c, _ := h.n.Stats(); c != 0 {
		t.Fatalf("%d conns after drain", c)
	}
	waitFor(t, "fabric disconnects", func() bool { return h.fab.members("chat:d") == 0 })
}

func TestHeartbeat(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.PingInterval = time.Minute; c.PongTimeout = time.Minute })
	cl, _ := h.connect(t, "", jwtauth.Claims{})
	pings := make(chan struct{}, 1)
	cl.ws.SetPingHandler(func(string) error { pings <- struct{}{}; return nil })
	h.n.sweep(time.Now().Add(time.Minute + time.Second))
	if m := cl.mustRead(); m.GetPing() == nil {
		t.Fatalf("want ping push, got %v", m)
	}
	<-pings // the WebSocket ping came too (the handler runs inside the read)
	cl.send(&pb.ClientCommand{Command: &pb.ClientCommand_Pong{Pong: &pb.PongCommand{}}})
	h.n.sweep(time.Now().Add(2*time.Minute + 2*time.Second))
	cl.expectClose(fabric.CloseHeartbeatTimeout)
}

func TestTokenExpiry(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.PingInterval = 24 * time.Hour; c.PongTimeout = 24 * time.Hour })
	cl, res := h.connect(t, "", jwtauth.Claims{})
	exp := res.Expires.AsTime()
	// A refresh extends the connection past the old expiry.
	later, err := jwtauth.Mint("HS256", "", testSecret, jwtauth.Claims{User: "alice", Join: []string{"chat:*"}}, 3*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r := cl.call(&pb.ClientCommand{Command: &pb.ClientCommand_Refresh{Refresh: &pb.RefreshCommand{Token: later}}})
	if r.GetRefresh().GetExpires().AsTime().Before(exp.Add(time.Hour)) {
		t.Fatalf("refresh %v", r)
	}
	h.n.sweep(exp.Add(time.Second)) // the old expiry no longer applies
	h.n.sweep(time.Now().Add(3*time.Hour + time.Second))
	cl.expectClose(fabric.CloseTokenExpired)
}

func TestMeshOps(t *testing.T) {
	h := newHarness(t, nil)
	cl, res := h.connect(t, "", jwtauth.Claims{Info: json.RawMessage(`{"n":"x"}`)})
	id := res.Connection
	ctx := context.Background()

	if err := h.n.SendToConn(id, fabric.Payload{Data: []byte(`{"d":1}`)}); err != nil {
		t.Fatal(err)
	}
	if d := cl.mustRead().GetDirect(); d.GetPayload().GetJson() == nil {
		t.Fatalf("direct %v", d)
	}
	if err := h.n.JoinConn(ctx, id, "chat:b"); err != nil {
		t.Fatal(err)
	}
	if j := cl.mustRead().GetJoined(); j.GetJoin().GetRoom() != "chat:b" {
		t.Fatalf("joined %v", j)
	}
	if err := h.n.JoinConn(ctx, id, "chat:b"); !errors.Is(err, fabric.ErrAlreadyJoined) {
		t.Fatalf("second JoinConn: %v", err)
	}
	h.n.DeliverMembership("chat:b", fabric.ClientInfo{User: "bob", Conn: "9@n2"}, true)
	if mj := cl.mustRead().GetMemberJoined(); mj.GetMember().GetUser() != "bob" {
		t.Fatalf("member joined %v", mj)
	}
	if err := h.n.LeaveConn(ctx, id, "chat:b"); err != nil {
		t.Fatal(err)
	}
	if l := cl.mustRead().GetLeft(); l.GetRoom() != "chat:b" || l.GetReason() != "backend" {
		t.Fatalf("left %v", l)
	}
	if err := h.n.LeaveConn(ctx, id, "chat:b"); !errors.Is(err, fabric.ErrNotJoined) {
		t.Fatalf("second LeaveConn: %v", err)
	}
	for _, err := range []error{
		h.n.SendToConn("zz@n1", fabric.Payload{}),
		h.n.JoinConn(ctx, "zz@n1", "chat:b"),
		h.n.LeaveConn(ctx, "zz@n1", "chat:b"),
		h.n.KickConn("zz@n1", fabric.Kick{}),
	} {
		if !errors.Is(err, fabric.ErrNotFound) {
			t.Errorf("unknown conn: %v", err)
		}
	}
	if err := h.n.KickConn(id, fabric.Kick{Code: fabric.CloseKicked, Reason: "bye", Reconnect: true}); err != nil {
		t.Fatal(err)
	}
	cl.expectClose(fabric.CloseKicked)
	ev := h.fab.waitEvent(t, func(ev fabric.Event) bool { return ev.Type == fabric.EventDisconnect })
	if ev.Code != fabric.CloseKicked || ev.Reason != "bye" {
		t.Fatalf("disconnect event %+v", ev)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *Config) { c.Registerer = reg })
	cl, _ := h.connect(t, "", jwtauth.Claims{})
	cl.join("chat:m")
	if r := cl.call(joinCmd("news:x", nil)); r.Error.GetCode() != pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED {
		t.Fatalf("join news:x: %v", r)
	}
	if got := metricValue(t, h.n.met.commands.WithLabelValues("join", "permission_denied")); got != 1 {
		t.Errorf("commands_total{join,permission_denied} %v", got)
	}
	if got := metricValue(t, h.n.met.connects); got != 1 {
		t.Errorf("connects_total %v", got)
	}
	if got := metricValue(t, h.n.met.commands.WithLabelValues("join", "ok")); got != 1 {
		t.Errorf("commands_total{join,ok} %v", got)
	}
	if got := metricValue(t, h.n.met.conns); got != 1 {
		t.Errorf("connections %v", got)
	}
	cl.close()
	waitFor(t, "disconnect metric", func() bool { return metricValue(t, h.n.met.conns) == 0 })
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		found = found || mf.GetName() == "roomcast_disconnects_total" && len(mf.GetMetric()) == 1
	}
	if !found {
		t.Error("no roomcast_disconnects_total series")
	}
	// A second node on the same registry fails loudly instead of sharing series.
	_, err = New(Config{Name: "n2", Fabric: h.fab, Verifier: h.n.cfg.Verifier, Namespaces: h.n.cfg.Namespaces, Registerer: reg})
	if err == nil {
		t.Fatal("duplicate registration accepted")
	}
}

// metricValue reads a counter or gauge.
func metricValue(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

func TestLocalMembers(t *testing.T) {
	h := newHarness(t, nil)
	cl, res := h.connect(t, "", jwtauth.Claims{})
	cl.join("chat:a")
	cl.join("chat:b")
	got := h.n.LocalMembers(func(room string) bool { return room == "chat:a" })
	if len(got) != 1 || len(got["chat:a"]) != 1 {
		t.Fatalf("local members %+v", got)
	}
	if ci := got["chat:a"][0]; ci.User != "alice" || ci.Conn != res.GetConnection() {
		t.Fatalf("member %+v, want alice on %s", ci, res.GetConnection())
	}
}

func TestBurstWatch(t *testing.T) {
	// Each step is the upgrade count seen at one sweep tick, and whether memory is
	// released at that tick, with a threshold of 10.
	steps := []struct {
		count   uint64
		release bool
	}{
		{0, false},  // nothing yet
		{5, false},  // connecting
		{12, false}, // still connecting
		{12, true},  // quiet after 12: release
		{12, false}, // already released
		{15, false}, // a few more
		{15, false}, // quiet, but only 3 since the release
		{30, false}, // a second burst
		{30, true},  // quiet: release again
	}
	var b burstWatch
	for i, s := range steps {
		if got := b.ended(s.count, 10); got != s.release {
			t.Fatalf("step %d (count %d): release = %v, want %v", i, s.count, got, s.release)
		}
	}
	// With a threshold of 1000, a trickle of fewer than 10 per tick is quiet.
	var trickle burstWatch
	for i, s := range []struct {
		count   uint64
		release bool
	}{{600, false}, {1200, false}, {1209, true}, {1215, false}} {
		if got := trickle.ended(s.count, 1000); got != s.release {
			t.Fatalf("trickle step %d: release = %v, want %v", i, got, s.release)
		}
	}
	var off burstWatch
	for _, c := range []uint64{100, 100, 100} {
		if off.ended(c, -1) {
			t.Fatal("released with the release disabled")
		}
	}
}

func TestReleaseAfterConnectBurst(t *testing.T) {
	// A short auth timeout makes the sweeper tick every 10ms.
	h := newHarness(t, func(c *Config) { c.ReleaseAfterConnects = 3; c.AuthTimeout = 20 * time.Millisecond })
	for range 3 {
		cl := h.dial(t, "", nil)
		defer cl.close()
	}
	waitFor(t, "a release after the burst", func() bool { return h.n.releases.Load() == 1 })
}
