package client

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// newClient starts a client against url; t.Cleanup closes it.
func newClient(t *testing.T, url string, opts ...Option) *Client {
	t.Helper()
	opts = append([]Option{WithToken("tok"), WithLogger(quiet), WithBackoff(5*time.Millisecond, 20*time.Millisecond)}, opts...)
	c, err := New(url, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func connect(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("Connect: %v", err)
	}
}

func ctx10(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// recv returns the next message of sub or fails after a generous bound.
func recv(t *testing.T, sub *Subscription) *fabric.Message {
	t.Helper()
	select {
	case m, ok := <-sub.Messages():
		if !ok {
			t.Fatalf("subscription %s ended: %v", sub.Room(), sub.Err())
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatalf("no message in %s", sub.Room())
		return nil
	}
}

// eventually polls cond until it holds, failing after a generous bound.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond) // polling interval, not synchronisation
	}
}

// startConnected starts a fake server, lets setup (when not nil) steer it before
// the client connects, and returns the server, a connected client made with opts,
// and the server's side of the connection.
func startConnected(t *testing.T, setup func(fs *fakeServer), opts ...Option) (*fakeServer, *Client, *fakeConn) {
	t.Helper()
	fs := newFakeServer(t)
	if setup != nil {
		fs.set(setup)
	}
	c := newClient(t, fs.url(), opts...)
	connect(t, c)
	return fs, c, fs.next(t)
}

// withTokenRoom is a setup for startConnected: the token's rooms claim joins the
// connection to news:auto at connect.
func withTokenRoom(fs *fakeServer) { fs.connectRooms = []string{"news:auto"} }

// tokenRoom waits for the client's subscription to news:auto, the room the server
// joined it to (withTokenRoom).
func tokenRoom(t *testing.T, c *Client) *Subscription {
	t.Helper()
	var sub *Subscription
	eventually(t, "token room", func() bool { sub = c.Subscription("news:auto"); return sub != nil })
	return sub
}

// startAtTokenRoom is startConnected with withTokenRoom, returning also the
// subscription to news:auto once it has delivered its first message (e1/1).
func startAtTokenRoom(t *testing.T) (*fakeServer, *Client, *fakeConn, *Subscription) {
	t.Helper()
	fs, c, fc := startConnected(t, withTokenRoom)
	sub := tokenRoom(t, c)
	fs.publish("news:auto", jsonPayload("1"), nil)
	recv(t, sub)
	return fs, c, fc, sub
}

// outage drops the connection with drop and refuses reconnects while during runs
// (the server moves on without the client), then lets the client back in and
// returns its new connection.
func (fs *fakeServer) outage(t *testing.T, c *Client, drop, during func()) *fakeConn {
	t.Helper()
	fs.set(func(fs *fakeServer) { fs.refuse = true })
	drop()
	eventually(t, "disconnect", func() bool { return c.State() != StateConnected })
	during()
	fs.set(func(fs *fakeServer) { fs.refuse = false })
	return fs.next(t)
}

func TestBackoffFullJitter(t *testing.T) {
	b := Backoff{Min: 500 * time.Millisecond, Max: 20 * time.Second}
	if err := b.fill(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		attempt int
		r       float64
		want    time.Duration
	}{
		{0, 0.5, 250 * time.Millisecond},
		{0, 0.999, 499500 * time.Microsecond},
		{1, 0.5, 500 * time.Millisecond},
		{3, 1.0 / 4, 1 * time.Second},
		{5, 0.5, 8 * time.Second},
		{6, 0.5, 10 * time.Second},    // ceiling capped at Max
		{200, 0.5, 10 * time.Second},  // no overflow
		{0, 0, 10 * time.Millisecond}, // floor
		{-1, 0.5, 250 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run("", func(t *testing.T) {
			if got := b.Delay(tt.attempt, tt.r); got != tt.want {
				t.Errorf("Delay(%d, %v) = %v, want %v", tt.attempt, tt.r, got, tt.want)
			}
		})
	}
	for attempt := range 40 {
		ceil := min(b.Max, b.Min<<min(attempt, 30))
		if got := b.Ceiling(attempt); got != ceil {
			t.Errorf("Ceiling(%d) = %v, want %v", attempt, got, ceil)
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		url  string
		opts []Option
	}{
		{"no token", "ws://x/ws", nil},
		{"bad scheme", "http://x/ws", []Option{WithToken("t")}},
		{"min above max", "ws://x/ws", []Option{WithToken("t"), WithBackoff(time.Second, time.Millisecond)}},
		{"token and func", "ws://x/ws", []Option{WithToken("t"), WithTokenFunc(func(context.Context) (string, error) { return "", nil })}},
		{"negative timeout", "ws://x/ws", []Option{WithToken("t"), WithCommandTimeout(-1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if c, err := New(tt.url, tt.opts...); err == nil {
				_ = c.Close()
				t.Fatal("New succeeded")
			}
		})
	}
}

// stepClock is a Clock whose timers fire at once and which records every wait.
type stepClock struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (s *stepClock) Now() time.Time { return time.Now() }
func (s *stepClock) NewTimer(d time.Duration) Timer {
	s.mu.Lock()
	s.waits = append(s.waits, d)
	s.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- time.Now()
	return stepTimer{ch}
}
func (s *stepClock) recorded() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.waits)
}

type stepTimer struct{ ch chan time.Time }

func (t stepTimer) C() <-chan time.Time { return t.ch }
func (t stepTimer) Stop() bool          { return false }

func TestReconnectScheduleIsDeterministic(t *testing.T) {
	fs := newFakeServer(t)
	fs.set(func(fs *fakeServer) { fs.refuse = true })
	clock := &stepClock{}
	rs := []float64{0.9, 0.1, 0.5, 0.75, 0.25, 0.0, 0.99, 0.5, 0.5, 0.5}
	var i int
	sched := Backoff{Min: 100 * time.Millisecond, Max: 1 * time.Second, Floor: 5 * time.Millisecond}
	c := newClient(t, fs.url(), WithClock(clock), WithBackoffSchedule(sched),
		WithRand(func() float64 { r := rs[i%len(rs)]; i++; return r }))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = c.Connect(ctx) // starts the client; returns at once
	eventually(t, "ten reconnect waits", func() bool { return len(clock.recorded()) >= len(rs) })
	_ = c.Close()
	got := clock.recorded()[:len(rs)]
	for n, r := range rs {
		if want := sched.Delay(n, r); got[n] != want {
			t.Errorf("wait %d = %v, want %v (full jitter of %v)", n, got[n], want, sched.Ceiling(n))
		}
	}
	// The waits grow to the cap and never leave [floor, max].
	for _, d := range got {
		if d < sched.Floor || d > sched.Max {
			t.Errorf("wait %v outside [%v, %v]", d, sched.Floor, sched.Max)
		}
	}
}

func TestCommandsAndPushes(t *testing.T) {
	for _, proto := range []bool{false, true} {
		name := "json"
		if proto {
			name = "proto"
		}
		t.Run(name, func(t *testing.T) {
			fs := newFakeServer(t)
			var (
				mu     sync.Mutex
				direct []string
				joined []string
				left   []string
				states []State
			)
			opts := []Option{
				WithDirectHandler(func(p fabric.Payload) { mu.Lock(); direct = append(direct, string(p.Data)); mu.Unlock() }),
				WithMemberHandlers(
					func(room string, m fabric.ClientInfo) {
						mu.Lock()
						joined = append(joined, room+"/"+m.User)
						mu.Unlock()
					},
					func(room string, m fabric.ClientInfo) { mu.Lock(); left = append(left, room+"/"+m.User); mu.Unlock() }),
				WithStateHandler(func(sc StateChange) { mu.Lock(); states = append(states, sc.To); mu.Unlock() }),
			}
			if proto {
				opts = append(opts, WithProtobuf())
			}
			c := newClient(t, fs.url(), opts...)
			connect(t, c)
			fc := fs.next(t)
			if got := c.Info(); got.Conn != fc.id || got.User != "u-tok" {
				t.Errorf("Info = %+v", got)
			}
			ctx := ctx10(t)
			sub, err := c.Join(ctx, "chat:a")
			if err != nil {
				t.Fatalf("Join: %v", err)
			}
			if ji := sub.LastJoin(); ji.Rejoin || ji.Position.Epoch != "e1" || !ji.Recoverable {
				t.Errorf("JoinInfo = %+v", ji)
			}
			pos, err := c.Publish(ctx, "chat:a", JSON([]byte(`{"n":1}`)))
			if err != nil || pos != (fabric.Position{Epoch: "e1", Offset: 1}) {
				t.Fatalf("Publish = %v, %v", pos, err)
			}
			m := recv(t, sub)
			if string(m.Payload.Data) != `{"n":1}` || m.Pos.Offset != 1 || m.Publisher.User != "u-tok" || m.Time.IsZero() {
				t.Errorf("message = %+v", m)
			}
			if _, err := sub.Publish(ctx, Binary([]byte{0, 1, 2})); err != nil {
				t.Fatalf("binary publish: %v", err)
			}
			if m := recv(t, sub); !m.Payload.Binary || string(m.Payload.Data) != "\x00\x01\x02" {
				t.Errorf("binary message = %+v", m.Payload)
			}
			if _, err := c.Publish(ctx, "chat:a", JSON([]byte(`{bad`))); !errors.Is(err, fabric.ErrBadRequest) {
				t.Errorf("invalid JSON publish: %v", err)
			}
			members, err := c.Presence(ctx, "chat:a")
			if err != nil || len(members) != 1 || members[0].User != "u-tok" {
				t.Errorf("Presence = %+v, %v", members, err)
			}
			st, err := c.PresenceStats(ctx, "chat:a")
			if err != nil || st != (fabric.Stats{Users: 1, Conns: 1}) {
				t.Errorf("PresenceStats = %+v, %v", st, err)
			}
			h, err := c.History(ctx, "chat:a", fabric.HistoryQuery{Limit: 10})
			if err != nil || len(h.Messages) != 2 || h.Pos.Offset != 2 {
				t.Errorf("History = %+v, %v", h, err)
			}
			if err := c.Send(ctx, JSON([]byte(`"hi"`))); err != nil {
				t.Errorf("Send: %v", err)
			}
			if got := fc.expect(t, "send").GetSend().GetPayload().GetJsonText(); got != `"hi"` {
				t.Errorf("server got send %q", got)
			}
			// Pushes.
			fc.send(&pb.ServerMessage{Body: &pb.ServerMessage_Direct{Direct: &pb.DirectMessage{Payload: jsonPayload(`"dm"`)}}})
			fc.send(&pb.ServerMessage{Body: &pb.ServerMessage_MemberJoined{MemberJoined: &pb.MemberJoined{Room: "chat:a", Member: &pb.ClientInfo{User: "bob"}}}})
			fc.send(&pb.ServerMessage{Body: &pb.ServerMessage_MemberLeft{MemberLeft: &pb.MemberLeft{Room: "chat:a", Member: &pb.ClientInfo{User: "bob"}}}})
			eventually(t, "pushes", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(direct) == 1 && len(joined) == 1 && len(left) == 1
			})
			mu.Lock()
			if direct[0] != `"dm"` || joined[0] != "chat:a/bob" || left[0] != "chat:a/bob" {
				t.Errorf("pushes: %q %q %q", direct, joined, left)
			}
			mu.Unlock()
			// Ping is answered with pong.
			fc.send(&pb.ServerMessage{Body: &pb.ServerMessage_Ping{Ping: &pb.Ping{}}})
			if cmd := fc.expect(t, "pong"); cmd.GetId() != 0 {
				t.Errorf("pong id = %d", cmd.GetId())
			}
			if err := sub.Leave(ctx); err != nil {
				t.Errorf("Leave: %v", err)
			}
			fc.expect(t, "leave")
			if _, ok := <-sub.Messages(); ok {
				t.Error("message channel open after Leave")
			}
			if !errors.Is(sub.Err(), ErrNotSubscribed) {
				t.Errorf("sub.Err = %v", sub.Err())
			}
			_ = c.Close()
			if c.State() != StateClosed {
				t.Errorf("State = %v", c.State())
			}
			if _, err := c.Publish(ctx, "chat:a", JSON([]byte(`1`))); !errors.Is(err, ErrClosed) {
				t.Errorf("Publish after Close: %v", err)
			}
			mu.Lock()
			if want := []State{StateConnecting, StateConnected, StateClosed}; !slices.Equal(states, want) {
				t.Errorf("states = %v, want %v", states, want)
			}
			mu.Unlock()
		})
	}
}

func TestServerErrorsAreTyped(t *testing.T) {
	fs := newFakeServer(t)
	fs.set(func(fs *fakeServer) { fs.forbidden["chat:secret"] = true })
	c := newClient(t, fs.url())
	connect(t, c)
	ctx := ctx10(t)
	_, err := c.Join(ctx, "chat:secret")
	var e *Error
	if !errors.As(err, &e) || e.Code != pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED || e.Temporary {
		t.Fatalf("Join error = %#v", err)
	}
	if !errors.Is(err, fabric.ErrPermissionDenied) {
		t.Error("errors.Is(err, fabric.ErrPermissionDenied) = false")
	}
	if c.Subscription("chat:secret") != nil {
		t.Error("a failed join left a subscription")
	}
	if _, err := c.Join(ctx, "chat:a"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Join(ctx, "chat:a"); !errors.Is(err, fabric.ErrAlreadyJoined) {
		t.Errorf("second Join = %v", err)
	}
}

func TestReconnectRecoversMissedMessages(t *testing.T) {
	tests := []struct {
		name string
		drop func(fc *fakeConn)
	}{
		{"tcp cut", func(fc *fakeConn) { fc.cut() }},
		{"kicked with reconnect", func(fc *fakeConn) { fc.kill(int(fabric.CloseKicked), "kicked", true) }},
		{"shutdown", func(fc *fakeConn) { fc.kill(int(fabric.CloseShutdown), "draining", true) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs, c, fc := startConnected(t, nil)
			var joins []JoinInfo
			var mu sync.Mutex
			ctx := ctx10(t)
			sub, err := c.Join(ctx, "chat:r", WithJoinHandler(func(j JoinInfo) { mu.Lock(); joins = append(joins, j); mu.Unlock() }))
			if err != nil {
				t.Fatal(err)
			}
			fs.publish("chat:r", jsonPayload("1"), nil)
			fs.publish("chat:r", jsonPayload("2"), nil)
			recv(t, sub)
			recv(t, sub)
			// Publish while the client is away: the server has them, the client not.
			fc2 := fs.outage(t, c, func() { tt.drop(fc) }, func() {
				fs.publish("chat:r", jsonPayload("3"), nil)
				fs.publish("chat:r", jsonPayload("4"), nil)
			})
			jc := fc2.expect(t, "join").GetJoin()
			if rf := jc.GetRecoverFrom(); rf.GetEpoch() != "e1" || rf.GetOffset() != 2 {
				t.Errorf("rejoin recover_from = %v, want e1/2", rf)
			}
			for want := uint64(3); want <= 4; want++ {
				if m := recv(t, sub); m.Pos.Offset != want {
					t.Fatalf("got offset %d, want %d", m.Pos.Offset, want)
				}
			}
			fs.publish("chat:r", jsonPayload("5"), nil)
			if m := recv(t, sub); m.Pos.Offset != 5 {
				t.Fatalf("live message offset %d, want 5", m.Pos.Offset)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(joins) != 2 || joins[0].Rejoin || !joins[1].Rejoin || !joins[1].Recovered || joins[1].Missed != 2 || joins[1].Gap() {
				t.Errorf("joins = %+v", joins)
			}
		})
	}
}

func TestRejoinAfterEpochChangeReportsNotRecovered(t *testing.T) {
	fs, c, fc := startConnected(t, nil)
	ctx := ctx10(t)
	gaps := make(chan JoinInfo, 4)
	sub, err := c.Join(ctx, "chat:r", WithJoinHandler(func(j JoinInfo) { gaps <- j }))
	if err != nil {
		t.Fatal(err)
	}
	<-gaps
	fs.publish("chat:r", jsonPayload("1"), nil)
	recv(t, sub)
	fs.restart("e2")
	fc.cut()
	fs.next(t)
	select {
	case j := <-gaps:
		if j.Recovered || !j.RecoveryAsked || !j.Gap() || j.Position.Epoch != "e2" {
			t.Errorf("rejoin = %+v, want an honest recovered=false", j)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no rejoin")
	}
	fs.publish("chat:r", jsonPayload("new"), nil)
	if m := recv(t, sub); m.Pos != (fabric.Position{Epoch: "e2", Offset: 1}) {
		t.Errorf("message after epoch change at %v", m.Pos)
	}
}

func TestDuplicatesAreDropped(t *testing.T) {
	_, c, fc := startConnected(t, nil)
	sub, err := c.Join(ctx10(t), "chat:d")
	if err != nil {
		t.Fatal(err)
	}
	msg := func(off uint64) *pb.ServerMessage {
		return &pb.ServerMessage{Body: &pb.ServerMessage_Message{Message: &pb.RoomMessage{Room: "chat:d", Epoch: "e1", Offset: off, Payload: jsonPayload("1")}}}
	}
	for _, off := range []uint64{1, 2, 2, 1, 3, 3} {
		fc.send(msg(off))
	}
	for want := uint64(1); want <= 3; want++ {
		if m := recv(t, sub); m.Pos.Offset != want {
			t.Fatalf("offset %d, want %d", m.Pos.Offset, want)
		}
	}
	eventually(t, "duplicates counted", func() bool { return sub.Duplicates() == 3 })
}

func TestOfflineQueue(t *testing.T) {
	fs := newFakeServer(t)
	c := newClient(t, fs.url(), WithQueueSize(2))
	ctx := ctx10(t)
	type res struct {
		pos fabric.Position
		err error
	}
	results := make(chan res, 2)
	for i := range 2 {
		go func() {
			p, err := c.Publish(ctx, "chat:q", JSON([]byte{'0' + byte(i)}))
			results <- res{p, err}
		}()
	}
	eventually(t, "two queued commands", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.queue) == 2
	})
	if _, err := c.Publish(ctx, "chat:q", JSON([]byte("9"))); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("third command: %v, want ErrQueueFull", err)
	}
	connect(t, c)
	fc := fs.next(t)
	var order []string
	for range 2 {
		order = append(order, fc.expect(t, "publish").GetPublish().GetPayload().GetJsonText())
	}
	c.mu.Lock()
	q := c.queue
	c.mu.Unlock()
	if len(q) != 0 {
		t.Errorf("queue not empty: %d", len(q))
	}
	offsets := map[uint64]bool{}
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Fatalf("queued publish: %v", r.err)
		}
		offsets[r.pos.Offset] = true
	}
	if !offsets[1] || !offsets[2] || len(order) != 2 {
		t.Errorf("offsets %v, order %v", offsets, order)
	}
}

func TestQueuedCommandsKeepTheirOrder(t *testing.T) {
	fs := newFakeServer(t)
	c := newClient(t, fs.url())
	ctx := ctx10(t)
	var wg sync.WaitGroup
	// Issue in a known order: each waits until the previous one is queued.
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Publish(ctx, "chat:o", JSON([]byte{'0' + byte(i)})); err != nil {
				t.Errorf("publish %d: %v", i, err)
			}
		}()
		eventually(t, "queued", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return len(c.queue) == i+1 })
	}
	connect(t, c)
	fc := fs.next(t)
	for i := range 5 {
		if got := fc.expect(t, "publish").GetPublish().GetPayload().GetJsonText(); got != string(rune('0'+i)) {
			t.Fatalf("publish %d carried %q", i, got)
		}
	}
	wg.Wait()
}

func TestStopCodes(t *testing.T) {
	tests := []struct {
		code      fabric.CloseCode
		reconnect bool
	}{
		{fabric.CloseUnauthorized, false},
		{fabric.CloseForbidden, false},
		{fabric.CloseTooManyConnections, false},
		{fabric.CloseKicked, true},
		{fabric.CloseSlow, true},
		{fabric.CloseShutdown, true},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			fs := newFakeServer(t)
			states := make(chan StateChange, 16)
			c := newClient(t, fs.url(), WithStateHandler(func(sc StateChange) { states <- sc }))
			connect(t, c)
			fc := fs.next(t)
			sub, err := c.Join(ctx10(t), "chat:s")
			if err != nil {
				t.Fatal(err)
			}
			fc.kill(int(tt.code), "bye", tt.reconnect)
			if tt.reconnect {
				fs.next(t)
				eventually(t, "connected again", func() bool { return c.State() == StateConnected })
				return
			}
			eventually(t, "closed", func() bool { return c.State() == StateClosed })
			var ce *CloseError
			if err := c.Err(); !errors.As(err, &ce) || ce.Code != tt.code || !errors.Is(err, ErrClosed) {
				t.Errorf("Err = %v", err)
			}
			select {
			case <-sub.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("subscription did not end")
			}
			if err := c.Connect(ctx10(t)); !errors.Is(err, ErrClosed) {
				t.Errorf("Connect after stop = %v", err)
			}
			if _, err := c.Publish(ctx10(t), "chat:s", JSON([]byte("1"))); !errors.Is(err, ErrClosed) {
				t.Errorf("Publish after stop = %v", err)
			}
			select {
			case fc := <-fs.accepted:
				t.Errorf("reconnected as %s after a stop code", fc.id)
			default:
			}
			// The state handler runs on the client's delivery goroutine: wait for the
			// report of the close rather than reading what arrived so far.
			var last StateChange
			deadline := time.After(10 * time.Second)
			for last.To != StateClosed {
				select {
				case last = <-states:
				case <-deadline:
					t.Fatalf("no state change to closed; last = %+v", last)
				}
			}
			if last.Err == nil || len(states) > 0 {
				t.Errorf("state change to closed = %+v, then %d more", last, len(states))
			}
		})
	}
}

func TestRejectedTokenStopsConnect(t *testing.T) {
	fs := newFakeServer(t)
	fs.set(func(fs *fakeServer) {
		fs.checkToken = func(string) (int, string) { return int(fabric.CloseUnauthorized), "bad token" }
	})
	c := newClient(t, fs.url())
	err := c.Connect(ctx10(t))
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Code != fabric.CloseUnauthorized || !errors.Is(err, ErrClosed) {
		t.Fatalf("Connect = %v", err)
	}
}

func TestHeartbeatTimeoutReconnects(t *testing.T) {
	fs, _, first := startConnected(t, func(fs *fakeServer) { fs.pingInterval = 50 * time.Millisecond }, WithHeartbeatGrace(50*time.Millisecond))
	// The fake server never pings: the client must give up on it by itself.
	second := fs.next(t)
	if first.id == second.id {
		t.Fatal("same connection")
	}
	select {
	case <-first.done:
	case <-time.After(10 * time.Second):
		t.Fatal("client kept the silent connection")
	}
}

func TestHeartbeatKeepsLiveConnection(t *testing.T) {
	fs, _, fc := startConnected(t, func(fs *fakeServer) { fs.pingInterval = 40 * time.Millisecond }, WithHeartbeatGrace(40*time.Millisecond))
	// Ping faster than the interval for a while: the client answers and stays.
	for range 15 {
		fc.send(&pb.ServerMessage{Body: &pb.ServerMessage_Ping{Ping: &pb.Ping{}}})
		fc.expect(t, "pong")
		select {
		case <-fc.done:
			t.Fatal("client dropped a live connection")
		case <-time.After(20 * time.Millisecond): // the server's ping period
		}
	}
	select {
	case extra := <-fs.accepted:
		t.Fatalf("client reconnected as %s", extra.id)
	default:
	}
}

func TestTokenFuncRefreshAndReconnect(t *testing.T) {
	fs := newFakeServer(t)
	fs.set(func(fs *fakeServer) { fs.expires = 400 * time.Millisecond })
	var mu sync.Mutex
	n := 0
	tokens := func(context.Context) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		n++
		return "t" + string(rune('0'+n)), nil
	}
	c, err := New(fs.url(), WithTokenFunc(tokens), WithLogger(quiet), WithBackoff(5*time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	connect(t, c)
	fc := fs.next(t)
	if fc.connectToken != "t1" {
		t.Errorf("connect token %q", fc.connectToken)
	}
	// Refresh happens at half the remaining lifetime, with a fresh token each time.
	if got := fc.expect(t, "refresh").GetRefresh().GetToken(); got != "t2" {
		t.Errorf("refresh token %q, want t2", got)
	}
	if got := fc.expect(t, "refresh").GetRefresh().GetToken(); got != "t3" {
		t.Errorf("second refresh token %q, want t3", got)
	}
	eventually(t, "expiry updated", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.refreshes >= 2 })
	fs.set(func(fs *fakeServer) { fs.expires = 0 })
	fc.cut()
	fc2 := fs.next(t)
	mu.Lock()
	want := "t" + string(rune('0'+n))
	mu.Unlock()
	if fc2.connectToken != want || fc2.connectToken <= "t3" {
		t.Errorf("reconnect token %q, want a fresh one (%q)", fc2.connectToken, want)
	}
}

func TestCommandTimeoutAndCancel(t *testing.T) {
	fs := newFakeServer(t)
	fs.set(func(fs *fakeServer) { fs.hold["publish"] = true })
	c := newClient(t, fs.url(), WithCommandTimeout(50*time.Millisecond))
	connect(t, c)
	fs.next(t)
	if _, err := c.Publish(ctx10(t), "chat:t", JSON([]byte("1"))); !errors.Is(err, ErrTimeout) {
		t.Errorf("timeout: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Publish(ctx, "chat:t", JSON([]byte("1"))); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil || len(c.sess.pending) != 0 {
		t.Errorf("abandoned commands still pending")
	}
}

func TestInFlightCommandFailsWhenConnectionLost(t *testing.T) {
	_, c, fc := startConnected(t, func(fs *fakeServer) { fs.hold["publish"] = true })
	errc := make(chan error, 1)
	go func() {
		_, err := c.Publish(ctx10(t), "chat:t", JSON([]byte("1")))
		errc <- err
	}()
	fc.expect(t, "publish")
	fc.cut()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrConnectionLost) {
			t.Errorf("in-flight publish: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("in-flight publish never ended")
	}
}

func TestServerJoinsAndLeaves(t *testing.T) {
	fs := newFakeServer(t)
	fs.set(func(fs *fakeServer) { fs.connectRooms = []string{"news:auto"} })
	created := make(chan *Subscription, 4)
	c := newClient(t, fs.url(), WithServerJoinHandler(func(s *Subscription) { created <- s }))
	connect(t, c)
	fc := fs.next(t)
	auto := <-created
	if auto.Room() != "news:auto" || !auto.LastJoin().Server {
		t.Errorf("auto join = %s %+v", auto.Room(), auto.LastJoin())
	}
	fs.publish("news:auto", jsonPayload(`"x"`), nil)
	if m := recv(t, auto); string(m.Payload.Data) != `"x"` {
		t.Errorf("auto room message %q", m.Payload.Data)
	}
	// The backend joins us to another room.
	fc.send(&pb.ServerMessage{Body: &pb.ServerMessage_Joined{Joined: &pb.Joined{Join: fs.join(fc, "chat:backend", nil)}}})
	sub := <-created
	if sub.Room() != "chat:backend" || c.Subscription("chat:backend") != sub {
		t.Fatalf("backend join created %s", sub.Room())
	}
	fc.send(&pb.ServerMessage{Body: &pb.ServerMessage_Left{Left: &pb.Left{Room: "chat:backend", Reason: "backend"}}})
	if _, ok := <-sub.Messages(); ok {
		t.Error("messages after left")
	}
	var le *LeftError
	if !errors.As(sub.Err(), &le) || le.Reason != "backend" {
		t.Errorf("Err = %v", sub.Err())
	}
	// On reconnect the token room is joined by the server again: no duplicate join.
	fc.cut()
	fc2 := fs.next(t)
	eventually(t, "connected", func() bool { return c.State() == StateConnected })
	fs.publish("news:auto", jsonPayload(`"y"`), nil)
	if m := recv(t, auto); string(m.Payload.Data) != `"y"` {
		t.Errorf("auto room after reconnect %q", m.Payload.Data)
	}
	select {
	case cmd := <-fc2.cmds:
		t.Errorf("unexpected command after reconnect: %v", cmd)
	default:
	}
}

func TestMessageHandlerAndCloseFromOutside(t *testing.T) {
	fs := newFakeServer(t)
	c := newClient(t, fs.url())
	connect(t, c)
	fs.next(t)
	got := make(chan string, 8)
	if _, err := c.Join(ctx10(t), "chat:h", WithMessageHandler(func(m *fabric.Message) {
		// Handlers may call the client.
		if _, err := c.PresenceStats(context.Background(), "chat:h"); err != nil {
			got <- "err: " + err.Error()
			return
		}
		got <- string(m.Payload.Data)
	})); err != nil {
		t.Fatal(err)
	}
	fs.publish("chat:h", jsonPayload(`"a"`), nil)
	if s := <-got; s != `"a"` {
		t.Errorf("handler got %s", s)
	}
	if err := c.Close(); err != nil {
		t.Error(err)
	}
	if err := c.Close(); err != nil {
		t.Error("second Close:", err)
	}
}

func TestCloseWhileReconnecting(t *testing.T) {
	fs := newFakeServer(t)
	fs.set(func(fs *fakeServer) { fs.refuse = true })
	c := newClient(t, fs.url(), WithBackoff(time.Hour, time.Hour))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Connect(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Connect = %v", err)
	}
	errc := make(chan error, 1)
	go func() { _, err := c.Publish(context.Background(), "chat:x", JSON([]byte("1"))); errc <- err }()
	eventually(t, "queued", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return len(c.queue) == 1 })
	_ = c.Close() // must not wait an hour
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("queued command after Close: %v", err)
	}
}

func TestJoinWithRecoverFrom(t *testing.T) {
	fs := newFakeServer(t)
	for i := range 3 {
		fs.publish("chat:p", jsonPayload(string(rune('1'+i))), nil)
	}
	c := newClient(t, fs.url())
	connect(t, c)
	fs.next(t)
	sub, err := c.Join(ctx10(t), "chat:p", WithRecoverFrom(fabric.Position{Epoch: "e1", Offset: 1}))
	if err != nil {
		t.Fatal(err)
	}
	if j := sub.LastJoin(); !j.Recovered || j.Missed != 2 || j.Rejoin {
		t.Errorf("join %+v", j)
	}
	for want := uint64(2); want <= 3; want++ {
		if m := recv(t, sub); m.Pos.Offset != want {
			t.Fatalf("offset %d, want %d", m.Pos.Offset, want)
		}
	}
}

func TestRejoinRefusedEndsSubscription(t *testing.T) {
	fs, c, fc := startConnected(t, nil)
	sub, err := c.Join(ctx10(t), "chat:gone")
	if err != nil {
		t.Fatal(err)
	}
	fs.set(func(fs *fakeServer) { fs.forbidden["chat:gone"] = true })
	fc.cut()
	select {
	case <-sub.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("subscription outlived a refused re-join")
	}
	if !errors.Is(sub.Err(), fabric.ErrPermissionDenied) {
		t.Errorf("Err = %v", sub.Err())
	}
	if c.Subscription("chat:gone") != nil {
		t.Error("refused room still subscribed")
	}
}

func TestTokenRoomCatchesUpFromHistory(t *testing.T) {
	fs, c, fc, auto := startAtTokenRoom(t)
	fc2 := fs.outage(t, c, fc.cut, func() {
		fs.publish("news:auto", jsonPayload("2"), nil)
		fs.publish("news:auto", jsonPayload("3"), nil)
	})
	if h := fc2.expect(t, "history").GetHistory(); h.GetSince().GetOffset() != 1 {
		t.Errorf("catch-up history since %v", h.GetSince())
	}
	fs.publish("news:auto", jsonPayload("4"), nil)
	for want := uint64(2); want <= 4; want++ {
		if m := recv(t, auto); m.Pos.Offset != want {
			t.Fatalf("offset %d, want %d", m.Pos.Offset, want)
		}
	}
	if j := auto.LastJoin(); !j.Rejoin || !j.Recovered || j.Missed != 2 || !j.Server {
		t.Errorf("catch-up join %+v", j)
	}
}

func TestAbandonedJoinIsUndone(t *testing.T) {
	fs, c, fc := startConnected(t, func(fs *fakeServer) { fs.hold["join"] = true })
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := c.Join(ctx, "chat:late"); errc <- err }()
	cmd := fc.expect(t, "join")
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Join = %v", err)
	}
	if c.Subscription("chat:late") != nil {
		t.Error("abandoned join left a subscription")
	}
	// The server's late yes is answered with a leave.
	fc.send(&pb.ServerMessage{Id: cmd.GetId(), Body: &pb.ServerMessage_Join{Join: fs.join(fc, "chat:late", nil)}})
	if got := fc.expect(t, "leave").GetLeave().GetRoom(); got != "chat:late" {
		t.Errorf("left %q", got)
	}
}

func TestLeaveWhileOfflineForgetsTheRoom(t *testing.T) {
	fs, c, fc := startConnected(t, nil)
	sub, err := c.Join(ctx10(t), "chat:off")
	if err != nil {
		t.Fatal(err)
	}
	fs.publish("chat:off", jsonPayload("1"), nil)
	recv(t, sub)
	if p := sub.Position(); p != (fabric.Position{Epoch: "e1", Offset: 1}) {
		t.Errorf("Position = %v", p)
	}
	fs.set(func(fs *fakeServer) { fs.refuse = true })
	fc.cut()
	eventually(t, "offline", func() bool { return c.State() != StateConnected })
	if err := sub.Leave(ctx10(t)); err != nil {
		t.Fatalf("Leave offline: %v", err)
	}
	if len(c.Subscriptions()) != 0 {
		t.Error("subscriptions left")
	}
	fs.set(func(fs *fakeServer) { fs.refuse = false })
	fc2 := fs.next(t)
	eventually(t, "connected", func() bool { return c.State() == StateConnected })
	select {
	case cmd := <-fc2.cmds:
		t.Errorf("rejoined a room left offline: %v", cmd)
	default:
	}
}
