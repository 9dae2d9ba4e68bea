package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gorilla/websocket"

	"github.com/roomcast/roomcast/client"
	"github.com/roomcast/roomcast/fabric"
	"github.com/roomcast/roomcast/internal/app"
)

// The recover scenario's worker side: Go SDK clients (package client: reconnect with
// backoff, re-join with recovery) whose dialer fails over to the next node when its
// node is gone, as a client behind a load balancer would.

// Worker operations of the recover scenario.
const (
	opSDKConnect = "sdk-connect" // start SDK clients and join their rooms
	opSDKMark    = "sdk-mark"    // remember the clients connected to Mark.Node now
	opSDKStats   = "sdk-stats"   // recovery progress (and loss accounting when Acks)
	opSDKClose   = "sdk-close"   // close every SDK client
)

// sdkSpec describes the SDK clients one worker runs.
type sdkSpec struct {
	Nodes    []string        `json:"nodes"` // every node's WebSocket URL
	Secret   string          `json:"secret"`
	Sources  int             `json:"sources"`
	Prefix   string          `json:"prefix"` // room k is Prefix+k
	Parallel int             `json:"parallel"`
	Clients  []sdkClientSpec `json:"clients"`
}

type sdkClientSpec struct {
	ID    int    `json:"i"`
	User  string `json:"u"`
	Node  int    `json:"n"` // preferred node
	Rooms []int  `json:"r"`
}

// sdkQuery asks for recovery progress after node Node was killed at KillAt (µs since
// the epoch); with Acks it also accounts losses.
type sdkQuery struct {
	Node   int       `json:"node"`
	KillAt int64     `json:"kill_at"`
	Acks   []roomAck `json:"acks,omitempty"`
}

// roomAck is what the publisher knows of one room: sequences 1..Max were sent, and
// NotOK were not acknowledged as published (failed, or no answer).
type roomAck struct {
	Room  int     `json:"room"`
	Max   int64   `json:"max"`
	NotOK []int64 `json:"not_ok,omitempty"`
}

// sdkReport is a worker's answer to sdk-mark and sdk-stats.
type sdkReport struct {
	Clients     int    `json:"clients"`
	Connected   int    `json:"connected"`
	Marked      int    `json:"marked"`      // clients on the killed node at the kill
	Reconnected int    `json:"reconnected"` // marked clients connected to another node since
	Done        int    `json:"done"`        // marked clients re-joined to every room since
	Recovered   int64  `json:"recovered"`   // re-joins of marked clients with recovered=true
	Gaps        int64  `json:"gaps"`        // re-joins with recovered=false (any client)
	Received    int64  `json:"received"`    // bench messages received (first copies)
	Dups        int64  `json:"dups"`
	Unread      int64  `json:"unread"`      // received with a payload that was not the published one
	Lost        int64  `json:"lost"`        // acknowledged, missing, and no recovered=false said so
	Announced   int64  `json:"announced"`   // missing from rooms that reported recovered=false
	Extra       int64  `json:"extra"`       // received although the publish was not acknowledged
	LostMarked  int64  `json:"lost_marked"` // Lost in subscriptions of clients of the killed node
	Ended       int64  `json:"ended"`       // subscriptions that ended (a failed re-join)
	EndErr      string `json:"end_err,omitempty"`
	Stuck       string `json:"stuck,omitempty"` // one marked client not done, described
	FirstErr    string `json:"first_err,omitempty"`

	ReconnectHist *hdrhistogram.Snapshot `json:"reconnect_hist,omitempty"` // µs from the kill
	RecoverHist   *hdrhistogram.Snapshot `json:"recover_hist,omitempty"`   // µs from the kill
}

// bitset is a set of sequence numbers.
type bitset []uint64

func (b *bitset) add(i int64) (added bool) {
	w := int(i / 64)
	for len(*b) <= w {
		*b = append(*b, 0)
	}
	m := uint64(1) << (i % 64)
	if (*b)[w]&m != 0 {
		return false
	}
	(*b)[w] |= m
	return true
}

func (b bitset) has(i int64) bool {
	w := int(i / 64)
	return w < len(b) && b[w]&(uint64(1)<<(i%64)) != 0
}

func (b bitset) count() int64 {
	var n int
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return int64(n)
}

// accountRoom compares what a member received (got) with what was published to the
// room (sequences 1..max, of which notOK were not acknowledged): missing are
// acknowledged sequences not received, extra are unacknowledged ones received anyway
// (a publish can be applied although its answer was lost).
func accountRoom(got bitset, maxSeq int64, notOK []int64) (missing, extra int64) {
	var inMax int64
	for i := int64(1); i <= maxSeq; i++ {
		if got.has(i) {
			inMax++
		}
	}
	for _, s := range notOK {
		if s >= 1 && s <= maxSeq && got.has(s) {
			extra++
		}
	}
	okCount := maxSeq - int64(len(notOK))
	// received acknowledged ones = inMax - extra
	missing = okCount - (inMax - extra)
	return max(missing, 0), extra
}

// sdkRoomState is one subscription's record, guarded by its client's mu.
type sdkRoomState struct {
	room      int
	got       bitset
	dups      int64
	unread    int64 // messages whose payload carried no readable stamp
	rejoinAt  int64 // µs of the last re-join
	recovered bool  // of the last re-join
	gap       bool  // some re-join said recovered=false
	sub       *client.Subscription
}

// sdkClient is one SDK client and what it saw.
type sdkClient struct {
	spec sdkClientSpec
	c    *client.Client

	mu          sync.Mutex
	node        int   // node of the last successful dial
	connectedAt int64 // µs of the last change to connected
	marked      bool
	rooms       map[string]*sdkRoomState
}

// clientRecord is the part of an sdkClient that recovery accounting reads.
type clientRecord struct {
	connected   bool
	node        int
	connectedAt int64
	rejoins     []int64 // each room's last re-join, µs (0: none)
	recovered   []bool
}

// recoveryOf says whether a client that was on node killed when it died at killAt is
// connected to another node since (reconnected, after reconnectUs) and has re-joined
// every room since (done, after recoverUs: the last room's re-join).
func recoveryOf(r clientRecord, killed int, killAt int64) (reconnected, done bool, reconnectUs, recoverUs int64) {
	if !r.connected || r.node == killed || r.connectedAt < killAt {
		return false, false, 0, 0
	}
	reconnectUs = r.connectedAt - killAt
	last := int64(0)
	for _, t := range r.rejoins {
		if t < killAt {
			return true, false, reconnectUs, 0
		}
		last = max(last, t)
	}
	return true, true, reconnectUs, max(last-killAt, reconnectUs)
}

// sdkSet is a worker's SDK clients.
type sdkSet struct {
	mu      sync.Mutex
	clients []*sdkClient
}

func (w *worker) sdkConnect(ctx context.Context, spec sdkSpec) workerReply {
	w.mu.Lock()
	if w.sdk == nil {
		w.sdk = &sdkSet{}
	}
	set := w.sdk
	w.mu.Unlock()
	// ROOMCAST_BENCH_SDK_LOG=debug|info|warn shows the SDK's own log on stderr.
	var out io.Writer = io.Discard
	var level slog.Level
	if v := os.Getenv("ROOMCAST_BENCH_SDK_LOG"); v != "" && level.UnmarshalText([]byte(v)) == nil {
		out = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level}))
	var mu sync.Mutex
	firstErr := ""
	next := make(chan sdkClientSpec)
	var wg sync.WaitGroup
	for range max(spec.Parallel, 1) {
		wg.Go(func() {
			for cs := range next {
				sc, err := startSDKClient(ctx, spec, cs, log)
				mu.Lock()
				if err != nil && firstErr == "" {
					firstErr = err.Error()
				}
				mu.Unlock()
				if sc != nil {
					set.mu.Lock()
					set.clients = append(set.clients, sc)
					set.mu.Unlock()
				}
			}
		})
	}
	for _, cs := range spec.Clients {
		next <- cs
	}
	close(next)
	wg.Wait()
	rep := w.stats(false)
	rep.SDK = set.report(sdkQuery{Node: -1})
	rep.SDK.FirstErr = firstErr
	return rep
}

// startSDKClient connects one client and joins its rooms. A client that connected is
// returned even when a join failed, so that it is closed with the others.
func startSDKClient(ctx context.Context, spec sdkSpec, cs sdkClientSpec, log *slog.Logger) (*sdkClient, error) {
	sc := &sdkClient{spec: cs, node: -1, rooms: map[string]*sdkRoomState{}}
	hosts := make([]string, len(spec.Nodes))
	for k, u := range spec.Nodes {
		pu, err := url.Parse(u)
		if err != nil {
			return nil, err
		}
		hosts[k] = pu.Host
	}
	src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+cs.ID%max(spec.Sources, 1)))}
	nd := &net.Dialer{LocalAddr: src, Timeout: 5 * time.Second}
	// The preferred node first, then the others in an order that differs per client,
	// so the clients of a dead node spread over the survivors.
	order := []int{cs.Node}
	for j := range len(hosts) - 1 {
		order = append(order, (cs.Node+1+(cs.ID+j)%(len(hosts)-1))%len(hosts))
	}
	d := &websocket.Dialer{
		HandshakeTimeout: 10 * time.Second, ReadBufferSize: 2048, WriteBufferSize: 1024,
		NetDialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var last error
			for _, k := range order {
				c, err := nd.DialContext(ctx, network, hosts[k])
				if err == nil {
					sc.mu.Lock()
					sc.node = k
					sc.mu.Unlock()
					return c, nil
				}
				last = err
			}
			return nil, last
		},
	}
	c, err := client.New(spec.Nodes[cs.Node],
		client.WithTokenFunc(func(context.Context) (string, error) { return app.DevToken(spec.Secret, cs.User, 12*time.Hour) }),
		client.WithDialer(d), client.WithLogger(log), client.WithCommandTimeout(30*time.Second),
		client.WithStateHandler(func(ch client.StateChange) {
			if ch.To == client.StateConnected {
				now := time.Now().UnixMicro()
				sc.mu.Lock()
				sc.connectedAt = now
				sc.mu.Unlock()
			}
		}))
	if err != nil {
		return nil, err
	}
	sc.c = c
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.Connect(cctx); err != nil {
		return sc, err
	}
	for _, k := range cs.Rooms {
		name := fmt.Sprintf("%s%d", spec.Prefix, k)
		st := &sdkRoomState{room: k}
		sc.mu.Lock()
		sc.rooms[name] = st
		sc.mu.Unlock()
		sub, err := c.Join(cctx, name,
			client.WithMessageHandler(func(m *fabric.Message) {
				s, ok := parseStamp(m.Payload.Data)
				if !ok {
					// Counted, never skipped silently: a payload the node altered
					// would otherwise look like a lost message.
					sc.mu.Lock()
					st.unread++
					sc.mu.Unlock()
					return
				}
				sc.mu.Lock()
				if !st.got.add(s.seq) {
					st.dups++
				}
				sc.mu.Unlock()
			}),
			client.WithJoinHandler(func(j client.JoinInfo) {
				if !j.Rejoin {
					return
				}
				now := time.Now().UnixMicro()
				sc.mu.Lock()
				st.rejoinAt, st.recovered = now, j.Recovered
				if !j.Recovered {
					st.gap = true
				}
				sc.mu.Unlock()
			}))
		if err != nil {
			return sc, fmt.Errorf("join %s: %w", name, err)
		}
		sc.mu.Lock()
		st.sub = sub
		sc.mu.Unlock()
	}
	return sc, nil
}

// mark remembers the clients connected to node now (before it is killed).
func (s *sdkSet) mark(node int) sdkReport {
	s.mu.Lock()
	clients := s.clients
	s.mu.Unlock()
	n := 0
	for _, sc := range clients {
		connected := sc.c.State() == client.StateConnected
		sc.mu.Lock()
		sc.marked = connected && sc.node == node
		if sc.marked {
			n++
		}
		sc.mu.Unlock()
	}
	return sdkReport{Clients: len(clients), Marked: n}
}

// report is the recovery progress and, with q.Acks, the loss accounting.
func (s *sdkSet) report(q sdkQuery) *sdkReport {
	s.mu.Lock()
	clients := s.clients
	s.mu.Unlock()
	rep := &sdkReport{Clients: len(clients)}
	reconnect, recov := newHist(), newHist()
	acks := map[int]roomAck{}
	for _, a := range q.Acks {
		acks[a.Room] = a
	}
	for _, sc := range clients {
		connected := sc.c.State() == client.StateConnected
		sc.mu.Lock()
		if connected {
			rep.Connected++
		}
		rec := clientRecord{connected: connected, node: sc.node, connectedAt: sc.connectedAt}
		for _, st := range sc.rooms {
			if st.sub != nil {
				select {
				case <-st.sub.Done():
					rep.Ended++
					if rep.EndErr == "" {
						rep.EndErr = fmt.Sprint(st.sub.Err())
					}
				default:
				}
			}
			rec.rejoins = append(rec.rejoins, st.rejoinAt)
			rec.recovered = append(rec.recovered, st.recovered)
			rep.Received += st.got.count()
			rep.Dups += st.dups
			rep.Unread += st.unread
			if st.gap {
				rep.Gaps++
			}
			if a, ok := acks[st.room]; ok {
				missing, extra := accountRoom(st.got, a.Max, a.NotOK)
				rep.Extra += extra
				if st.gap {
					rep.Announced += missing
				} else {
					rep.Lost += missing
					if sc.marked {
						rep.LostMarked += missing
					}
				}
			}
		}
		marked := sc.marked
		var subs []*client.Subscription
		var counts []int64
		for _, st := range sc.rooms {
			if st.rejoinAt < q.KillAt && st.sub != nil {
				subs = append(subs, st.sub)
				counts = append(counts, st.got.count())
			}
		}
		sc.mu.Unlock()
		if !marked {
			continue
		}
		rep.Marked++
		reconnected, done, ru, du := recoveryOf(rec, q.Node, q.KillAt)
		if reconnected {
			rep.Reconnected++
			_ = reconnect.RecordValue(max(ru, histMin))
		}
		if !done && rep.Stuck == "" {
			rep.Stuck = fmt.Sprintf("client %d state %v node %d connected %+dms rejoins(ms) %v", sc.spec.ID, sc.c.State(), rec.node, (rec.connectedAt-q.KillAt)/1000, func() []int64 {
				var o []int64
				for _, t := range rec.rejoins {
					o = append(o, (t-q.KillAt)/1000)
				}
				return o
			}())
			for i, sub := range subs {
				rep.Stuck += fmt.Sprintf("; room %s not re-joined: last join %+v, position %v, received %d", sub.Room(), sub.LastJoin(), sub.Position(), counts[i])
			}
		}
		if done {
			rep.Done++
			_ = recov.RecordValue(max(du, histMin))
			for _, ok := range rec.recovered {
				if ok {
					rep.Recovered++
				}
			}
		}
	}
	rep.ReconnectHist, rep.RecoverHist = reconnect.Export(), recov.Export()
	return rep
}

func (s *sdkSet) closeAll() {
	s.mu.Lock()
	clients := s.clients
	s.clients = nil
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, sc := range clients {
		wg.Go(func() { _ = sc.c.Close() })
	}
	wg.Wait()
}
