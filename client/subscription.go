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
	// after a reconnect.
	Rejoin bool
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
// re-join that did not recover. The application should re-sync the room from its own
// source of truth.
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
// This is where an application learns that a re-join did not recover (info.Gap()).
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
// subscription ends. Safe for concurrent use.
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
	recoverable bool
	last        JoinInfo
	early       []*pb.RoomMessage // pushes that raced ahead of the join's reply
	err         error
	dups        uint64
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
			c.applyJoinLocked(sub, m.GetJoin(), o.recoverFrom, false, false)
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

// applyJoinLocked records a join's result and delivers its report and recovered
// messages, then any pushes that arrived before it.
func (c *Client) applyJoinLocked(s *Subscription, jr *pb.JoinResult, recoverFrom *fabric.Position, rejoin, server bool) {
	room := posFromPB(jr.GetPosition())
	info := JoinInfo{
		Room: s.room, Position: room, Recoverable: jr.GetRecoverable(), Rejoin: rejoin, Server: server,
		RecoveryAsked: recoverFrom != nil, Recovered: recoverFrom != nil && jr.GetRecovered(),
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
		s.pos = *recoverFrom
		for _, m := range jr.GetMessages() {
			c.acceptLocked(s, m)
		}
	}
	if s.pos.Epoch != room.Epoch || s.pos.Offset < room.Offset {
		s.pos = room
	}
	early := s.early
	s.early = nil
	for _, m := range early {
		c.acceptLocked(s, m)
	}
}

// acceptLocked delivers m unless it was delivered already.
func (c *Client) acceptLocked(s *Subscription, m *pb.RoomMessage) {
	if m.GetEpoch() == s.pos.Epoch && m.GetOffset() <= s.pos.Offset {
		s.dups++
		return
	}
	if m.GetEpoch() == s.pos.Epoch && m.GetOffset() > s.pos.Offset+1 {
		c.log.Warn("gap in room stream", "room", s.room, "after", s.pos.Offset, "got", m.GetOffset())
	}
	s.pos = fabric.Position{Epoch: m.GetEpoch(), Offset: m.GetOffset()}
	msg := messageFromPB(m)
	if f := s.onMessage; f != nil {
		s.p.push(func() { f(msg) })
		return
	}
	ch := s.ch
	s.p.push(func() {
		select {
		case ch <- msg:
		case <-c.done:
		}
	})
}

// roomMessage handles a message push; it runs on the reader goroutine.
func (c *Client) roomMessage(m *pb.RoomMessage) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.subs[m.GetRoom()]
	if s == nil {
		return // left meanwhile
	}
	switch s.status {
	case subPending, subRejoining:
		s.early = append(s.early, m)
	case subEstablished:
		c.acceptLocked(s, m)
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
	c.applyJoinLocked(s, jr, nil, created == nil && s.status != subPending, true)
	return created
}

// rejoinCallLocked builds the re-join of s, recovering from its last position when
// the room keeps history.
func (c *Client) rejoinCallLocked(s *Subscription) *call {
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
		defer c.mu.Unlock()
		if s.status != subRejoining {
			return
		}
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
				return
			}
			c.log.Warn("re-join failed", "room", s.room, "err", e)
			c.endLocked(s, e)
			return
		}
		c.applyJoinLocked(s, m.GetJoin(), from, true, false)
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
	case from.Epoch != to.Epoch || from.Offset > to.Offset || !jr.GetRecoverable():
		c.applyJoinLocked(s, jr, &from, true, true) // recovered=false: a new stream
		return nil
	case from.Offset == to.Offset:
		c.applyJoinLocked(s, &pb.JoinResult{Room: s.room, Position: jr.GetPosition(), Recoverable: true, Recovered: true}, &from, true, true)
		return nil
	}
	s.status = subRejoining
	missing := to.Offset - from.Offset
	hc := &pb.HistoryCommand{Room: s.room, Since: posToPB(from), Limit: uint32(min(missing, 1<<32-1))}
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
		res := &pb.JoinResult{Room: s.room, Position: jr.GetPosition(), Recoverable: true}
		var msgs []*pb.RoomMessage
		next := from.Offset + 1
		for _, rm := range m.GetHistory().GetMessages() {
			if rm.GetEpoch() != to.Epoch || rm.GetOffset() < next || rm.GetOffset() > to.Offset {
				continue
			}
			if rm.GetOffset() != next {
				break // a hole: not recoverable
			}
			msgs = append(msgs, rm)
			next++
		}
		if m.GetError() == nil && next == to.Offset+1 {
			res.Recovered, res.Messages = true, msgs
		}
		c.applyJoinLocked(s, res, &from, true, true)
	}
	return cl
}
