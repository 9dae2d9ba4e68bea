package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/roomcast/roomcast/client"
	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/testnode"
)

// Client timings: the SDK's backoff bounds used (and checked) by every test client.
var testBackoff = client.Backoff{Min: 200 * time.Millisecond, Max: 2 * time.Second, Floor: 10 * time.Millisecond}

const (
	// backoffSlack absorbs scheduling delays between the SDK's decision and our
	// state handler on a loaded 2-core machine.
	backoffSlack   = 750 * time.Millisecond
	publishEvery   = 100 * time.Millisecond // per room; 100 messages of chat history = 10 s
	publishTimeout = time.Second            // per attempt
	// ejectFor is how long a publisher avoids a node after an attempt on it failed,
	// as a client-side load balancer with outlier ejection would.
	ejectFor = 3 * time.Second
)

// loadOpts shapes the traffic.
type loadOpts struct {
	rooms          int // chat rooms, each with its own publisher
	clientsPerNode int // SDK clients homed on each node; every client joins every room
}

// load is subscribers (Go SDK clients over the bridge, each homed on one node but
// reconnecting to the next node when its own does not answer) and publishers (one
// per room, through the control API of every node in turn, retrying UNAVAILABLE and
// deadlines with the same idempotency key) feeding a checker.
type load struct {
	t       *testing.T
	c       *cluster
	chk     *checker
	rooms   []string
	clients []*subClient

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
	pubErrs  atomic.Int64
	stopped  time.Time

	ejectMu sync.Mutex
	ejected map[int]time.Time // node slot -> avoided until
}

// pickNode returns the next node slot for a publish attempt, skipping ejected nodes
// unless all are.
func (l *load) pickNode(next *int) *node {
	l.ejectMu.Lock()
	defer l.ejectMu.Unlock()
	n := len(l.c.nodes)
	for range n {
		slot := *next % n
		*next++
		if time.Now().After(l.ejected[slot]) {
			return l.c.nodes[slot]
		}
	}
	*next++
	return l.c.nodes[*next%n]
}

func (l *load) eject(nd *node) {
	l.ejectMu.Lock()
	l.ejected[nd.slot] = time.Now().Add(ejectFor)
	l.ejectMu.Unlock()
}

type subClient struct {
	logs lockedBuffer // the SDK's own log, shown when a test fails
	user string
	cl   *client.Client
	log  *clientLog
	subs []*subLog
}

func startLoad(t *testing.T, c *cluster, o loadOpts) *load {
	t.Helper()
	l := &load{t: t, c: c, chk: newChecker(), ejected: map[int]time.Time{}}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	for i := range o.rooms {
		l.rooms = append(l.rooms, fmt.Sprintf("chat:faults-%d", i))
	}
	t.Cleanup(l.stop)
	for _, nd := range c.live() {
		for k := range o.clientsPerNode {
			if _, err := l.tryClient(nd.slot, fmt.Sprintf("u%d-%d", nd.slot, k)); err != nil {
				t.Fatalf("client homed on %s: %v", nd.name(), err)
			}
		}
	}
	for i, room := range l.rooms {
		l.wg.Add(1)
		go l.publish(fmt.Sprintf("pub%d", i), room, i)
	}
	l.waitFlowing(20)
	return l
}

// addClient connects one SDK client homed on slot home and joins every room; it
// fails the test (and lets it go on) when the client cannot connect or join.
func (l *load) addClient(home int, user string) *subClient {
	t := l.t
	t.Helper()
	sc, err := l.tryClient(home, user)
	if err != nil {
		t.Errorf("client %s homed on %s: %v", user, l.c.nodes[home].name(), err)
	}
	return sc
}

func (l *load) tryClient(home int, user string) (*subClient, error) {
	tok, err := jwtauth.Mint("HS256", "", []byte(testnode.Secret),
		jwtauth.Claims{User: user, Join: []string{"*"}, Publish: []string{"*"}, Read: []string{"*"}}, time.Hour)
	if err != nil {
		return nil, err
	}
	sc := &subClient{user: user, log: l.chk.newClient(user)}
	n := len(l.c.nodes)
	var attempt atomic.Int64
	d := &websocket.Dialer{
		HandshakeTimeout: 2 * time.Second,
		// Every attempt dials the next node, starting at home: a client of a dead or
		// isolated node lands on a live one, as behind a load balancer.
		NetDialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			slot := (home + int(attempt.Add(1)-1)) % n
			nd := net.Dialer{Timeout: time.Second}
			return nd.DialContext(ctx, network, nodeIP(slot)+":8080")
		},
	}
	cl, err := client.New(l.c.nodes[home].wsURL(),
		client.WithToken(tok),
		client.WithDialer(d),
		client.WithBackoffSchedule(testBackoff),
		client.WithConnectTimeout(3*time.Second),
		client.WithHeartbeatGrace(time.Second),
		client.WithCommandTimeout(5*time.Second),
		client.WithStateHandler(sc.log.state),
		client.WithLogger(slog.New(slog.NewTextHandler(&sc.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))),
	)
	if err != nil {
		return nil, err
	}
	sc.cl = cl
	// Closed by stop from here on, even when connecting or joining fails.
	l.clients = append(l.clients, sc)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := cl.Connect(ctx); err != nil {
		return sc, fmt.Errorf("connect: %w", err)
	}
	for _, room := range l.rooms {
		s := l.chk.newSub(sc.log, room)
		if _, err := cl.Join(ctx, room, client.WithJoinHandler(s.joined), client.WithMessageHandler(s.message)); err != nil {
			return sc, fmt.Errorf("join %s: %w", room, err)
		}
		sc.subs = append(sc.subs, s)
	}
	return sc, nil
}

// publish publishes seq 1, 2, … to room every publishEvery until the load stops.
// Each publish goes to the next node; an UNAVAILABLE or timed-out attempt is retried
// on the next node with the same idempotency key until it is acknowledged.
func (l *load) publish(pub, room string, offset int) {
	defer l.wg.Done()
	tick := time.NewTicker(publishEvery)
	defer tick.Stop()
	next := offset
	for seq := 1; ; seq++ {
		select {
		case <-l.ctx.Done():
			return
		case <-tick.C:
		}
		payload, _ := structpb.NewValue(map[string]any{"p": pub, "s": seq})
		req := &pb.PublishRequest{Room: room, Payload: &pb.Payload{Kind: &pb.Payload_Json{Json: payload}},
			IdempotencyKey: fmt.Sprintf("%s-%d", pub, seq)}
		start := time.Now()
		for attempt := 1; ; attempt++ {
			nd := l.pickNode(&next)
			ctx, cancel := context.WithTimeout(l.ctx, publishTimeout)
			r, err := nd.control.Publish(ctx, req)
			cancel()
			if err == nil {
				l.chk.addAck(ack{pub: pub, seq: seq, room: room, start: start, done: time.Now(), attempts: attempt,
					pos: posFromPB(r.GetPosition())})
				break
			}
			l.pubErrs.Add(1)
			if l.ctx.Err() != nil {
				return
			}
			l.eject(nd)
			switch status.Code(err) {
			case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted:
				continue // ambiguous: retry with the same key
			}
			l.t.Errorf("%s: publish #%d to %s via %s: %v", pub, seq, room, nd.name(), err)
			break
		}
	}
}

// waitFlowing waits until every subscriber has received n messages more than now.
func (l *load) waitFlowing(n int) {
	l.t.Helper()
	base := map[*subLog]int{}
	for _, sc := range l.clients {
		for _, s := range sc.subs {
			base[s] = l.received(s)
		}
	}
	poll(l.t, 30*time.Second, fmt.Sprintf("every subscriber receiving %d more messages", n), func() (bool, string) {
		var behind []string
		for s, b := range base {
			if got := l.received(s) - b; got < n {
				behind = append(behind, fmt.Sprintf("%s:%d", s.name, got))
			}
		}
		sort.Strings(behind)
		return len(behind) == 0, strings.Join(behind, " ")
	})
}

func (l *load) received(s *subLog) int {
	n := 0
	for _, e := range s.snapshot() {
		if e.join == nil {
			n++
		}
	}
	return n
}

// stop stops the publishers, waits until every subscriber has the last
// acknowledged publish of each room (or an explicit gap after it) and closes the
// clients. It is idempotent.
func (l *load) stop() {
	l.stopOnce.Do(func() {
		l.cancel()
		l.wg.Wait()
		l.stopped = time.Now()
		bound := 30 * time.Second
		if l.t.Failed() {
			bound = 10 * time.Second // something is wrong already; do not wait long
		}
		{
			poll(l.t, bound, "every subscriber receiving each room's last acknowledged publish", func() (bool, string) {
				var behind []string
				for _, sc := range l.clients {
					for _, s := range sc.subs {
						if a, ok := l.chk.lastAck(s.room); ok && !s.has(a.pub, a.seq, a.done) {
							behind = append(behind, fmt.Sprintf("%s(state %v) lacks %s#%d", s.name, sc.cl.State(), a.pub, a.seq))
						}
					}
				}
				return len(behind) == 0, strings.Join(behind, "; ")
			})
		}
		if l.t.Failed() {
			l.dump()
		}
		for _, sc := range l.clients {
			_ = sc.cl.Close()
		}
	})
}

// dump logs the recent history of every client and subscription, for a failed test.
func (l *load) dump() {
	for _, sc := range l.clients {
		sc.log.mu.Lock()
		states := sc.log.states[max(0, len(sc.log.states)-6):]
		var b strings.Builder
		for _, st := range states {
			fmt.Fprintf(&b, " %s %v->%v (%v);", st.at.Format("15:04:05.000"), st.from, st.to, st.err)
		}
		sc.log.mu.Unlock()
		l.t.Logf("client %s now %v:%s\n%s", sc.user, sc.cl.State(), b.String(), sc.logs.String())
		for _, s := range sc.subs {
			evs := s.snapshot()
			var joins []string
			for _, e := range evs {
				if e.join != nil {
					joins = append(joins, fmt.Sprintf("%s join %+v", e.at.Format("15:04:05.000"), *e.join))
				}
			}
			last := "nothing"
			if n := len(evs); n > 0 {
				last = fmt.Sprintf("%s %v %s#%d", evs[n-1].at.Format("15:04:05.000"), evs[n-1].pos, evs[n-1].pub, evs[n-1].seq)
			}
			var serr error
			if sub := sc.cl.Subscription(s.room); sub != nil {
				serr = sub.Err()
			} else {
				serr = fmt.Errorf("no subscription")
			}
			l.t.Logf("  %s: last %s; sub err %v; joins: %s", s.name, last, serr, strings.Join(joins, " | "))
		}
	}
}

// verify stops the load and fails the test with every invariant violation; it logs
// what was checked.
func (l *load) verify() *result {
	l.t.Helper()
	l.stop()
	r := l.chk.check(testBackoff, backoffSlack, l.stopped)
	var dups uint64
	for _, sc := range l.clients {
		for _, s := range sc.cl.Subscriptions() {
			dups += s.Duplicates()
		}
	}
	l.t.Logf("checked: %d acknowledged publishes (%d failed attempts retried), %d deliveries, %d reconnects (longest outage %v), %d re-joins recovered, %d explicit gaps, %d duplicates dropped by the SDK",
		r.acked, l.pubErrs.Load(), r.delivered, r.reconnects, r.maxOutage.Round(time.Millisecond), r.recovered, r.gaps, dups)
	for _, v := range r.summary() {
		l.t.Errorf("invariant violated: %s", v)
	}
	return r
}

// users returns the users of the clients that are connected now.
func (l *load) users() []string {
	var out []string
	for _, sc := range l.clients {
		out = append(out, sc.user)
	}
	sort.Strings(out)
	return out
}

// presenceConverges waits until GetPresence of every room on every live node lists
// exactly the load's users (no ghosts, nobody missing) and returns how long it took.
func (l *load) presenceConverges(bound time.Duration) time.Duration {
	l.t.Helper()
	want := strings.Join(l.users(), ",")
	start := time.Now()
	poll(l.t, bound, "presence of every room on every node = the connected clients", func() (bool, string) {
		for _, nd := range l.c.live() {
			for _, room := range l.rooms {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				p, err := nd.control.GetPresence(ctx, &pb.GetPresenceRequest{Room: room})
				cancel()
				var got []string
				for _, m := range p.GetMembers() {
					got = append(got, m.GetUser())
				}
				sort.Strings(got)
				if err != nil || strings.Join(got, ",") != want {
					return false, fmt.Sprintf("%s on %s: [%s] %v (want [%s])", room, nd.name(), strings.Join(got, ","), err, want)
				}
			}
		}
		return true, ""
	})
	return time.Since(start)
}

// measure waits (bounded) until every room has acknowledged a publish and every
// subscriber has received one after the fault at f, then logs how long publishing
// and delivery stalled, counting until now.
func (l *load) measure(what string, f time.Time, bound time.Duration) recov {
	l.t.Helper()
	// Not fatal: the invariant check that follows says what went wrong.
	poll(l.t, bound, what+": every room accepting and every subscriber receiving after the fault", func() (bool, string) {
		r := l.chk.recovery(f, time.Now())
		return len(r.missing) == 0, strings.Join(r.missing, ", ")
	})
	r := l.chk.recovery(f, time.Now())
	l.t.Logf("%s: %v", what, r)
	return r
}

func posFromPB(p *pb.Position) fabric.Position {
	return fabric.Position{Epoch: p.GetEpoch(), Offset: p.GetOffset()}
}

// decodeSeq reads the publisher and sequence number out of a payload.
func decodeSeq(data []byte) (string, int) {
	var v struct {
		P string  `json:"p"`
		S float64 `json:"s"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return "?" + string(data), -1
	}
	return v.P, int(v.S)
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
