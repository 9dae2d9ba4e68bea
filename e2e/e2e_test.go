// Package e2e tests a real roomcast node end to end: real WebSocket clients, the real
// control API over gRPC, the same wiring as `roomcast node`.
package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/app"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/testnode"
)

func TestMain(m *testing.M) {
	// memberlist does not wait for a probe already in flight when it shuts down.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}

func claimsAll() jwtauth.Claims { return jwtauth.Claims{} }

func TestConnectReturnsIdentityAndLimits(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	_, res := connect(t, n, "alice")
	if res.GetUser() != "alice" || res.GetNode() != n.Name || !strings.HasSuffix(res.GetConnection(), "@"+n.Name) {
		t.Fatalf("connect result %v", res)
	}
	if res.GetPingInterval().AsDuration() != 25*time.Second || res.GetLimits().GetMaxFrameBytes() == 0 {
		t.Fatalf("connect result lacks heartbeat/limits: %v", res)
	}
}

func TestAuthMatrix(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	pubDER, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	future := time.Now().Add(time.Hour).Unix()

	hs := func(secret []byte, claims jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	unsigned := func(alg string) string {
		h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"` + alg + `","typ":"JWT"}`))
		p := base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"sub":"mallory","exp":%d}`, future)))
		return h + "." + p + "."
	}
	valid := n.Token(t, "bob", claimsAll())
	parts := strings.Split(valid, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf(`{"sub":"admin","exp":%d}`, future))) + "." + parts[2]

	for name, tok := range map[string]string{
		"missing":            "",
		"garbage":            "not-a-jwt",
		"expired":            hs([]byte(testnode.Secret), jwt.MapClaims{"sub": "bob", "exp": time.Now().Add(-time.Hour).Unix()}),
		"no exp":             hs([]byte(testnode.Secret), jwt.MapClaims{"sub": "bob"}),
		"wrong secret":       hs([]byte("another-secret-another-secret-0123456"), jwt.MapClaims{"sub": "bob", "exp": future}),
		"alg none":           unsigned("none"),
		"alg None":           unsigned("None"),
		"alg NONE":           unsigned("NONE"),
		"tampered":           tampered,
		"hs256 with rsa pub": hs(pubPEM, jwt.MapClaims{"sub": "bob", "exp": future}),
		"rs256 not allowed": func() string {
			s, _ := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{"sub": "bob", "exp": future}).SignedString(key)
			return s
		}(),
		"nbf in future": hs([]byte(testnode.Secret), jwt.MapClaims{"sub": "bob", "exp": future, "nbf": future - 60}),
		"empty sub":     hs([]byte(testnode.Secret), jwt.MapClaims{"sub": "", "exp": future}),
	} {
		t.Run(name, func(t *testing.T) {
			c := mustDial(t, n, dialOpts{})
			c.send(&pb.ClientCommand{Id: 1, Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: tok}}})
			code, _ := c.closeCode()
			if code != int(pb.CloseCode_CLOSE_CODE_UNAUTHORIZED) {
				t.Fatalf("close code %d, want %d", code, pb.CloseCode_CLOSE_CODE_UNAUTHORIZED)
			}
		})
	}
	t.Run("valid", func(t *testing.T) {
		c := mustDial(t, n, dialOpts{})
		if res := c.connect(valid); res.GetUser() != "bob" {
			t.Fatalf("user %q", res.GetUser())
		}
	})
	t.Run("authorization header", func(t *testing.T) {
		c := mustDial(t, n, dialOpts{header: http.Header{"Authorization": {"Bearer " + valid}}})
		if res := c.connect(""); res.GetUser() != "bob" {
			t.Fatalf("user %q", res.GetUser())
		}
		_, resp, err := dial(t, n, dialOpts{header: http.Header{"Authorization": {"Bearer " + tampered}}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("bad header token: err=%v resp=%v", err, resp)
		}
	})
}

func TestWrongAudienceAndIssuer(t *testing.T) {
	n := testnode.Start(t, testnode.Options{Configure: func(c *app.Config) {
		c.JWTAudience, c.JWTIssuer = "roomcast", "https://auth.example.com"
	}})
	mint := func(opts ...jwtauth.MintOption) string {
		tok, err := jwtauth.Mint("HS256", "", []byte(testnode.Secret), jwtauth.Claims{User: "u", Join: []string{"*"}}, time.Hour, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	for name, tc := range map[string]struct {
		tok  string
		want int
	}{
		"wrong aud": {mint(jwtauth.WithAudience("other"), jwtauth.WithIssuer("https://auth.example.com")), 4500},
		"wrong iss": {mint(jwtauth.WithAudience("roomcast"), jwtauth.WithIssuer("https://evil.example.com")), 4500},
		"no aud":    {mint(jwtauth.WithIssuer("https://auth.example.com")), 4500},
	} {
		t.Run(name, func(t *testing.T) {
			c := mustDial(t, n, dialOpts{})
			c.send(&pb.ClientCommand{Id: 1, Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: tc.tok}}})
			if code, _ := c.closeCode(); code != tc.want {
				t.Fatalf("close %d, want %d", code, tc.want)
			}
		})
	}
	c := mustDial(t, n, dialOpts{})
	c.connect(mint(jwtauth.WithAudience("roomcast"), jwtauth.WithIssuer("https://auth.example.com")))
}

func TestFirstFrameMustBeConnect(t *testing.T) {
	n := testnode.Start(t, testnode.Options{Configure: func(c *app.Config) { c.AuthTimeout = 300 * time.Millisecond }})
	t.Run("join before connect", func(t *testing.T) {
		c := mustDial(t, n, dialOpts{})
		c.send(&pb.ClientCommand{Id: 1, Command: &pb.ClientCommand_Join{Join: &pb.JoinCommand{Room: "chat:x"}}})
		if code, _ := c.closeCode(); code != int(pb.CloseCode_CLOSE_CODE_CONNECT_EXPECTED) {
			t.Fatalf("close %d", code)
		}
	})
	t.Run("silence", func(t *testing.T) {
		c := mustDial(t, n, dialOpts{})
		if code, _ := c.closeCode(); code != int(pb.CloseCode_CLOSE_CODE_AUTH_TIMEOUT) {
			t.Fatalf("close %d", code)
		}
	})
}

func TestOriginAllowList(t *testing.T) {
	n := testnode.Start(t, testnode.Options{Configure: func(c *app.Config) {
		c.AllowedOrigins = []string{"https://app.example.com"}
	}})
	_, resp, err := dial(t, n, dialOpts{origin: "https://evil.example.com"})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin upgrade: err=%v resp=%v", err, resp)
	}
	// A lookalike must not pass by substring.
	_, resp, err = dial(t, n, dialOpts{origin: "https://app.example.com.evil.io"})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("lookalike origin: err=%v resp=%v", err, resp)
	}
	c := mustDial(t, n, dialOpts{origin: "https://app.example.com"})
	c.connect(n.Token(t, "u", claimsAll()))
}

func TestRoomPermissions(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	c := mustDial(t, n, dialOpts{})
	c.connect(n.Token(t, "u", jwtauth.Claims{Join: []string{"chat:public*"}, Publish: []string{}, Read: []string{}}))
	if e := c.join("chat:secret", nil).GetError(); e.GetCode() != pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED {
		t.Fatalf("join outside rights: %v", e)
	}
	if e := c.join("nope:x", nil).GetError(); e == nil {
		t.Fatal("join to an unknown namespace succeeded")
	}
	c.mustJoin("chat:public-1")
	if e := c.publish("chat:public-1", "hi").GetError(); e.GetCode() != pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED {
		t.Fatalf("publish without right: %v", e)
	}
	r := c.call(&pb.ClientCommand{Command: &pb.ClientCommand_Presence{Presence: &pb.PresenceCommand{Room: "chat:secret"}}})
	if r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED {
		t.Fatalf("presence of a room not joined and not readable: %v", r)
	}
	// Backend-only namespace: even with a publish right, clients may not publish.
	c2, _ := connect(t, n, "v")
	c2.mustJoin("news:today")
	if e := c2.publish("news:today", "x").GetError(); e == nil {
		t.Fatal("client published to a backend-only namespace")
	}
}

func TestPublishDeliversInOrderToEveryMember(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	const members, msgs = 5, 200
	var clients []*wsClient
	for i := range members {
		c, _ := connect(t, n, fmt.Sprintf("u%d", i))
		c.mustJoin("chat:order")
		clients = append(clients, c)
	}
	ctx := ctxT(t)
	var first uint64
	for i := range msgs {
		r, err := n.Control.Publish(ctx, &pb.PublishRequest{Room: "chat:order", Payload: jsonPayload(t, map[string]any{"i": i})})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = r.GetPosition().GetOffset()
		}
	}
	for ci, c := range clients {
		for i := range msgs {
			m := c.nextMessage()
			if m.GetOffset() != first+uint64(i) || m.GetPayload().GetJson().GetStructValue().GetFields()["i"].GetNumberValue() != float64(i) {
				t.Fatalf("client %d message %d: got %v", ci, i, m)
			}
		}
	}
}

func TestPresenceTwoTabsOneMember(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	tab1, r1 := connect(t, n, "alice")
	tab2, r2 := connect(t, n, "alice")
	bob, _ := connect(t, n, "bob")
	for _, c := range []*wsClient{tab1, tab2, bob} {
		c.mustJoin("chat:tabs")
	}
	p, err := n.Control.GetPresence(ctxT(t), &pb.GetPresenceRequest{Room: "chat:tabs"})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.GetMembers()) != 2 || p.GetMembers()[0].GetUser() != "alice" || len(p.GetMembers()[0].GetConnections()) != 2 {
		t.Fatalf("presence %v", p)
	}
	got := map[string]bool{}
	for _, c := range p.GetMembers()[0].GetConnections() {
		got[c] = true
	}
	if !got[r1.GetConnection()] || !got[r2.GetConnection()] {
		t.Fatalf("alice's connections %v, want %s and %s", p.GetMembers()[0].GetConnections(), r1.GetConnection(), r2.GetConnection())
	}
	st, err := n.Control.GetPresenceStats(ctxT(t), &pb.GetPresenceStatsRequest{Room: "chat:tabs"})
	if err != nil || st.GetUsers() != 2 || st.GetConnections() != 3 {
		t.Fatalf("stats %v %v", st, err)
	}
	// The client sees the same.
	r := bob.call(&pb.ClientCommand{Command: &pb.ClientCommand_PresenceStats{PresenceStats: &pb.PresenceStatsCommand{Room: "chat:tabs"}}})
	if r.GetPresenceStats().GetUsers() != 2 {
		t.Fatalf("client presence stats %v", r)
	}
}

func TestJoinLeaveEventsOncePerUser(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	stream, err := n.Control.StreamEvents(ctx, &pb.StreamEventsRequest{
		Types: []pb.EventType{pb.EventType_EVENT_TYPE_JOIN, pb.EventType_EVENT_TYPE_LEAVE}, RoomPattern: "chat:ev*"})
	if err != nil {
		t.Fatal(err)
	}
	watcher, _ := connect(t, n, "watcher")
	watcher.mustJoin("chat:events")
	if ev, err := stream.Recv(); err != nil || ev.GetEvent().GetUser() != "watcher" {
		t.Fatalf("first event %v %v", ev, err)
	}
	tab1, _ := connect(t, n, "alice")
	tab2, _ := connect(t, n, "alice")
	tab1.mustJoin("chat:events")
	tab2.mustJoin("chat:events") // second tab: no new join
	leave := func(c *wsClient) {
		if r := c.call(&pb.ClientCommand{Command: &pb.ClientCommand_Leave{Leave: &pb.LeaveCommand{Room: "chat:events"}}}); r.GetError() != nil {
			t.Fatal(r.GetError())
		}
	}
	leave(tab1) // alice still present through tab2
	leave(tab2) // now alice leaves
	want := []pb.EventType{pb.EventType_EVENT_TYPE_JOIN, pb.EventType_EVENT_TYPE_LEAVE}
	for _, w := range want {
		ev, err := stream.Recv()
		if err != nil || ev.GetEvent().GetType() != w || ev.GetEvent().GetUser() != "alice" || ev.GetEvent().GetRoom() != "chat:events" {
			t.Fatalf("want %v of alice, got %v %v", w, ev, err)
		}
	}
	// The watcher saw exactly one member_joined and one member_left for alice.
	var joined, left int
	watcher.call(&pb.ClientCommand{Command: &pb.ClientCommand_PresenceStats{PresenceStats: &pb.PresenceStatsCommand{Room: "chat:events"}}})
	for len(watcher.in) > 0 {
		m := <-watcher.in
		if m.GetMemberJoined().GetMember().GetUser() == "alice" {
			joined++
		}
		if m.GetMemberLeft().GetMember().GetUser() == "alice" {
			left++
		}
	}
	if joined != 1 || left != 1 {
		t.Fatalf("member_joined=%d member_left=%d, want 1 and 1", joined, left)
	}
}

func TestHistoryRecovery(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	ctx := ctxT(t)
	c, _ := connect(t, n, "alice")
	jr := c.mustJoin("chat:rec")
	pos := jr.GetPosition()
	for i := range 5 {
		if _, err := n.Control.Publish(ctx, &pb.PublishRequest{Room: "chat:rec", Payload: jsonPayload(t, i)}); err != nil {
			t.Fatal(err)
		}
	}
	// A second connection recovers from the first position: all 5, in order.
	c2, _ := connect(t, n, "alice")
	r := c2.join("chat:rec", pos).GetJoin()
	if !r.GetRecovered() || len(r.GetMessages()) != 5 {
		t.Fatalf("recovery inside the window: %v", r)
	}
	for i, m := range r.GetMessages() {
		if m.GetOffset() != pos.GetOffset()+uint64(i)+1 {
			t.Fatalf("recovered message %d has offset %d", i, m.GetOffset())
		}
	}
	// Outside the window (history keeps 3 here) and another epoch: recovered=false.
	n2 := testnode.Start(t, testnode.Options{Namespaces: append(testnode.DefaultNamespaces()[:1:1],
		testnodeNS("chat", 3))})
	c3, _ := connect(t, n2, "bob")
	p0 := c3.mustJoin("chat:small").GetPosition()
	for i := range 5 {
		if _, err := n2.Control.Publish(ctx, &pb.PublishRequest{Room: "chat:small", Payload: jsonPayload(t, i)}); err != nil {
			t.Fatal(err)
		}
	}
	c4, _ := connect(t, n2, "bob")
	if r := c4.join("chat:small", p0).GetJoin(); r.GetRecovered() || len(r.GetMessages()) != 0 {
		t.Fatalf("recovery outside the window must say recovered=false: %v", r)
	}
	c5, _ := connect(t, n2, "bob")
	if r := c5.join("chat:small", &pb.Position{Epoch: "another-epoch", Offset: 1}).GetJoin(); r.GetRecovered() {
		t.Fatalf("recovery from another epoch must say recovered=false: %v", r)
	}
	// History over the control API.
	h, err := n.Control.GetHistory(ctx, &pb.GetHistoryRequest{Room: "chat:rec", Limit: 2, Reverse: true})
	if err != nil || len(h.GetMessages()) != 2 || h.GetMessages()[0].GetOffset() != h.GetPosition().GetOffset() {
		t.Fatalf("history newest-first: %v %v", h, err)
	}
}

func TestKickCodes(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	for name, tc := range map[string]struct {
		reconnect bool
		want      pb.CloseCode
	}{
		"may reconnect": {true, pb.CloseCode_CLOSE_CODE_KICKED},
		"banned":        {false, pb.CloseCode_CLOSE_CODE_FORBIDDEN},
	} {
		t.Run(name, func(t *testing.T) {
			c, res := connect(t, n, "k-"+name)
			r, err := n.Control.Kick(ctxT(t), &pb.KickRequest{Target: &pb.Target{Target: &pb.Target_Connection{Connection: res.GetConnection()}},
				Reason: "bye", Reconnect: tc.reconnect})
			if err != nil || r.GetConnections() != 1 {
				t.Fatalf("kick: %v %v", r, err)
			}
			code, disc := c.closeCode()
			if code != int(tc.want) || disc == nil || disc.GetReconnect() != tc.reconnect || disc.GetReason() != "bye" {
				t.Fatalf("close %d, disconnect %v", code, disc)
			}
		})
	}
	// Kick by user closes every tab.
	a1, _ := connect(t, n, "multi")
	a2, _ := connect(t, n, "multi")
	r, err := n.Control.Kick(ctxT(t), &pb.KickRequest{Target: &pb.Target{Target: &pb.Target_User{User: "multi"}}, Reconnect: true})
	if err != nil || r.GetConnections() != 2 {
		t.Fatalf("kick user: %v %v", r, err)
	}
	a1.closeCode()
	a2.closeCode()
}

func TestSlowConsumerIsDisconnectedOthersUnaffected(t *testing.T) {
	n := testnode.Start(t, testnode.Options{Configure: func(c *app.Config) {
		c.MaxQueueMessages, c.MaxQueueBytes = 1024, 1<<20
	}})
	// Publishing 24 MB one unary call at a time takes a while under -race.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	events, err := n.Control.StreamEvents(ctx, &pb.StreamEventsRequest{Types: []pb.EventType{pb.EventType_EVENT_TYPE_DISCONNECT}, User: "slow"})
	if err != nil {
		t.Fatal(err)
	}
	fast, _ := connect(t, n, "fast")
	fast.mustJoin("feed")
	// The slow client joins, then never reads again: kernel buffers fill, then its queue.
	slow, _, err := websocket.DefaultDialer.Dial(n.WSURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	for i, cmd := range []*pb.ClientCommand{
		{Id: 1, Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: n.Token(t, "slow", claimsAll())}}},
		{Id: 2, Command: &pb.ClientCommand_Join{Join: &pb.JoinCommand{Room: "feed"}}},
	} {
		b, _ := protojsonMarshal(cmd)
		if err := slow.WriteMessage(websocket.TextMessage, b); err != nil {
			t.Fatal(err)
		}
		_ = slow.SetReadDeadline(time.Now().Add(wait))
		if _, _, err := slow.ReadMessage(); err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
	}
	big := strings.Repeat("x", 8<<10)
	const msgs = 3000 // 24 MB: more than loopback socket buffers and the queue hold
	done := make(chan error, 1)
	go func() {
		for i := range msgs {
			if _, err := n.Control.Publish(ctx, &pb.PublishRequest{Room: "feed", Payload: jsonPayload(t, map[string]any{"i": i, "pad": big})}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	// The fast client gets every message, in order, while the slow one is cut off.
	var last uint64
	for i := range msgs {
		m := fast.nextMessage()
		if i > 0 && m.GetOffset() != last+1 {
			t.Fatalf("fast client: offset %d after %d", m.GetOffset(), last)
		}
		last = m.GetOffset()
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ev, err := events.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ev.GetEvent().GetCode() != uint32(pb.CloseCode_CLOSE_CODE_SLOW) {
		t.Fatalf("slow client disconnected with %v, want code %d", ev.GetEvent(), pb.CloseCode_CLOSE_CODE_SLOW)
	}
}

func TestFrameLimitsAndUTF8(t *testing.T) {
	n := testnode.Start(t, testnode.Options{Configure: func(c *app.Config) { c.MaxFrameBytes = 1024 }})
	t.Run("frame too big", func(t *testing.T) {
		c, _ := connect(t, n, "u")
		if err := c.conn.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("a", 4096))); err != nil {
			t.Fatal(err)
		}
		if code, _ := c.closeCode(); code != websocket.CloseMessageTooBig {
			t.Fatalf("close %d", code)
		}
	})
	t.Run("invalid utf-8", func(t *testing.T) {
		c, _ := connect(t, n, "u")
		if err := c.conn.WriteMessage(websocket.TextMessage, []byte{'{', 0xff, 0xfe, '}'}); err != nil {
			t.Fatal(err)
		}
		if code, _ := c.closeCode(); code != websocket.CloseInvalidFramePayloadData {
			t.Fatalf("close %d", code)
		}
	})
	t.Run("malformed command", func(t *testing.T) {
		c, _ := connect(t, n, "u")
		if err := c.conn.WriteMessage(websocket.TextMessage, []byte(`{"id":1,"nope":{}}`)); err != nil {
			t.Fatal(err)
		}
		if code, _ := c.closeCode(); code != int(pb.CloseCode_CLOSE_CODE_BAD_FRAME) {
			t.Fatalf("close %d", code)
		}
	})
	// Nobody else noticed.
	c, _ := connect(t, n, "survivor")
	c.mustJoin("chat:ok")
}

func TestCommandRateLimit(t *testing.T) {
	n := testnode.Start(t, testnode.Options{Configure: func(c *app.Config) { c.CommandRate, c.CommandBurst = 1, 5 }})
	c, _ := connect(t, n, "spammer")
	limited := false
	for i := 0; i < 20 && !limited; i++ {
		r := c.call(&pb.ClientCommand{Command: &pb.ClientCommand_PresenceStats{PresenceStats: &pb.PresenceStatsCommand{Room: "chat:x"}}})
		limited = r.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_RATE_LIMITED
	}
	if !limited {
		t.Fatal("20 commands at once with a burst of 5 were never rate limited")
	}
}

func TestDrainTellsClientsToReconnectElsewhere(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	var clients []*wsClient
	for i := range 10 {
		c, _ := connect(t, n, fmt.Sprintf("d%d", i))
		clients = append(clients, c)
	}
	go n.Stop()
	for _, c := range clients {
		code, disc := c.closeCode()
		if code != int(pb.CloseCode_CLOSE_CODE_SHUTDOWN) || disc == nil || !disc.GetReconnect() {
			t.Fatalf("drain close %d %v", code, disc)
		}
	}
}

func TestProtobufSubprotocolBinaryRoundTrip(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	pc := mustDial(t, n, dialOpts{subprotocol: "roomcast.v1.proto"})
	if pc.conn.Subprotocol() != "roomcast.v1.proto" {
		t.Fatalf("subprotocol %q", pc.conn.Subprotocol())
	}
	pc.connect(n.Token(t, "p", claimsAll()))
	pc.mustJoin("chat:bin")
	jc, _ := connect(t, n, "j")
	jc.mustJoin("chat:bin")
	raw := []byte{0, 1, 2, 0xff, 0xfe, 'x'}
	if _, err := n.Control.Publish(ctxT(t), &pb.PublishRequest{Room: "chat:bin", Payload: &pb.Payload{Kind: &pb.Payload_Binary{Binary: raw}}}); err != nil {
		t.Fatal(err)
	}
	if got := pc.nextMessage().GetPayload().GetBinary(); string(got) != string(raw) {
		t.Fatalf("proto client got %x", got)
	}
	if got := jc.nextMessage().GetPayload().GetBinary(); string(got) != string(raw) {
		t.Fatalf("json client got %x", got)
	}
}

func TestJSONPayloadIsJSONOnTheWire(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	c, _ := connect(t, n, "j")
	c.mustJoin("chat:raw")
	// Read the raw frame ourselves: stop the decoding reader by using a second dialer.
	d := websocket.Dialer{}
	raw, _, err := d.Dial(n.WSURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	send := func(cmd *pb.ClientCommand) {
		b, _ := protojsonMarshal(cmd)
		if err := raw.WriteMessage(websocket.TextMessage, b); err != nil {
			t.Fatal(err)
		}
	}
	read := func() []byte {
		_ = raw.SetReadDeadline(time.Now().Add(wait))
		_, b, err := raw.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	send(&pb.ClientCommand{Id: 1, Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: n.Token(t, "raw", claimsAll())}}})
	read()
	send(&pb.ClientCommand{Id: 2, Command: &pb.ClientCommand_Join{Join: &pb.JoinCommand{Room: "chat:raw"}}})
	read()
	if _, err := n.Control.Publish(ctxT(t), &pb.PublishRequest{Room: "chat:raw", Payload: &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: `{"text":"héllo","n":1}`}}}); err != nil {
		t.Fatal(err)
	}
	for {
		b := read()
		if !strings.Contains(string(b), `"message"`) {
			continue
		}
		var frame struct {
			Message struct {
				Payload struct {
					JSON map[string]any `json:"json"`
				} `json:"payload"`
			} `json:"message"`
		}
		if err := json.Unmarshal(b, &frame); err != nil || frame.Message.Payload.JSON["text"] != "héllo" {
			t.Fatalf("frame %s: payload not JSON: %v", b, err)
		}
		return
	}
}

func TestPublishStreamAcksInOrder(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	stream, err := n.Control.PublishStream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	const count = 500
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range count {
			room := "news:s"
			if i%100 == 99 {
				room = "" // invalid: acked with an error, stream continues
			}
			_ = stream.Send(&pb.PublishStreamRequest{RequestId: uint64(i), Room: room, Payload: jsonPayload(t, i)})
		}
		_ = stream.CloseSend()
	}()
	var last uint64
	for i := range count {
		ack, err := stream.Recv()
		if err != nil {
			t.Fatalf("ack %d: %v", i, err)
		}
		if ack.GetRequestId() != uint64(i) {
			t.Fatalf("ack %d has request id %d", i, ack.GetRequestId())
		}
		if i%100 == 99 {
			if ack.GetError() == nil {
				t.Fatalf("publish %d to an invalid room succeeded", i)
			}
			continue
		}
		if off := ack.GetPosition().GetOffset(); off != last+1 {
			t.Fatalf("ack %d offset %d after %d", i, off, last)
		}
		last = ack.GetPosition().GetOffset()
	}
	wg.Wait()
}

func TestControlAPIErrors(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	ctx := ctxT(t)
	_, err := n.Control.Publish(ctx, &pb.PublishRequest{Room: "nope:x", Payload: jsonPayload(t, 1)})
	if status.Code(err) == codes.OK {
		t.Fatal("publish to unknown namespace succeeded")
	}
	_, err = n.Control.SendToConnection(ctx, &pb.SendToConnectionRequest{Connection: "zz@" + n.Name, Payload: jsonPayload(t, 1)})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("send to unknown connection: %v", err)
	}
	_, err = n.Control.GetPresence(ctx, &pb.GetPresenceRequest{Room: "news:x"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("presence where the namespace has none: %v", err)
	}
}

func TestDirectMessagesAndServerSideJoin(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	ctx := ctxT(t)
	c, res := connect(t, n, "dm")
	if r, err := n.Control.SendToUser(ctx, &pb.SendToUserRequest{User: "dm", Payload: jsonPayload(t, "hello")}); err != nil || r.GetConnections() != 1 {
		t.Fatalf("send to user: %v %v", r, err)
	}
	if m := c.next(); m.GetDirect().GetPayload().GetJson().GetStringValue() != "hello" {
		t.Fatalf("direct %v", m)
	}
	if _, err := n.Control.SendToConnection(ctx, &pb.SendToConnectionRequest{Connection: res.GetConnection(), Payload: jsonPayload(t, "hi conn")}); err != nil {
		t.Fatal(err)
	}
	if m := c.next(); m.GetDirect().GetPayload().GetJson().GetStringValue() != "hi conn" {
		t.Fatalf("direct %v", m)
	}
	if r, err := n.Control.JoinRoom(ctx, &pb.JoinRoomRequest{Room: "chat:srv", Target: &pb.Target{Target: &pb.Target_User{User: "dm"}}}); err != nil || r.GetConnections() != 1 {
		t.Fatalf("join room: %v %v", r, err)
	}
	if m := c.next(); m.GetJoined().GetJoin().GetRoom() != "chat:srv" {
		t.Fatalf("joined push %v", m)
	}
	if _, err := n.Control.Publish(ctx, &pb.PublishRequest{Room: "chat:srv", Payload: jsonPayload(t, "in")}); err != nil {
		t.Fatal(err)
	}
	if m := c.nextMessage(); m.GetRoom() != "chat:srv" {
		t.Fatalf("message %v", m)
	}
	if r, err := n.Control.LeaveRoom(ctx, &pb.LeaveRoomRequest{Room: "chat:srv", Target: &pb.Target{Target: &pb.Target_Connection{Connection: res.GetConnection()}}}); err != nil || r.GetConnections() != 1 {
		t.Fatalf("leave room: %v %v", r, err)
	}
	for {
		if m := c.next(); m.GetLeft() != nil {
			break
		}
	}
	rooms, err := n.Control.ListRooms(ctx, &pb.ListRoomsRequest{Prefix: "chat:"})
	if err != nil || len(rooms.GetRooms()) != 1 || rooms.GetRooms()[0].GetName() != "chat:srv" {
		t.Fatalf("list rooms: %v %v", rooms, err)
	}
	nodes, err := n.Control.ListNodes(ctx, &pb.ListNodesRequest{})
	if err != nil || len(nodes.GetNodes()) != 1 || nodes.GetNodes()[0].GetConnections() != 1 {
		t.Fatalf("list nodes: %v %v", nodes, err)
	}
}

func testnodeNS(name string, history int) fabric.Namespace {
	return fabric.Namespace{Name: name, Presence: true, JoinLeave: true, HistorySize: history, HistoryTTL: time.Hour, ClientPublish: true}
}

func protojsonMarshal(m proto.Message) ([]byte, error) { return protojson.Marshal(m) }

func TestDevModeServesDemoAndTokens(t *testing.T) {
	n := testnode.Start(t, testnode.Options{Configure: func(c *app.Config) { c.Dev = true }})
	resp, err := http.Get(n.HTTPURL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("demo: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	resp, err = http.Get(n.HTTPURL + "/dev/token?user=carol")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Token string }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Token == "" {
		t.Fatalf("dev token: %v %+v", err, body)
	}
	c := mustDial(t, n, dialOpts{origin: "http://anywhere.example"})
	if res := c.connect(body.Token); res.GetUser() != "carol" {
		t.Fatalf("user %q", res.GetUser())
	}
}

func TestProductionModeHasNoDevEndpoints(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	resp, err := http.Get(n.HTTPURL + "/dev/token?user=x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/dev/token outside dev mode: %d", resp.StatusCode)
	}
}
