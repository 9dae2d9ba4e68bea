package peer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"google.golang.org/grpc"

	"github.com/roomcast/roomcast/fabric"
	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// val reads a counter or gauge.
func val(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

var quiet = slog.New(slog.DiscardHandler)

var (
	secretOld = []byte("old-secret-0123456789abcdef")
	secretNew = []byte("new-secret-0123456789abcdef")
)

// directory maps gossip IDs to peer addresses, like the etcd registry would.
type directory struct {
	mu    sync.Mutex
	addrs map[string]string
}

func newDirectory() *directory { return &directory{addrs: map[string]string{}} }

func (d *directory) resolve(_ context.Context, id string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a, ok := d.addrs[id]
	if !ok {
		return "", fmt.Errorf("unknown node %s", id)
	}
	return a, nil
}

// node is one test node: Links plus a gRPC server on a loopback port.
type node struct {
	t     testing.TB
	id    string
	addr  string
	links *Links
	gs    *grpc.Server
	inbox chan *meshv1.Envelope
	// handle, when set, replaces the default handler behaviour (record and answer).
	handle func(from *Peer, env *meshv1.Envelope)
}

// defaultHandle answers Presence requests with their room's length as the user count,
// except for room "hold", which it never answers; everything else goes to inbox.
func (n *node) defaultHandle(from *Peer, env *meshv1.Envelope) {
	if pr := env.GetPresenceStats(); pr != nil {
		if pr.GetRoom() == "hold" {
			return
		}
		_ = from.Reply(env, &meshv1.Envelope{Body: &meshv1.Envelope_PresenceStatsReply{
			PresenceStatsReply: &meshv1.PresenceStatsReply{Users: uint32(len(pr.GetRoom()))}}})
		return
	}
	select {
	case n.inbox <- env:
	default:
	}
}

func startNode(t testing.TB, dir *directory, name string, inc uint64, mod func(*Config)) *node {
	t.Helper()
	n := &node{t: t, id: ID(name, inc), inbox: make(chan *meshv1.Envelope, 1024)}
	cfg := Config{
		Cluster: "test", Node: name, Incarnation: inc, Version: "v-test",
		Secrets: [][]byte{secretOld}, Resolve: dir.resolve,
		Handler: HandlerFunc(func(from *Peer, env *meshv1.Envelope) {
			if n.handle != nil {
				n.handle(from, env)
				return
			}
			n.defaultHandle(from, env)
		}),
		BackoffMin: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
		HandshakeTimeout: 5 * time.Second,
		Registerer:       prometheus.NewRegistry(),
		Logger:           quiet,
	}
	if mod != nil {
		mod(&cfg)
	}
	l, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	n.links = l
	n.serve("127.0.0.1:0")
	dir.mu.Lock()
	dir.addrs[n.id] = n.addr
	dir.mu.Unlock()
	t.Cleanup(func() {
		_ = n.links.Close()
		n.gs.Stop()
	})
	return n
}

func (n *node) serve(addr string) {
	n.t.Helper()
	var lis net.Listener
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		if lis, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // the port is being released; retry bound only
	}
	if err != nil {
		n.t.Fatalf("listen: %v", err)
	}
	n.addr = lis.Addr().String()
	n.gs = grpc.NewServer(ServerOptions()...)
	n.links.Register(n.gs)
	go func() { _ = n.gs.Serve(lis) }()
}

// waitFor polls cond until it holds; the deadline is a failure bound only.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitEvent reads events until one matches.
func waitEvent(t *testing.T, l *Links, match func(Event) bool) Event {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev := <-l.Events():
			if match(ev) {
				return ev
			}
		case <-timeout:
			t.Fatal("timed out waiting for a link event")
		}
	}
}

func seqEnv(i int64) *meshv1.Envelope {
	return &meshv1.Envelope{MapRevision: i, Body: &meshv1.Envelope_Deliver{Deliver: &meshv1.Deliver{Room: "room"}}}
}

func TestOrderedDeliveryBatched(t *testing.T) {
	const total = 100_000
	dir := newDirectory()
	a := startNode(t, dir, "a", 1, nil)
	b := startNode(t, dir, "b", 1, nil)
	startNode(t, dir, "c", 1, nil) // a third node in the cluster, unused by this flow

	var got atomic.Int64
	var bad atomic.Int64
	done := make(chan struct{})
	b.handle = func(from *Peer, env *meshv1.Envelope) {
		next := got.Load() + 1
		if env.GetMapRevision() != next || from.ID() != a.id {
			bad.Add(1)
		}
		got.Store(next)
		if next == total {
			close(done)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := int64(1); i <= total; i++ {
		if err := a.links.SendWait(ctx, b.id, seqEnv(i)); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("received %d of %d", got.Load(), total)
	}
	if n := bad.Load(); n != 0 {
		t.Fatalf("%d envelopes out of order or from the wrong sender", n)
	}
	env := val(a.links.m.envelopesSent)
	batches := val(a.links.m.batchesSent)
	if env != total {
		t.Fatalf("envelopes sent = %v, want %d", env, total)
	}
	if batches >= total {
		t.Fatalf("no batching: %v batches for %d envelopes", batches, total)
	}
	t.Logf("%d envelopes in %v batches: %.4f batches/envelope (%.1f envelopes/batch)", total, batches, batches/env, env/batches)
}

func TestRequestResponse(t *testing.T) {
	dir := newDirectory()
	a := startNode(t, dir, "a", 1, nil)
	b := startNode(t, dir, "b", 1, nil)
	c := startNode(t, dir, "c", 1, nil)

	tests := []struct {
		name      string
		from, to  *node
		room      string
		timeout   time.Duration
		wantUsers uint32
		wantErr   error
	}{
		{"a to b", a, b, "abc", 5 * time.Second, 3, nil},
		{"b to a", b, a, "abcd", 5 * time.Second, 4, nil},
		{"c to a", c, a, "x", 5 * time.Second, 1, nil},
		{"unanswered times out", a, c, "hold", 50 * time.Millisecond, 0, context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), tt.timeout)
			defer cancel()
			req := &meshv1.Envelope{Body: &meshv1.Envelope_PresenceStats{PresenceStats: &meshv1.PresenceStatsRequest{Room: tt.room}}}
			resp, err := tt.from.links.Request(ctx, tt.to.id, req)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("request: %v", err)
			}
			if resp.GetReplyTo() != req.GetRequestId() || resp.GetPresenceStatsReply().GetUsers() != tt.wantUsers {
				t.Fatalf("reply %v to request %d, want users %d", resp, req.GetRequestId(), tt.wantUsers)
			}
		})
	}

	// Many concurrent requests over one link are each matched to their own reply.
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			room := string(make([]byte, i%37))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := a.links.Request(ctx, b.id, &meshv1.Envelope{Body: &meshv1.Envelope_PresenceStats{PresenceStats: &meshv1.PresenceStatsRequest{Room: room}}})
			if err == nil && resp.GetPresenceStatsReply().GetUsers() != uint32(len(room)) {
				err = fmt.Errorf("reply for room of %d carries %d", len(room), resp.GetPresenceStatsReply().GetUsers())
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestAuthentication(t *testing.T) {
	tests := []struct {
		name           string
		dialer, lister [][]byte
		dialerProto    [2]uint32
		wantOK         bool
		wantProto      uint32
	}{
		{"same secret", [][]byte{secretOld}, [][]byte{secretOld}, [2]uint32{}, true, 1},
		{"wrong secret refused", [][]byte{secretNew}, [][]byte{secretOld}, [2]uint32{}, false, 0},
		{"rotation: new first, old accepted", [][]byte{secretNew, secretOld}, [][]byte{secretOld, secretNew}, [2]uint32{}, true, 1},
		{"rotation: old first dials new first", [][]byte{secretOld, secretNew}, [][]byte{secretNew, secretOld}, [2]uint32{}, true, 1},
		{"rotation: not-yet-rotated node dials rotated one", [][]byte{secretOld}, [][]byte{secretNew, secretOld}, [2]uint32{}, true, 1},
		{"rotation finished: old secret refused", [][]byte{secretOld}, [][]byte{secretNew}, [2]uint32{}, false, 0},
		{"protocol: highest common chosen", [][]byte{secretOld}, [][]byte{secretOld}, [2]uint32{1, 3}, true, 1},
		{"protocol: none in common", [][]byte{secretOld}, [][]byte{secretOld}, [2]uint32{2, 3}, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := newDirectory()
			d := startNode(t, dir, "dialer", 1, func(c *Config) {
				c.Secrets = tt.dialer
				c.ProtocolMin, c.ProtocolMax = tt.dialerProto[0], tt.dialerProto[1]
			})
			ls := startNode(t, dir, "listener", 1, func(c *Config) { c.Secrets = tt.lister })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p, err := d.links.Link(ctx, ls.id)
			if !tt.wantOK {
				if !errors.Is(err, ErrLinkDown) || !errors.Is(err, fabric.ErrUnavailable) {
					t.Fatalf("link err = %v, want ErrLinkDown", err)
				}
				// The listener never installed it nor handed anything to its handler.
				if n := val(ls.links.m.linksUp); n != 0 {
					t.Fatalf("listener has %v links up", n)
				}
				if len(ls.links.Peers()) != 0 || len(ls.inbox) != 0 {
					t.Fatal("refused dialer reached the listener")
				}
				return
			}
			if err != nil {
				t.Fatalf("link: %v", err)
			}
			if p.Protocol() != tt.wantProto || p.Version() != "v-test" || !p.Outbound() {
				t.Fatalf("protocol %d version %q outbound %v", p.Protocol(), p.Version(), p.Outbound())
			}
			if err := p.Send(seqEnv(7)); err != nil {
				t.Fatal(err)
			}
			select {
			case env := <-ls.inbox:
				if env.GetMapRevision() != 7 {
					t.Fatalf("got %v", env)
				}
			case <-ctx.Done():
				t.Fatal("envelope not delivered")
			}
		})
	}
}

func TestWrongIncarnationRefused(t *testing.T) {
	dir := newDirectory()
	a := startNode(t, dir, "a", 1, nil)
	b := startNode(t, dir, "b", 2, nil)
	// b's address registered under an older incarnation: a reaches the wrong process.
	dir.mu.Lock()
	dir.addrs["b.1"] = b.addr
	dir.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.links.Link(ctx, "b.1"); !errors.Is(err, ErrLinkDown) {
		t.Fatalf("err = %v, want ErrLinkDown", err)
	}
	if len(b.links.Peers()) != 0 {
		t.Fatal("b installed a link meant for another incarnation")
	}
}

func TestLinkBreakFailsPendingAndReconnects(t *testing.T) {
	dir := newDirectory()
	var attempts atomic.Int64
	a := startNode(t, dir, "a", 1, func(c *Config) {
		c.Backoff = func(n int) time.Duration { attempts.Add(1); return time.Duration(n) * time.Millisecond }
	})
	b := startNode(t, dir, "b", 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := a.links.Link(ctx, b.id); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, a.links, func(ev Event) bool { return ev.Kind == LinkUp && ev.Peer == b.id })

	// A request b never answers is pending when b's process goes away entirely.
	reqErr := make(chan error, 1)
	go func() {
		_, err := a.links.Request(ctx, b.id, &meshv1.Envelope{Body: &meshv1.Envelope_PresenceStats{PresenceStats: &meshv1.PresenceStatsRequest{Room: "hold"}}})
		reqErr <- err
	}()
	waitFor(t, "request pending", func() bool {
		p, _ := a.links.Link(ctx, b.id)
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.pending) == 1
	})
	start := time.Now()
	_ = b.links.Close()
	b.gs.Stop()
	select {
	case err := <-reqErr:
		if !errors.Is(err, ErrLinkDown) || !errors.Is(err, fabric.ErrUnavailable) {
			t.Fatalf("pending request err = %v, want ErrLinkDown", err)
		}
		t.Logf("pending request failed %v after the peer stopped", time.Since(start))
	case <-ctx.Done():
		t.Fatal("pending request not failed")
	}
	down := waitEvent(t, a.links, func(ev Event) bool { return ev.Kind == LinkDown && ev.Peer == b.id })
	if down.Err == nil || down.Goodbye {
		t.Fatalf("down event %+v", down)
	}
	// While b is gone a keeps redialing with backoff, and sends fail fast.
	waitEvent(t, a.links, func(ev Event) bool { return ev.Kind == DialFailed && ev.Peer == b.id })
	waitFor(t, "several redials", func() bool { return attempts.Load() >= 3 })
	if err := a.links.Send(ctx, b.id, seqEnv(1)); !errors.Is(err, ErrLinkDown) {
		t.Logf("send while down: %v", err) // may race with a dial in progress; only must not hang
	}

	// The same incarnation of b comes back on the same address: a reconnects.
	b2 := &node{t: t, id: b.id, inbox: make(chan *meshv1.Envelope, 16)}
	l2, err := New(Config{Cluster: "test", Node: "b", Incarnation: 1, Secrets: [][]byte{secretOld},
		Resolve: dir.resolve, Handler: HandlerFunc(b2.defaultHandle), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	b2.links = l2
	b2.serve(b.addr)
	t.Cleanup(func() { _ = l2.Close(); b2.gs.Stop() })
	waitEvent(t, a.links, func(ev Event) bool { return ev.Kind == LinkUp && ev.Peer == b.id })
	if val(a.links.m.reconnects) == 0 {
		t.Fatal("no reconnect counted")
	}
	resp, err := a.links.Request(ctx, b.id, &meshv1.Envelope{Body: &meshv1.Envelope_PresenceStats{PresenceStats: &meshv1.PresenceStatsRequest{Room: "ab"}}})
	if err != nil || resp.GetPresenceStatsReply().GetUsers() != 2 {
		t.Fatalf("request after reconnect: %v %v", resp, err)
	}
}

func TestGoodbyeIsNotAFailure(t *testing.T) {
	dir := newDirectory()
	a := startNode(t, dir, "a", 1, nil)
	b := startNode(t, dir, "b", 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.links.Send(ctx, a.id, seqEnv(1)); err != nil {
		t.Fatal(err)
	}
	<-a.inbox
	b.links.Goodbye(ctx, "shutdown")
	_ = b.links.Close()
	ev := waitEvent(t, a.links, func(ev Event) bool { return ev.Kind == LinkDown && ev.Peer == b.id })
	if !ev.Goodbye {
		t.Fatalf("down event after goodbye: %+v", ev)
	}
	a.links.mu.Lock()
	_, kept := a.links.remotes[b.id]
	a.links.mu.Unlock()
	if kept {
		t.Fatal("a still maintains a link to a node that said goodbye")
	}
}

func TestSimultaneousDialKeepsOneLink(t *testing.T) {
	for round := range 8 {
		t.Run(fmt.Sprint("round", round), func(t *testing.T) {
			dir := newDirectory()
			a := startNode(t, dir, "a", uint64(round+1), nil)
			b := startNode(t, dir, "b", uint64(round+1), nil)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := make(chan struct{})
			var wg sync.WaitGroup
			for _, pair := range [][2]*node{{a, b}, {b, a}} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					for i := int64(1); i <= 50; i++ {
						if err := pair[0].links.SendWait(ctx, pair[1].id, seqEnv(i)); err != nil && !errors.Is(err, ErrLinkDown) {
							t.Errorf("send: %v", err)
						}
					}
				}()
			}
			close(start)
			wg.Wait()
			// Both sides settle on the same single stream.
			var pa, pb *Peer
			waitFor(t, "one agreed link", func() bool {
				var errA, errB error
				pa, errA = a.links.Link(ctx, b.id)
				pb, errB = b.links.Link(ctx, a.id)
				return errA == nil && errB == nil && pa.Outbound() != pb.Outbound() &&
					val(a.links.m.linksUp) == 1 && val(b.links.m.linksUp) == 1
			})
			// The agreed link carries traffic both ways.
			for _, pair := range [][2]*node{{a, b}, {b, a}} {
				resp, err := pair[0].links.Request(ctx, pair[1].id, &meshv1.Envelope{Body: &meshv1.Envelope_PresenceStats{PresenceStats: &meshv1.PresenceStatsRequest{Room: "xyz"}}})
				if err != nil || resp.GetPresenceStatsReply().GetUsers() != 3 {
					t.Fatalf("request %s→%s: %v %v", pair[0].id, pair[1].id, resp, err)
				}
			}
			t.Logf("kept the link dialed by %s", map[bool]string{true: a.id, false: b.id}[pa.Outbound()])
		})
	}
}

func TestQueueBounds(t *testing.T) {
	big := &meshv1.Envelope{Body: &meshv1.Envelope_Publish{Publish: &meshv1.PublishRequest{Room: string(make([]byte, 1000))}}}
	tests := []struct {
		name     string
		maxEnv   int
		maxBytes int
		env      *meshv1.Envelope
		wantOK   int
	}{
		{"count bound", 10, 1 << 20, seqEnv(1), 10},
		{"byte bound", 1000, 3500, big, 3},
		{"envelope over the byte bound still goes alone", 1000, 100, big, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := New(Config{Cluster: "test", Node: "a", Incarnation: 1, Secrets: [][]byte{secretOld},
				Resolve: newDirectory().resolve, Handler: HandlerFunc(func(*Peer, *meshv1.Envelope) {}),
				MaxQueueEnvelopes: tt.maxEnv, MaxQueueBytes: tt.maxBytes})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = l.Close() })
			// A link whose writer is not running: nothing drains the queue.
			p := newPeer(l, &meshv1.Sender{Node: "b", Incarnation: 1}, true, 1, "", nil, nil)
			ok := 0
			var last error
			for range 2 * tt.maxEnv {
				if last = p.Send(tt.env); last != nil {
					break
				}
				ok++
			}
			if ok != tt.wantOK || !errors.Is(last, ErrQueueFull) || !errors.Is(last, fabric.ErrUnavailable) {
				t.Fatalf("queued %d then %v; want %d then ErrQueueFull", ok, last, tt.wantOK)
			}
			if val(l.m.queueDrops) != 1 {
				t.Fatalf("drops = %v", val(l.m.queueDrops))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			if err := p.SendWait(ctx, tt.env); !errors.Is(err, ErrQueueFull) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("SendWait on a full queue: %v", err)
			}
			// An envelope over MaxEnvelopeBytes is refused outright.
			huge := &meshv1.Envelope{Body: &meshv1.Envelope_Publish{Publish: &meshv1.PublishRequest{Room: string(make([]byte, 5<<20))}}}
			if err := p.Send(huge); !errors.Is(err, fabric.ErrTooLarge) {
				t.Fatalf("huge envelope: %v", err)
			}
			// A broken link refuses sends and frees its queue.
			p.close(errors.New("test"))
			if err := p.Send(tt.env); !errors.Is(err, ErrLinkDown) {
				t.Fatalf("send on a closed link: %v", err)
			}
		})
	}
}

func TestQueueFullOverRealLink(t *testing.T) {
	dir := newDirectory()
	a := startNode(t, dir, "a", 1, func(c *Config) { c.MaxQueueEnvelopes = 8 })
	b := startNode(t, dir, "b", 1, nil)
	release := make(chan struct{})
	b.handle = func(*Peer, *meshv1.Envelope) { <-release } // a stalled receiver
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	big := &meshv1.Envelope{Body: &meshv1.Envelope_Publish{Publish: &meshv1.PublishRequest{Room: string(make([]byte, 32<<10))}}}
	var err error
	for i := 0; i < 10_000 && err == nil; i++ {
		err = a.links.Send(ctx, b.id, big)
	}
	close(release)
	if !errors.Is(err, ErrQueueFull) {
		t.Fatalf("err = %v, want ErrQueueFull once flow control stalls the writer", err)
	}
}

func TestBackoffFullJitter(t *testing.T) {
	f := FullJitter(10*time.Millisecond, 100*time.Millisecond)
	tests := []struct {
		attempt int
		ceil    time.Duration
	}{{1, 10 * time.Millisecond}, {2, 20 * time.Millisecond}, {4, 80 * time.Millisecond}, {5, 100 * time.Millisecond}, {60, 100 * time.Millisecond}}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.attempt), func(t *testing.T) {
			for range 1000 {
				if d := f(tt.attempt); d < 0 || d > tt.ceil {
					t.Fatalf("attempt %d: %v outside [0,%v]", tt.attempt, d, tt.ceil)
				}
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	ok := Config{Cluster: "c", Node: "n", Incarnation: 1, Secrets: [][]byte{secretOld},
		Resolve: newDirectory().resolve, Handler: HandlerFunc(func(*Peer, *meshv1.Envelope) {})}
	tests := []struct {
		name string
		mod  func(*Config)
	}{
		{"no cluster", func(c *Config) { c.Cluster = "" }},
		{"no incarnation", func(c *Config) { c.Incarnation = 0 }},
		{"no secret", func(c *Config) { c.Secrets = nil }},
		{"short secret", func(c *Config) { c.Secrets = [][]byte{[]byte("short")} }},
		{"no handler", func(c *Config) { c.Handler = nil }},
		{"protocol range", func(c *Config) { c.ProtocolMin, c.ProtocolMax = 3, 2 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.mod(&c)
			if _, err := New(c); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	l, err := New(ok)
	if err != nil {
		t.Fatal(err)
	}
	_ = l.Close()
	if _, err := l.Link(context.Background(), "x.1"); !errors.Is(err, ErrClosed) {
		t.Fatalf("link after close: %v", err)
	}
	l2, _ := New(ok)
	defer l2.Close()
	for _, id := range []string{"noinc", "n.1", "x.0", "x.y"} {
		if _, err := l2.Link(context.Background(), id); !errors.Is(err, ErrBadPeer) {
			t.Errorf("Link(%q) = %v, want ErrBadPeer", id, err)
		}
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := goleak.IgnoreCurrent()
	dir := newDirectory()
	var nodes []*node
	for _, name := range []string{"a", "b", "c"} {
		nodes = append(nodes, startNode(t, dir, name, 9, nil))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, from := range nodes {
		for _, to := range nodes {
			if from != to {
				if _, err := from.links.Request(ctx, to.id, &meshv1.Envelope{Body: &meshv1.Envelope_PresenceStats{PresenceStats: &meshv1.PresenceStatsRequest{Room: "r"}}}); err != nil {
					t.Fatalf("%s→%s: %v", from.id, to.id, err)
				}
			}
		}
	}
	for _, n := range nodes {
		if err := n.links.Close(); err != nil {
			t.Fatal(err)
		}
		n.gs.Stop()
	}
	goleak.VerifyNone(t, before)
}
