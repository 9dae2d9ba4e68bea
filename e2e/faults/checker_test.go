package faults

import (
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/roomcast/roomcast/client"
	"github.com/roomcast/roomcast/fabric"
)

// The invariant checker. It sees the fabric only from outside, as a user does: what
// each publisher had acknowledged (room, sequence number, position, when) and what
// each subscriber received (joins with their recovery outcome, messages with their
// position and the publisher's sequence number) and when its client's connection
// changed state. check then verifies:
//
//   - nothing is delivered twice to a subscriber (by publisher sequence number, so a
//     publish applied twice under two positions counts too);
//   - per room, positions strictly increase within each subscriber's stream: offsets
//     within an epoch, and epochs (etcd revisions) never go back;
//   - no silent gap: every acknowledged publish made while a subscriber was
//     subscribed reaches it, or the subscriber got an explicit gap (a re-join with
//     recovered=false, JoinInfo.Gap) covering it; within an epoch, skipped offsets
//     without such a re-join are a gap even if no acknowledgement names them;
//   - no two different messages are ever seen at one (room, epoch, offset), by any
//     subscriber or publisher: that is what two believed owners look like outside;
//   - a subscriber that received a publish received it at the acknowledged position;
//   - every reconnect waited within the SDK's backoff bounds: the k-th wait of an
//     outage is at most Backoff.Ceiling(k) (plus scheduling slack).
//
// It is safe for concurrent use: publishers and the SDK's handler goroutines record
// into it while the test runs.
type checker struct {
	mu      sync.Mutex
	acks    map[string][]ack // room -> acknowledged publishes, in publish order
	subs    []*subLog
	clients []*clientLog
}

func newChecker() *checker { return &checker{acks: map[string][]ack{}} }

// ack is one acknowledged publish.
type ack struct {
	pub         string
	seq         int
	room        string
	pos         fabric.Position
	start, done time.Time // first attempt started, acknowledgement received
	attempts    int
}

// recvEvent is one thing a subscriber saw: a join report or a message.
type recvEvent struct {
	at   time.Time
	join *client.JoinInfo
	pos  fabric.Position
	pub  string
	seq  int
}

// subLog is one client's subscription to one room.
type subLog struct {
	name, room string
	client     *clientLog
	mu         sync.Mutex
	events     []recvEvent
}

// stateEvent is one state change of a client.
type stateEvent struct {
	at       time.Time
	from, to client.State
	err      error
}

// clientLog is one client's state changes.
type clientLog struct {
	name   string
	mu     sync.Mutex
	states []stateEvent
}

func (c *checker) addAck(a ack) {
	c.mu.Lock()
	c.acks[a.room] = append(c.acks[a.room], a)
	c.mu.Unlock()
}

func (c *checker) newClient(name string) *clientLog {
	cl := &clientLog{name: name}
	c.mu.Lock()
	c.clients = append(c.clients, cl)
	c.mu.Unlock()
	return cl
}

func (c *checker) newSub(cl *clientLog, room string) *subLog {
	s := &subLog{name: cl.name + "/" + room, room: room, client: cl}
	c.mu.Lock()
	c.subs = append(c.subs, s)
	c.mu.Unlock()
	return s
}

func (cl *clientLog) state(ch client.StateChange) {
	cl.mu.Lock()
	cl.states = append(cl.states, stateEvent{at: time.Now(), from: ch.From, to: ch.To, err: ch.Err})
	cl.mu.Unlock()
}

func (s *subLog) joined(j client.JoinInfo) {
	s.mu.Lock()
	s.events = append(s.events, recvEvent{at: time.Now(), join: &j, pos: j.Position})
	s.mu.Unlock()
}

func (s *subLog) message(m *fabric.Message) {
	pub, seq := decodeSeq(m.Payload.Data)
	s.mu.Lock()
	s.events = append(s.events, recvEvent{at: time.Now(), pos: m.Pos, pub: pub, seq: seq})
	s.mu.Unlock()
}

// snapshot copies the subscriber's events.
func (s *subLog) snapshot() []recvEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]recvEvent(nil), s.events...)
}

// has reports whether the subscriber received pub's publish seq, or an explicit gap
// after time t (which covers it).
func (s *subLog) has(pub string, seq int, t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.events) - 1; i >= 0; i-- {
		e := s.events[i]
		if e.join == nil && e.pub == pub && e.seq == seq {
			return true
		}
		if e.join != nil && e.join.Gap() && e.at.After(t) {
			return true
		}
	}
	return false
}

// lastAck returns the last acknowledged publish to room.
func (c *checker) lastAck(room string) (ack, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	as := c.acks[room]
	if len(as) == 0 {
		return ack{}, false
	}
	return as[len(as)-1], true
}

// epochNum orders epochs: in a cluster they are etcd revisions in decimal.
func epochNum(e string) (int64, bool) {
	n, err := strconv.ParseInt(e, 10, 64)
	return n, err == nil
}

type posKey struct {
	room   string
	epoch  string
	offset uint64
}

// result is what check found.
type result struct {
	violations []string
	kinds      map[string]*violation // aggregated by subscriber and kind
	delivered  int                   // messages received, over all subscribers
	acked      int
	gaps       int // explicit gaps (re-joins with recovered=false)
	recovered  int // re-joins that recovered
	reconnects int
	maxOutage  time.Duration // longest time a client spent without a connection
}

// violation counts the violations of one kind seen by one subscriber (or globally),
// keeping the first and last example.
type violation struct {
	n           int
	first, last string
}

// violate records a violation of kind (e.g. "u0-0/chat:x: silent loss").
func (r *result) violate(kind, format string, args ...any) {
	if r.kinds == nil {
		r.kinds = map[string]*violation{}
	}
	msg := fmt.Sprintf(format, args...)
	v := r.kinds[kind]
	if v == nil {
		v = &violation{first: msg}
		r.kinds[kind] = v
		r.violations = append(r.violations, kind)
	}
	v.n++
	v.last = msg
}

// summary returns one line per kind of violation.
func (r *result) summary() []string {
	var out []string
	for _, k := range r.violations {
		v := r.kinds[k]
		if v.n == 1 {
			out = append(out, fmt.Sprintf("%s: %s", k, v.first))
		} else {
			out = append(out, fmt.Sprintf("%s: %d times, first %s, last %s", k, v.n, v.first, v.last))
		}
	}
	return out
}

// check verifies the invariants over everything recorded. until is when the test
// stopped expecting deliveries: publishes started after it are not expected.
func (c *checker) check(b client.Backoff, slack time.Duration, until time.Time) *result {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := &result{}
	seenAt := map[posKey]string{} // position -> "pub#seq" first seen there
	seeAt := func(k posKey, id, who string) {
		if prev, ok := seenAt[k]; ok && prev != id {
			r.violate("two believed owners", "two messages at %s epoch %s offset %d: %s and %s (seen by %s) — two believed owners", k.room, k.epoch, k.offset, prev, id, who)
			return
		}
		seenAt[k] = id
	}
	for room, as := range c.acks {
		r.acked += len(as)
		for _, a := range as {
			seeAt(posKey{room, a.pos.Epoch, a.pos.Offset}, fmt.Sprintf("%s#%d", a.pub, a.seq), "publisher "+a.pub)
		}
	}
	for _, s := range c.subs {
		c.checkSub(r, s, seeAt, until)
	}
	for _, cl := range c.clients {
		c.checkReconnects(r, cl, b, slack)
	}
	return r
}

func (c *checker) checkSub(r *result, s *subLog, seeAt func(posKey, string, string), until time.Time) {
	evs := s.snapshot()
	type got struct {
		pos fabric.Position
		at  time.Time
	}
	received := map[string]got{}
	var cur fabric.Position // last position of the stream
	var lastAt time.Time    // time of the last event
	type gapWin struct {
		from, to time.Time
		pos      fabric.Position
	}
	var gaps []gapWin
	var first *recvEvent
	for i := range evs {
		e := &evs[i]
		if e.join != nil {
			switch {
			case first == nil:
				first = e
			case e.join.Gap():
				r.gaps++
				gaps = append(gaps, gapWin{from: lastAt, to: e.at, pos: e.join.Position})
			case e.join.Recovered:
				r.recovered++
			}
			if e.join.Gap() || first == e {
				cur = e.join.Position
			}
			lastAt = e.at
			continue
		}
		if first == nil {
			r.violate(s.name+": message before the first join", "%v", e.pos)
			continue
		}
		r.delivered++
		id := fmt.Sprintf("%s#%d", e.pub, e.seq)
		seeAt(posKey{s.room, e.pos.Epoch, e.pos.Offset}, id, s.name)
		if prev, dup := received[id]; dup {
			r.violate(s.name+": delivered twice", "%s at %v and %v", id, prev.pos, e.pos)
		}
		received[id] = got{e.pos, e.at}
		switch {
		case e.pos.Epoch == cur.Epoch && e.pos.Offset <= cur.Offset:
			r.violate(s.name+": offsets not increasing", "offset %d after %d in epoch %s", e.pos.Offset, cur.Offset, cur.Epoch)
		case e.pos.Epoch == cur.Epoch && e.pos.Offset > cur.Offset+1:
			r.violate(s.name+": offsets skipped without recovered=false", "%d..%d of epoch %s", cur.Offset+1, e.pos.Offset-1, cur.Epoch)
		case e.pos.Epoch != cur.Epoch:
			n0, ok0 := epochNum(cur.Epoch)
			n1, ok1 := epochNum(e.pos.Epoch)
			if ok0 && ok1 && n1 < n0 {
				r.violate(s.name+": epoch went back", "from %s to %s", cur.Epoch, e.pos.Epoch)
			}
		}
		cur, lastAt = e.pos, e.at
	}
	if first == nil {
		return
	}
	for _, a := range c.acks[s.room] {
		id := fmt.Sprintf("%s#%d", a.pub, a.seq)
		if g, ok := received[id]; ok {
			if g.pos != a.pos {
				r.violate(s.name+": delivered at another position than acknowledged (applied twice?)", "%s acknowledged at %v, delivered at %v", id, a.pos, g.pos)
			}
			continue
		}
		jp := first.join.Position
		switch {
		case a.done.Before(first.at), a.pos.Epoch == jp.Epoch && a.pos.Offset <= jp.Offset:
			continue // published before the subscription
		case a.start.After(until):
			continue // after the test stopped expecting deliveries
		}
		covered := false
		for _, g := range gaps {
			if !a.start.After(g.to) && !a.done.Before(g.from) &&
				!(a.pos.Epoch == g.pos.Epoch && a.pos.Offset > g.pos.Offset) {
				covered = true
				break
			}
		}
		if !covered {
			r.violate(s.name+": silent loss of acknowledged publishes", "%s at %v (published %s..%s)", id, a.pos,
				a.start.Format("15:04:05.000"), a.done.Format("15:04:05.000"))
		}
	}
}

// checkReconnects checks each wait before a reconnect attempt against the backoff.
func (c *checker) checkReconnects(r *result, cl *clientLog, b client.Backoff, slack time.Duration) {
	cl.mu.Lock()
	states := append([]stateEvent(nil), cl.states...)
	cl.mu.Unlock()
	k := 0 // waits so far in this outage
	var waitFrom, outageFrom time.Time
	for _, s := range states {
		switch s.to {
		case client.StateDisconnected:
			if s.from == client.StateConnected {
				k, outageFrom = 0, s.at
				r.reconnects++
			}
			waitFrom = s.at
		case client.StateConnecting:
			if !waitFrom.IsZero() {
				if w := s.at.Sub(waitFrom); w > b.Ceiling(k)+slack {
					r.violate(cl.name+": reconnect wait over the backoff bound", "waited %v before attempt %d (ceiling %v)", w.Round(time.Millisecond), k, b.Ceiling(k))
				}
				k++
				waitFrom = time.Time{}
			}
		case client.StateConnected:
			if !outageFrom.IsZero() {
				r.maxOutage = max(r.maxOutage, s.at.Sub(outageFrom))
				outageFrom = time.Time{}
			}
		}
	}
}

// recovery measures the effect of a fault at f over the window [f, until]: per
// room, the longest stall of its publisher (from f or the previous acknowledgement to
// the next one) and when the last stall of at least a second ended; per subscriber,
// the longest time without a delivery. missing lists the rooms and subscribers that
// got nothing after f.
type recov struct {
	pubStall, pubBack, deliverStall time.Duration
	slowRoom, slowSub               string
	missing                         []string
}

// String says how long publishing and delivery stalled.
func (r recov) String() string {
	return fmt.Sprintf("longest publish stall %v (%s), publishing steady again %v after the fault; longest delivery stall %v (%s)",
		r.pubStall.Round(time.Millisecond), r.slowRoom, r.pubBack.Round(time.Millisecond), r.deliverStall.Round(time.Millisecond), r.slowSub)
}

func (c *checker) recovery(f, until time.Time) recov {
	c.mu.Lock()
	defer c.mu.Unlock()
	var r recov
	for _, room := range c.roomsLocked() {
		prev, got := f, false
		for _, a := range c.acks[room] {
			if a.done.Before(f) || a.done.After(until) {
				continue
			}
			got = true
			if d := a.done.Sub(prev); d > r.pubStall {
				r.pubStall, r.slowRoom = d, room
			}
			if a.done.Sub(prev) >= time.Second {
				r.pubBack = max(r.pubBack, a.done.Sub(f))
			}
			prev = a.done
		}
		if !got {
			r.missing = append(r.missing, "no publish acknowledged in "+room)
		}
	}
	for _, s := range c.subs {
		prev, got := f, false
		for _, e := range s.snapshot() {
			if e.join != nil || e.at.Before(f) || e.at.After(until) {
				continue
			}
			got = true
			if d := e.at.Sub(prev); d > r.deliverStall {
				r.deliverStall, r.slowSub = d, s.name
			}
			prev = e.at
		}
		if !got {
			r.missing = append(r.missing, s.name+" received nothing")
		}
	}
	return r
}

func (c *checker) roomsLocked() []string {
	var out []string
	for r := range c.acks {
		out = append(out, r)
	}
	sort.Strings(out)
	return out
}
