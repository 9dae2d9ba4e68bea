package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/app"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/testnode"
)

// These tests run the SDK against a real in-process node (internal/testnode).

func controlPublish(t *testing.T, n *testnode.Node, room, json string) fabric.Position {
	t.Helper()
	res, err := n.Control.Publish(ctx10(t), &pb.PublishRequest{Room: room, Payload: jsonPayload(json)})
	if err != nil {
		t.Fatalf("control publish: %v", err)
	}
	return posFromPB(res.GetPosition())
}

// gate is a token function that hands out tokens, blocking every call after the
// first until the test opens it once per call.
type gate struct {
	t      *testing.T
	n      *testnode.Node
	user   string
	claims jwtauth.Claims
	mu     sync.Mutex
	calls  int
	open   chan struct{}
}

func newGate(t *testing.T, n *testnode.Node, user string) *gate {
	return &gate{t: t, n: n, user: user, open: make(chan struct{}, 16)}
}

func (g *gate) token(ctx context.Context) (string, error) {
	g.mu.Lock()
	g.calls++
	first := g.calls == 1
	g.mu.Unlock()
	if !first {
		select {
		case <-g.open:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	return g.n.Token(g.t, g.user, g.claims), nil
}

func (g *gate) waitingCalls() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls
}

func TestRealNodeRoundTrip(t *testing.T) {
	for _, proto := range []bool{false, true} {
		t.Run(fmt.Sprintf("proto=%v", proto), func(t *testing.T) {
			n := testnode.Start(t, testnode.Options{})
			direct := make(chan fabric.Payload, 4)
			created := make(chan *Subscription, 4)
			opts := []Option{WithToken(n.Token(t, "alice", jwtauth.Claims{Info: []byte(`{"name":"Alice"}`)})),
				WithDirectChan(direct), WithServerJoinHandler(func(s *Subscription) { created <- s })}
			if proto {
				opts = append(opts, WithProtobuf())
			}
			c := newClient(t, n.WSURL, opts...)
			connect(t, c)
			ctx := ctx10(t)
			sub, err := c.Join(ctx, "chat:lobby")
			if err != nil {
				t.Fatalf("Join: %v", err)
			}
			pos, err := sub.Publish(ctx, JSON([]byte(`{"text":"hi","n":12345678901234567890}`)))
			if err != nil {
				t.Fatalf("Publish: %v", err)
			}
			m := recv(t, sub)
			want := `{"text":"hi","n":12345678901234567890}` // JSON frames carry payloads verbatim
			if proto {
				// Protobuf frames carry a google.protobuf.Value: keys sorted, numbers
				// as doubles (unless the node sends json_text).
				want = `{"n":12345678901234567000,"text":"hi"}`
				if string(m.Payload.Data) == `{"text":"hi","n":12345678901234567890}` {
					want = string(m.Payload.Data)
				}
			}
			if m.Pos != pos || string(m.Payload.Data) != want || m.Publisher.User != "alice" {
				t.Errorf("message %+v at %v (publish said %v), payload %s", m, m.Pos, pos, m.Payload.Data)
			}
			if _, err := sub.Publish(ctx, Binary([]byte{0xff, 0})); err != nil {
				t.Fatal(err)
			}
			if m := recv(t, sub); !m.Payload.Binary || string(m.Payload.Data) != "\xff\x00" {
				t.Errorf("binary payload %+v", m.Payload)
			}
			members, err := c.Presence(ctx, "chat:lobby")
			if err != nil || len(members) != 1 || members[0].User != "alice" || string(members[0].Info) != `{"name":"Alice"}` {
				t.Errorf("Presence = %+v, %v", members, err)
			}
			if st, err := c.PresenceStats(ctx, "chat:lobby"); err != nil || st.Users != 1 || st.Conns != 1 {
				t.Errorf("PresenceStats = %+v, %v", st, err)
			}
			h, err := c.History(ctx, "chat:lobby", fabric.HistoryQuery{})
			if err != nil || len(h.Messages) != 2 || h.Pos.Offset != pos.Offset+1 {
				t.Errorf("History = %+v, %v", h, err)
			}
			if err := c.Send(ctx, JSON([]byte(`{"to":"backend"}`))); err != nil {
				t.Errorf("Send: %v", err)
			}
			if _, err := c.Publish(ctx, "news:x", JSON([]byte(`1`))); !errors.Is(err, fabric.ErrPermissionDenied) && !errors.Is(err, fabric.ErrNotAvailable) && !errors.Is(err, fabric.ErrNotJoined) {
				t.Errorf("publish to a backend-only namespace: %v", err)
			}
			// Pushes from the backend: a direct message and a server-side join.
			if _, err := n.Control.SendToUser(ctx, &pb.SendToUserRequest{User: "alice", Payload: jsonPayload(`"psst"`)}); err != nil {
				t.Fatal(err)
			}
			select {
			case p := <-direct:
				if string(p.Data) != `"psst"` {
					t.Errorf("direct %s", p.Data)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no direct message")
			}
			if _, err := n.Control.JoinRoom(ctx, &pb.JoinRoomRequest{Room: "news:today", Target: &pb.Target{Target: &pb.Target_User{User: "alice"}}}); err != nil {
				t.Fatal(err)
			}
			var news *Subscription
			select {
			case news = <-created:
			case <-time.After(10 * time.Second):
				t.Fatal("no server-side join")
			}
			controlPublish(t, n, "news:today", `"headline"`)
			if m := recv(t, news); string(m.Payload.Data) != `"headline"` {
				t.Errorf("news %s", m.Payload.Data)
			}
			if _, err := n.Control.LeaveRoom(ctx, &pb.LeaveRoomRequest{Room: "news:today", Target: &pb.Target{Target: &pb.Target_User{User: "alice"}}}); err != nil {
				t.Fatal(err)
			}
			select {
			case <-news.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("left push did not end the subscription")
			}
			if err := sub.Leave(ctx); err != nil {
				t.Errorf("Leave: %v", err)
			}
		})
	}
}

// dropFuncs break the connection in the ways a client meets in the wild.
var dropFuncs = []struct {
	name string
	drop func(t *testing.T, n *testnode.Node, c *Client)
}{
	{"kick with reconnect", func(t *testing.T, n *testnode.Node, c *Client) {
		_, err := n.Control.Kick(ctx10(t), &pb.KickRequest{Target: &pb.Target{Target: &pb.Target_Connection{Connection: c.Info().Conn}}, Reconnect: true, Reason: "test"})
		if err != nil {
			t.Fatalf("kick: %v", err)
		}
	}},
	{"tcp cut", func(t *testing.T, n *testnode.Node, c *Client) {
		c.mu.Lock()
		s := c.sess
		c.mu.Unlock()
		_ = s.ws.UnderlyingConn().Close()
	}},
}

func TestRealNodeRecoveryAcrossReconnect(t *testing.T) {
	for _, d := range dropFuncs {
		t.Run(d.name, func(t *testing.T) {
			n := testnode.Start(t, testnode.Options{})
			g := newGate(t, n, "bob")
			joins := make(chan JoinInfo, 4)
			c := newClient(t, n.WSURL, WithToken(""), WithTokenFunc(g.token))
			connect(t, c)
			sub, err := c.Join(ctx10(t), "chat:rec", WithJoinHandler(func(j JoinInfo) { joins <- j }))
			if err != nil {
				t.Fatal(err)
			}
			<-joins
			for i := 1; i <= 3; i++ {
				controlPublish(t, n, "chat:rec", fmt.Sprint(i))
			}
			for i := uint64(1); i <= 3; i++ {
				if m := recv(t, sub); m.Pos.Offset != i {
					t.Fatalf("offset %d, want %d", m.Pos.Offset, i)
				}
			}
			d.drop(t, n, c)
			// The reconnect waits in the token function until we have published.
			eventually(t, "reconnect attempt", func() bool { return g.waitingCalls() >= 2 })
			for i := 4; i <= 8; i++ {
				controlPublish(t, n, "chat:rec", fmt.Sprint(i))
			}
			g.open <- struct{}{}
			select {
			case j := <-joins:
				if !j.Rejoin || !j.Recovered || j.Missed != 5 || j.Gap() {
					t.Errorf("rejoin %+v, want recovered with 5 missed", j)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no rejoin")
			}
			controlPublish(t, n, "chat:rec", "9")
			for i := uint64(4); i <= 9; i++ {
				if m := recv(t, sub); m.Pos.Offset != i || string(m.Payload.Data) != fmt.Sprint(i) {
					t.Fatalf("got %d (%s), want %d", m.Pos.Offset, m.Payload.Data, i)
				}
			}
			if sub.Duplicates() != 0 {
				t.Logf("dropped %d duplicates", sub.Duplicates())
			}
		})
	}
}

func TestRealNodeRestartReportsGap(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	joins := make(chan JoinInfo, 4)
	tok := n.Token(t, "carol", jwtauth.Claims{})
	c := newClient(t, n.WSURL, WithToken(tok))
	connect(t, c)
	sub, err := c.Join(ctx10(t), "chat:gap", WithJoinHandler(func(j JoinInfo) { joins <- j }))
	if err != nil {
		t.Fatal(err)
	}
	first := <-joins
	controlPublish(t, n, "chat:gap", "1")
	recv(t, sub)
	n.Restart(t)
	var j JoinInfo
	select {
	case j = <-joins:
	case <-time.After(20 * time.Second):
		t.Fatal("no rejoin after restart")
	}
	if j.Recovered || !j.Gap() || !j.RecoveryAsked || j.Position.Epoch == first.Position.Epoch {
		t.Errorf("rejoin after restart %+v (first %+v): want recovered=false and a new epoch", j, first)
	}
	pos := controlPublish(t, n, "chat:gap", "2")
	if m := recv(t, sub); m.Pos != pos {
		t.Errorf("after restart got %v, want %v", m.Pos, pos)
	}
}

func TestRealNodeKickWithoutReconnectStops(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	c := newClient(t, n.WSURL, WithToken(n.Token(t, "dave", jwtauth.Claims{})))
	connect(t, c)
	sub, err := c.Join(ctx10(t), "chat:k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Control.Kick(ctx10(t), &pb.KickRequest{Target: &pb.Target{Target: &pb.Target_User{User: "dave"}}, Reason: "banned"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "closed", func() bool { return c.State() == StateClosed })
	var ce *CloseError
	if err := c.Err(); !errors.As(err, &ce) || ce.Code != fabric.CloseForbidden || ce.Reconnect {
		t.Errorf("Err = %v", err)
	}
	<-sub.Done()
	// No reconnect: the node holds no connection of dave.
	st, err := n.Control.GetPresenceStats(ctx10(t), &pb.GetPresenceStatsRequest{Room: "chat:k"})
	if err != nil || st.GetConnections() != 0 {
		t.Errorf("presence after kick: %v, %v", st, err)
	}
}

func TestRealNodeBadTokenStops(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	c := newClient(t, n.WSURL, WithToken("not-a-jwt"))
	err := c.Connect(ctx10(t))
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Connect with a bad token = %v", err)
	}
}

func TestRealNodeTokenRefresh(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	var mu sync.Mutex
	minted := 0
	tokens := func(context.Context) (string, error) {
		mu.Lock()
		minted++
		mu.Unlock()
		return n.Token(t, "erin", jwtauth.Claims{ExpiresAt: time.Now().Add(3 * time.Second)}), nil
	}
	c := newClient(t, n.WSURL, WithToken(""), WithTokenFunc(tokens))
	connect(t, c)
	conn := c.Info().Conn
	exp := c.Info().Expires
	if exp.IsZero() {
		t.Fatal("node reported no expiry")
	}
	eventually(t, "a refresh", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.refreshes >= 1 })
	if !c.Info().Expires.After(exp) {
		t.Errorf("expiry not extended: %v then %v", exp, c.Info().Expires)
	}
	// Past the first token's expiry the same connection still works.
	eventually(t, "first token expired", func() bool { return time.Now().After(exp.Add(500 * time.Millisecond)) })
	if _, err := c.PresenceStats(ctx10(t), "chat:x"); err != nil {
		t.Errorf("command after the first token expired: %v", err)
	}
	if got := c.Info().Conn; got != conn || c.State() != StateConnected {
		t.Errorf("connection changed (%s -> %s) or state %v", conn, got, c.State())
	}
}

func TestRealNodeHeartbeat(t *testing.T) {
	// The node pings from a sweep that runs once a second, so a ping interval below
	// a second is not honoured; use one second.
	n := testnode.Start(t, testnode.Options{Configure: func(cfg *app.Config) { cfg.PingInterval = time.Second }})
	reasons := make(chan error, 8)
	c := newClient(t, n.WSURL, WithToken(n.Token(t, "fay", jwtauth.Claims{})), WithHeartbeatGrace(1500*time.Millisecond),
		WithStateHandler(func(sc StateChange) {
			if sc.From == StateConnected && sc.To == StateDisconnected {
				reasons <- sc.Err
			}
		}))
	connect(t, c)
	conn := c.Info().Conn
	if c.Info().PingInterval != time.Second {
		t.Fatalf("ping interval %v", c.Info().PingInterval)
	}
	// Past ping interval plus grace the same connection is alive: the node's pings
	// kept the client's silence detector quiet, and the client's pongs the node's.
	deadline := time.Now().Add(3 * time.Second)
	eventually(t, "three seconds", func() bool { return time.Now().After(deadline) })
	if got := c.Info().Conn; got != conn || c.State() != StateConnected {
		t.Errorf("connection changed (%s -> %s) or state %v", conn, got, c.State())
	}
	select {
	case err := <-reasons:
		t.Errorf("disconnected: %v", err)
	default:
	}
}

func TestRealNodeTokenRoomRecovers(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	g := newGate(t, n, "gus")
	g.claims = jwtauth.Claims{Rooms: []string{"chat:mine"}}
	c := newClient(t, n.WSURL, WithToken(""), WithTokenFunc(g.token))
	connect(t, c)
	sub := c.Subscription("chat:mine")
	if sub == nil {
		t.Fatal("no subscription for the token's room")
	}
	controlPublish(t, n, "chat:mine", "1")
	recv(t, sub)
	dropFuncs[0].drop(t, n, c)
	eventually(t, "reconnect attempt", func() bool { return g.waitingCalls() >= 2 })
	controlPublish(t, n, "chat:mine", "2")
	controlPublish(t, n, "chat:mine", "3")
	g.open <- struct{}{}
	for want := uint64(2); want <= 3; want++ {
		if m := recv(t, sub); m.Pos.Offset != want {
			t.Fatalf("offset %d, want %d", m.Pos.Offset, want)
		}
	}
	if j := sub.LastJoin(); !j.Rejoin || !j.Recovered || j.Missed != 2 {
		t.Errorf("token room re-join %+v", j)
	}
}

// TestRealNodeRecoveredPayloadsVerbatim checks that messages recovered by a join (as
// after a reconnect) carry the bytes the publisher sent, exactly as the same messages
// received live do: key order, spacing and large integers included. Applications (and
// the recover benchmark) read payloads byte for byte; a recovered copy re-encoded by
// the server would look like a different message.
func TestRealNodeRecoveredPayloadsVerbatim(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	payloads := []string{`{"bt":1795650931852871,"bs":1,"br":0,"p":"xx"}`, `{"z": 1, "a": [1, 2.50], "big": 12345678901234567891}`}
	live := newClient(t, n.WSURL, WithToken(n.Token(t, "ann", jwtauth.Claims{})))
	connect(t, live)
	sub, err := live.Join(ctx10(t), "chat:verbatim")
	if err != nil {
		t.Fatal(err)
	}
	var first fabric.Position
	for i, p := range payloads {
		pos := controlPublish(t, n, "chat:verbatim", p)
		if i == 0 {
			first = fabric.Position{Epoch: pos.Epoch, Offset: pos.Offset - 1}
		}
		if m := recv(t, sub); string(m.Payload.Data) != p {
			t.Fatalf("live payload %s, want %s", m.Payload.Data, p)
		}
	}
	late := newClient(t, n.WSURL, WithToken(n.Token(t, "bo", jwtauth.Claims{})))
	connect(t, late)
	rsub, err := late.Join(ctx10(t), "chat:verbatim", WithRecoverFrom(first))
	if err != nil {
		t.Fatal(err)
	}
	if j := rsub.LastJoin(); !j.Recovered || j.Missed != len(payloads) {
		t.Fatalf("join %+v, want %d recovered", j, len(payloads))
	}
	for _, p := range payloads {
		if m := recv(t, rsub); string(m.Payload.Data) != p {
			t.Errorf("recovered payload %s, want %s", m.Payload.Data, p)
		}
	}
}
