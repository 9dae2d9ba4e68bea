package client

import (
	"context"
	"errors"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// JoinInfo reports one (re-)join of a room.
type JoinInfo struct {
	// Room is the room's name.
	Room string
	// Position is the room's position at the join.
	Position fabric.Position
	// Recoverable is true when the room keeps history, so that a later re-join can
	// recover missed messages.
	Recoverable bool
	// Rejoin is false for the first join of a subscription and true for every join
	// after a reconnect, and for every report of a gap in the live stream (Resync).
	Rejoin bool
	// Resync is true when the report is about a gap found in the live stream, not
	// about a reconnect. For a room that keeps history the client left and re-joined
	// it, recovering from the last position it delivered (for a membership the server
	// made, which the client may have no right to re-join, it read the room's
	// history instead); Recovered says whether that worked. For a room without
	// history no join took place: the report only says that messages were missed
	// before the message that follows it, whose offset is Position.Offset+1.
	Resync bool
	// RecoveryAsked is true when the join asked to recover from a position.
	RecoveryAsked bool
	// Recovered is true when recovery was asked and every missed message follows
	// (Missed of them, before live ones).
	Recovered bool
	// Missed counts the recovered messages.
	Missed int
	// Server is true when the server made the join (token rooms, the backend).
	Server bool
}

// Gap reports whether messages may have been missed before this join: it is a
// re-join (or a gap in the live stream) that did not recover. The application should
// re-sync the room from its own source of truth.
func (j JoinInfo) Gap() bool { return j.Rejoin && !j.Recovered }

// JoinOption configures a Subscription.
type JoinOption func(*joinOptions)

type joinOptions struct {
	onMessage   func(*fabric.Message)
	onJoin      func(JoinInfo)
	buffer      int
	recoverFrom *fabric.Position
}

// WithMessageHandler delivers the room's messages to f instead of the Messages
// channel.
func WithMessageHandler(f func(*fabric.Message)) JoinOption {
	return func(o *joinOptions) { o.onMessage = f }
}

// WithJoinHandler calls f after every (re-)join, before the messages that follow it.
// This is where an application learns that a re-join did not recover (info.Gap()),
// also when the re-join repaired a gap in the live stream (info.Resync).
func WithJoinHandler(f func(JoinInfo)) JoinOption { return func(o *joinOptions) { o.onJoin = f } }

// WithBuffer sets the capacity of the Messages channel (default 64).
func WithBuffer(n int) JoinOption { return func(o *joinOptions) { o.buffer = n } }

// WithRecoverFrom makes the first join recover from pos, e.g. a position the
// application stored from an earlier session.
func WithRecoverFrom(pos fabric.Position) JoinOption {
	return func(o *joinOptions) { o.recoverFrom = &pos }
}

type subStatus int

const (
	subPending     subStatus = iota // the first join is on its way
	subEstablished                  // joined (or to be re-joined at the next connect)
	subRejoining                    // a re-join is on its way
	subEnded
)

// Subscription is a client's membership of one room. It delivers the room's messages
// in offset order, without duplicates, on its Messages channel or to its handler, on a
// goroutine of its own; the channel is closed after the last message once the
// subscription ends. A gap in the live stream is repaired or reported (see the
// package documentation). Safe for concurrent use.
type Subscription struct {
	c         *Client
	room      string
	ch        chan *fabric.Message
	onMessage func(*fabric.Message)
	onJoin    func(JoinInfo)
	p         *pump
	done      chan struct{}

	// Guarded by c.mu.
	status      subStatus
	pos         fabric.Position // last position received
	prevEpoch   string          // the epoch before pos's, when the stream went on across a handover
	recoverable bool
	last        JoinInfo
	early       []*pb.RoomMessage // pushes that raced ahead of the join's reply
	err         error
	dups        uint64
	resyncs     uint64
}

func (c *Client) newSubLocked(room string, o joinOptions) *Subscription {
	s := &Subscription{c: c, room: room, onMessage: o.onMessage, onJoin: o.onJoin, done: make(chan struct{})}
	if s.onMessage == nil {
		if o.buffer <= 0 {
			o.buffer = DefaultBuffer
		}
		s.ch = make(chan *fabric.Message, o.buffer)
	}
	s.p = newPump(c.done, func() {
		if s.ch != nil {
			close(s.ch)
		}
	})
	c.wg.Add(1)
	go func() { defer c.wg.Done(); s.p.run() }()
	return s
}

// Room returns the room's name.
func (s *Subscription) Room() string { return s.room }

// Messages returns the channel of the room's messages; nil when a message handler was
// given. It is closed when the subscription ends.
func (s *Subscription) Messages() <-chan *fabric.Message { return s.ch }

// Done is closed when the subscription ends: Leave, a `left` push, a failed re-join or
// the client closing. Err says why.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err returns why the subscription ended, or nil while it lasts.
func (s *Subscription) Err() error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.err
}

// Position returns the position of the last message received (or of the last join).
func (s *Subscription) Position() fabric.Position {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.pos
}

// LastJoin returns the report of the latest (re-)join.
func (s *Subscription) LastJoin() JoinInfo {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.last
}

// Duplicates counts messages dropped because they were already delivered.
func (s *Subscription) Duplicates() uint64 {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.dups
}

// Resyncs counts the gaps found in the live stream: each one made the subscription
// re-join the room with recovery or, when it could not, report the gap (see
// JoinInfo.Resync).
func (s *Subscription) Resyncs() uint64 {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.resyncs
}

// Publish publishes to the subscription's room.
func (s *Subscription) Publish(ctx context.Context, p fabric.Payload, opts ...PublishOption) (fabric.Position, error) {
	return s.c.Publish(ctx, s.room, p, opts...)
}

// Leave leaves the room and ends the subscription. While offline it only forgets the
// room (the server holds no membership for a closed connection).
func (s *Subscription) Leave(ctx context.Context) error {
	c := s.c
	c.mu.Lock()
	if s.status == subEnded {
		c.mu.Unlock()
		return ErrNotSubscribed
	}
	wasPending := s.status == subPending
	c.endLocked(s, ErrNotSubscribed)
	online := c.state == StateConnected
	c.mu.Unlock()
	if !online || wasPending {
		// A pending join's reply finds the subscription ended and leaves then.
		return nil
	}
	_, err := c.do(ctx, leaveCmd(s.room), nil)
	if errors.Is(err, fabric.ErrNotJoined) || errors.Is(err, ErrConnectionLost) || errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

func leaveCmd(room string) *pb.ClientCommand {
	return &pb.ClientCommand{Command: &pb.ClientCommand_Leave{Leave: &pb.LeaveCommand{Room: room}}}
}

// Join joins room and returns its subscription once the server confirmed the join.
// While offline the join is queued like any command. After a reconnect the client
// re-joins by itself, recovering from the last position received.
func (c *Client) Join(ctx context.Context, room string, opts ...JoinOption) (*Subscription, error) {
	var o joinOptions
	for _, opt := range opts {
		opt(&o)
	}
	c.mu.Lock()
	if c.state == StateClosed {
		err := c.closeErr
		c.mu.Unlock()
		return nil, err
	}
	if c.subs[room] != nil {
		c.mu.Unlock()
		return nil, &Error{Code: pb.ErrorCode_ERROR_CODE_ALREADY_JOINED, Message: "already subscribed to " + room}
	}
	sub := c.newSubLocked(room, o)
	c.subs[room] = sub
	c.mu.Unlock()

	jc := &pb.JoinCommand{Room: room}
	if o.recoverFrom != nil {
		jc.RecoverFrom = posToPB(*o.recoverFrom)
	}
	_, err := c.do(ctx, &pb.ClientCommand{Command: &pb.ClientCommand_Join{Join: jc}}, func(m *pb.ServerMessage) {
		c.mu.Lock()
		if sub.status == subPending {
			c.applyJoinLocked(sub, m.GetJoin(), o.recoverFrom, joinKind{})
			c.mu.Unlock()
			return
		}
		// Left (or closed) while the join was on its way: leave on the server too.
		sess := c.sess
		unwanted := sub.status == subEnded && c.subs[room] == nil && sess != nil
		c.mu.Unlock()
		if unwanted {
			c.sendAside(sess, leaveCmd(room))
		}
	})
	if err != nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		if errors.Is(err, fabric.ErrAlreadyJoined) && sub.status == subEstablished {
			return sub, nil // the server joined us meanwhile (token rooms)
		}
		if sub.status == subPending {
			c.endLocked(sub, err)
		}
		return nil, err
	}
	return sub, nil
}

// Subscription returns the subscription of room, or nil.
func (c *Client) Subscription(room string) *Subscription {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subs[room]
}

// Subscriptions returns every live subscription, ordered by room.
func (c *Client) Subscriptions() []*Subscription {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sortedSubsLocked()
}

// joinKind says which (re-)join a join result answers.
type joinKind struct {
	rejoin bool // not the subscription's first join
	server bool // the server made the membership
	resync bool // the re-join repairs a gap in the live stream
}

// applyJoinLocked records a join's result and delivers its report and recovered
// messages, then any pushes that arrived before it.
func (c *Client) applyJoinLocked(s *Subscription, jr *pb.JoinResult, recoverFrom *fabric.Position, k joinKind) {
	room := posFromPB(jr.GetPosition())
	info := JoinInfo{
		Room: s.room, Position: room, Recoverable: jr.GetRecoverable(), Rejoin: k.rejoin || k.resync, Server: k.server,
		Resync: k.resync, RecoveryAsked: recoverFrom != nil, Recovered: recoverFrom != nil && jr.GetRecovered(),
	}
	if info.Recovered {
		info.Missed = len(jr.GetMessages())
	}
	s.status = subEstablished
	s.recoverable = info.Recoverable
	s.last = info
	if f := s.onJoin; f != nil {
		s.p.push(func() { f(info) })
	}
	if info.Recovered {
		if recoverFrom.Epoch != s.pos.Epoch {
			s.prevEpoch = ""
		}
		s.pos = *recoverFrom
		for _, m := range jr.GetMessages() {
			c.acceptLocked(s, m, nil)
		}
	}
	if s.pos.Epoch != room.Epoch || s.pos.Offset < room.Offset {
		switch {
		case s.pos.Epoch == room.Epoch:
		case info.Recovered && s.pos.Offset == room.Offset:
			s.prevEpoch = s.pos.Epoch // handed over with nothing published since
		default:
			s.prevEpoch = "" // a new stream
		}
		s.pos = room
	}
	c.drainEarlyLocked(s)
}

// drainEarlyLocked delivers the pushes that arrived before a join's reply.
func (c *Client) drainEarlyLocked(s *Subscription) {
	early := s.early
	s.early = nil
	for _, m := range early {
		c.acceptLocked(s, m, nil)
	}
}

// acceptLocked delivers m unless it was delivered already (an older offset of the
// same epoch, or of the epoch before a handover).
//
// A message must follow the last one delivered: its offset is the last offset plus
// one, in the same epoch or, when the room's owner handed it over, a new one. Any
// other offset reveals a gap. On a live push (live is the session it came on) in a
// room that keeps history, acceptLocked starts a re-sync and returns its commands,
// to write on live after releasing c.mu; the message waits for the re-sync. Anywhere
// else (a room without history, messages of a join reply or of a history read) the
// gap is reported to the join handler before the message is delivered: recovering
// again what the server just answered could loop.
func (c *Client) acceptLocked(s *Subscription, m *pb.RoomMessage, live *session) []*pb.ClientCommand {
	pos := fabric.Position{Epoch: m.GetEpoch(), Offset: m.GetOffset()}
	switch {
	case s.pos.IsZero():
		// Nothing to compare with yet.
	case (pos.Epoch == s.pos.Epoch || pos.Epoch == s.prevEpoch) && pos.Offset <= s.pos.Offset:
		s.dups++
		return nil
	case pos.Offset == s.pos.Offset+1:
	default:
		s.resyncs++
		if live != nil && s.recoverable {
			c.log.Info("gap in room stream, re-joining to recover", "room", s.room, "after", s.pos, "got", pos)
			return c.resyncLocked(s, m, live)
		}
		c.log.Warn("gap in room stream", "room", s.room, "after", s.pos, "got", pos)
		c.reportGapLocked(s, pos)
	}
	if pos.Epoch != s.pos.Epoch {
		s.prevEpoch = ""
		if !s.pos.IsZero() && pos.Offset == s.pos.Offset+1 {
			s.prevEpoch = s.pos.Epoch // a handover: the stream goes on
		}
	}
	s.pos = pos
	msg := messageFromPB(m)
	if f := s.onMessage; f != nil {
		s.p.push(func() { f(msg) })
		return nil
	}
	ch := s.ch
	s.p.push(func() {
		select {
		case ch <- msg:
		case <-c.done:
		}
	})
	return nil
}

// resyncLocked starts repairing a gap before m, a push that came on sess: it leaves
// the room and re-joins it, recovering from the last position delivered, or, for a
// membership the server made (which the client may have no right to re-join), it
// reads the room's history after that position. m and the pushes that follow wait
// in s.early for the reply, which delivers the recovered messages first and drops
// what they cover. The subscription is rejoining meanwhile, so at most one re-sync
// is in flight. It returns the commands to write on sess, in order.
func (c *Client) resyncLocked(s *Subscription, m *pb.RoomMessage, sess *session) []*pb.ClientCommand {
	if c.sess != sess || sess.dead {
		return nil // the connection is ending: the reconnect re-joins from s.pos
	}
	s.early = append(s.early, m)
	if s.last.Server {
		read := c.historyCallLocked(s, s.pos, nil, true)
		read.sess = sess
		sess.pending[read.id] = read
		return []*pb.ClientCommand{read.cmd}
	}
	leave := &call{cmd: leaveCmd(s.room), sess: sess, done: func(*pb.ServerMessage, error) {}}
	leave.id = c.newIDLocked()
	leave.cmd.Id = leave.id
	join := c.rejoinCallLocked(s, true)
	join.sess = sess
	sess.pending[leave.id] = leave
	sess.pending[join.id] = join
	return []*pb.ClientCommand{leave.cmd, join.cmd}
}

// reportGapLocked tells the join handler that messages were missed before next, the
// position of the message delivered next.
func (c *Client) reportGapLocked(s *Subscription, next fabric.Position) {
	at := fabric.Position{Epoch: next.Epoch}
	if next.Offset > 0 {
		at.Offset = next.Offset - 1
	}
	info := JoinInfo{Room: s.room, Position: at, Recoverable: s.recoverable, Rejoin: true, Resync: true, Server: s.last.Server}
	s.last = info
	if f := s.onJoin; f != nil {
		s.p.push(func() { f(info) })
	}
}

// roomMessage handles a message push that came on sess; it runs on sess's reader
// goroutine.
func (c *Client) roomMessage(sess *session, m *pb.RoomMessage) {
	c.mu.Lock()
	var resync []*pb.ClientCommand
	if s := c.subs[m.GetRoom()]; s != nil { // else left meanwhile
		switch s.status {
		case subPending, subRejoining:
			s.early = append(s.early, m)
		case subEstablished:
			resync = c.acceptLocked(s, m, sess)
		}
	}
	c.mu.Unlock()
	for _, cmd := range resync {
		if err := sess.write(cmd); err != nil {
			sess.drop(err) // the teardown fails the calls; the reconnect re-joins
			return
		}
	}
}

// serverJoinLocked handles a join made by the server; it returns the subscription
// when it created one.
func (c *Client) serverJoinLocked(jr *pb.JoinResult) *Subscription {
	if c.state == StateClosed {
		return nil
	}
	s := c.subs[jr.GetRoom()]
	var created *Subscription
	if s == nil {
		s = c.newSubLocked(jr.GetRoom(), joinOptions{})
		c.subs[jr.GetRoom()] = s
		created = s
	}
	c.applyJoinLocked(s, jr, nil, joinKind{rejoin: created == nil && s.status != subPending, server: true})
	return created
}

// rejoinCallLocked builds the re-join of s, after a reconnect or to repair a gap in
// the live stream (resync), recovering from its last position when the room keeps
// history.
func (c *Client) rejoinCallLocked(s *Subscription, resync bool) *call {
	jc := &pb.JoinCommand{Room: s.room}
	var from *fabric.Position
	if s.recoverable && s.pos.Epoch != "" {
		p := s.pos
		from = &p
		jc.RecoverFrom = posToPB(p)
	}
	s.status = subRejoining
	cl := &call{cmd: &pb.ClientCommand{Command: &pb.ClientCommand_Join{Join: jc}}}
	cl.id = c.newIDLocked()
	cl.cmd.Id = cl.id
	cl.done = func(m *pb.ServerMessage, err error) {
		c.mu.Lock()
		if s.status != subRejoining {
			// Left (or closed) while the re-join was on its way: leave on the server
			// too, unless the room is wanted again.
			sess := c.sess
			unwanted := err == nil && m.GetJoin() != nil && s.status == subEnded && c.subs[s.room] == nil && sess != nil
			c.mu.Unlock()
			if unwanted {
				c.sendAside(sess, leaveCmd(s.room))
			}
			return
		}
		defer c.mu.Unlock()
		if err != nil {
			s.status = subEstablished // try again at the next connect
			s.early = nil
			return
		}
		if pe := m.GetError(); pe != nil {
			e := errorFromPB(pe)
			if e.Temporary {
				s.status = subEstablished
				s.early = nil
				if sess := c.sess; sess != nil {
					sess.drop(e) // reconnect with backoff and try again
				}
				return
			}
			if e.Code == pb.ErrorCode_ERROR_CODE_ALREADY_JOINED {
				s.status = subEstablished // the server joined us itself
				if resync {
					c.drainEarlyLocked(s) // the gap cannot be repaired: report it
				}
				return
			}
			c.log.Warn("re-join failed", "room", s.room, "err", e)
			c.endLocked(s, e)
			return
		}
		c.applyJoinLocked(s, m.GetJoin(), from, joinKind{rejoin: true, resync: resync})
	}
	return cl
}

// endLocked ends s with err: no more deliveries after those queued.
func (c *Client) endLocked(s *Subscription, err error) {
	if s.status == subEnded {
		return
	}
	s.status = subEnded
	s.err = err
	s.early = nil
	if c.subs[s.room] == s {
		delete(c.subs, s.room)
	}
	close(s.done)
	s.p.finish()
}

// catchUpCallLocked handles a room the server re-joined us to at connect (a rooms
// claim), which it did without recovery: it reads the history between our last
// position and the join's position and reports the re-join as recovered only when
// that history is complete. It returns nil when no history read is needed.
func (c *Client) catchUpCallLocked(s *Subscription, jr *pb.JoinResult) *call {
	from, to := s.pos, posFromPB(jr.GetPosition())
	switch {
	case from.Offset > to.Offset || !jr.GetRecoverable():
		c.applyJoinLocked(s, jr, &from, joinKind{rejoin: true, server: true}) // recovered=false: a new stream
		return nil
	case from == to:
		c.applyJoinLocked(s, &pb.JoinResult{Room: s.room, Position: jr.GetPosition(), Recoverable: true, Recovered: true}, &from, joinKind{rejoin: true, server: true})
		return nil
	}
	return c.historyCallLocked(s, from, &to, false)
}

// historyCallLocked builds a read of the history of s's room after from, for a
// membership the server made (which the client may have no right to re-join), and
// makes s wait for it. Its result is applied like a join recovering from from:
// recovered only when the history holds every message after from up to the room's
// position, which is to (a join's) or, when to is nil, the history's own. Whether
// from is on the room's current stream (the same epoch, or an earlier one the
// offsets went on from) is the server's call: it refuses a position of another
// stream, and then nothing is recovered.
func (c *Client) historyCallLocked(s *Subscription, from fabric.Position, to *fabric.Position, resync bool) *call {
	s.status = subRejoining
	hc := &pb.HistoryCommand{Room: s.room, Since: posToPB(from)}
	if to != nil {
		hc.Limit = uint32(min(to.Offset-from.Offset, 1<<32-1))
	}
	cl := &call{cmd: &pb.ClientCommand{Command: &pb.ClientCommand_History{History: hc}}}
	cl.id = c.newIDLocked()
	cl.cmd.Id = cl.id
	cl.done = func(m *pb.ServerMessage, err error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if s.status != subRejoining {
			return
		}
		if err != nil {
			s.status = subEstablished // try again at the next connect
			s.early = nil
			return
		}
		end := to
		if end == nil {
			if m.GetError() != nil {
				// No position to go on from: the message after the gap, waiting
				// in s.early, reports it.
				s.status = subEstablished
				c.drainEarlyLocked(s)
				return
			}
			p := posFromPB(m.GetHistory().GetPosition())
			end = &p
		}
		res := &pb.JoinResult{Room: s.room, Position: posToPB(*end), Recoverable: true}
		if m.GetError() == nil {
			res.Messages, res.Recovered = recoveredRun(from, *end, m.GetHistory().GetMessages())
		}
		c.applyJoinLocked(s, res, &from, joinKind{rejoin: true, server: true, resync: resync})
	}
	return cl
}

// recoveredRun returns the messages of hist that follow from without a hole, up to
// the offset of to, and whether they reach it.
func recoveredRun(from, to fabric.Position, hist []*pb.RoomMessage) ([]*pb.RoomMessage, bool) {
	var run []*pb.RoomMessage
	next := from.Offset + 1
	for _, rm := range hist {
		if rm.GetOffset() < next || rm.GetOffset() > to.Offset {
			continue
		}
		if rm.GetOffset() != next {
			break // a hole: not recoverable
		}
		run = append(run, rm)
		next++
	}
	if next != to.Offset+1 {
		return nil, false
	}
	return run, true
}
