package node

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/wsio"
)

// maxJoinBuffer bounds what a joining member buffers while the fabric answers its
// join; a room that busy makes the joiner a slow consumer.
const maxJoinBuffer = 4096

// room is the local index entry of a room: its members on this node. members and
// dead are guarded by mu; Deliver holds mu for reading while it fans out. A room is
// deleted from the index (and marked dead, under both locks) when its last member
// leaves; addMember retries on a dead room.
type room struct {
	mu      sync.RWMutex
	members []*member
	dead    bool
}

// member is one connection's membership in one room.
//
// A member starts "joining": deliveries are buffered in buf (under mu) until the
// join's reply has been queued, then finishJoin flushes the buffer (dropping messages
// at or before the join position) and sets live, all under mu. Once live is true it
// stays true and deliveries go straight to the connection without taking mu.
type member struct {
	c    *conn
	room string
	idx  int // position in room.members; guarded by room.mu

	live     atomic.Bool
	mu       sync.Mutex
	buf      []pending
	overflow bool // buf hit maxJoinBuffer
	removed  bool // left or closed; buf is dropped
}

// pending is a buffered delivery: a room message or a membership push.
type pending struct {
	msg  *fabric.Message
	push *pb.ServerMessage
}

// addMember puts m into the local index.
func (n *Node) addMember(m *member) {
	for {
		n.roomsMu.RLock()
		r := n.rooms[m.room]
		n.roomsMu.RUnlock()
		if r == nil {
			n.roomsMu.Lock()
			if r = n.rooms[m.room]; r == nil {
				r = &room{}
				n.rooms[m.room] = r
			}
			n.roomsMu.Unlock()
		}
		r.mu.Lock()
		if !r.dead {
			m.idx = len(r.members)
			r.members = append(r.members, m)
			r.mu.Unlock()
			return
		}
		r.mu.Unlock() // deleted meanwhile: look again
	}
}

// removeMember takes m out of the local index and drops its buffer. It is
// idempotent. Only emptying a room takes the index's write lock, so leaves do not
// stall deliveries to other rooms.
func (n *Node) removeMember(m *member) {
	n.roomsMu.RLock()
	r := n.rooms[m.room]
	n.roomsMu.RUnlock()
	if r != nil {
		r.mu.Lock()
		empty := false
		if m.idx < len(r.members) && r.members[m.idx] == m {
			last := len(r.members) - 1
			r.members[m.idx] = r.members[last]
			r.members[m.idx].idx = m.idx
			r.members[last] = nil
			r.members = r.members[:last]
			empty = last == 0
		}
		r.mu.Unlock()
		if empty {
			n.roomsMu.Lock()
			r.mu.Lock()
			if len(r.members) == 0 && !r.dead && n.rooms[m.room] == r {
				r.dead = true
				delete(n.rooms, m.room)
			}
			r.mu.Unlock()
			n.roomsMu.Unlock()
		}
	}
	m.mu.Lock()
	m.removed = true
	m.buf = nil
	m.mu.Unlock()
}

// frames holds a room message encoded at most once per subprotocol for all the
// receivers of one delivery.
type frames struct {
	json, bin         *wsio.Message
	jsonDone, binDone bool
}

func (f *frames) get(n *Node, msg *fabric.Message, binary bool) *wsio.Message {
	if binary {
		if !f.binDone {
			f.binDone = true
			data, err := marshalRoomMessageProto(msg)
			if err == nil {
				f.bin, err = wsio.NewMessage(true, data)
			}
			if err != nil {
				n.log.Error("encoding room message", "room", msg.Room, "err", err)
			}
		}
		return f.bin
	}
	if !f.jsonDone {
		f.jsonDone = true
		data := appendRoomMessageJSON(make([]byte, 0, 160+len(msg.Room)+len(msg.Payload.Data)*4/3+len(msg.Publisher.Info)), msg)
		var err error
		if f.json, err = wsio.NewMessage(false, data); err != nil {
			n.log.Error("encoding room message", "room", msg.Room, "err", err)
		}
	}
	return f.json
}

// pushFrames encodes a generic push at most once per subprotocol.
type pushFrames struct {
	m         *pb.ServerMessage
	json, bin *wsio.Message
}

func (f *pushFrames) get(binary bool) *wsio.Message {
	p := &f.json
	if binary {
		p = &f.bin
	}
	if *p == nil {
		data, err := marshalServerMessage(f.m, binary)
		if err != nil {
			return nil
		}
		*p, _ = wsio.NewMessage(binary, data)
	}
	return *p
}

// Deliver hands a room message to the local members of msg.Room (mesh.Edge). Calls
// for one room come one at a time, in offset order. It never blocks: it encodes the
// message once per subprotocol in use and queues it to each member; a member whose
// queue is full is closed as a slow consumer instead of stalling the room.
func (n *Node) Deliver(msg *fabric.Message) {
	n.roomsMu.RLock()
	r := n.rooms[msg.Room]
	n.roomsMu.RUnlock()
	if r == nil {
		return
	}
	var f frames
	var slow []*conn
	sent, bytes := 0, 0
	r.mu.RLock()
	for _, m := range r.members {
		if !m.live.Load() && m.buffer(pending{msg: msg}) {
			continue
		}
		wm := f.get(n, msg, m.c.binary)
		if wm == nil {
			continue
		}
		switch err := m.c.ws.Send(wm); {
		case err == nil:
			sent++
			bytes += wm.Len()
		case errors.Is(err, wsio.ErrQueueFull):
			slow = append(slow, m.c)
		}
	}
	r.mu.RUnlock()
	n.met.msgsOut.Add(float64(sent))
	n.met.bytesOut.Add(float64(bytes))
	for _, c := range slow {
		c.slow()
	}
}

// buffer appends p to a joining member's buffer. It reports false when the member
// turned live meanwhile (the caller then sends directly).
func (m *member) buffer(p pending) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.live.Load() {
		return false
	}
	if m.removed || m.overflow {
		return true
	}
	if len(m.buf) >= maxJoinBuffer {
		m.overflow = true
		m.buf = nil
		return true
	}
	m.buf = append(m.buf, p)
	return true
}

// DeliverMembership pushes member_joined or member_left to the local members of room
// (mesh.Edge). Same ordering and non-blocking rules as Deliver.
func (n *Node) DeliverMembership(roomName string, who fabric.ClientInfo, joined bool) {
	n.roomsMu.RLock()
	r := n.rooms[roomName]
	n.roomsMu.RUnlock()
	if r == nil {
		return
	}
	push := &pb.ServerMessage{}
	if joined {
		push.Body = &pb.ServerMessage_MemberJoined{MemberJoined: &pb.MemberJoined{Room: roomName, Member: clientInfoToPB(who)}}
	} else {
		push.Body = &pb.ServerMessage_MemberLeft{MemberLeft: &pb.MemberLeft{Room: roomName, Member: clientInfoToPB(who)}}
	}
	f := pushFrames{m: push}
	var slow []*conn
	r.mu.RLock()
	for _, m := range r.members {
		if !m.live.Load() && m.buffer(pending{push: push}) {
			continue
		}
		if wm := f.get(m.c.binary); wm != nil {
			if err := m.c.sendRaw(wm); errors.Is(err, wsio.ErrQueueFull) {
				slow = append(slow, m.c)
			}
		}
	}
	r.mu.RUnlock()
	for _, c := range slow {
		c.slow()
	}
}

// startJoin registers a joining member for room locally, then asks the fabric to
// join. On success the member is still joining (buffering): the caller queues its
// reply and calls finishJoin. On failure the member is gone.
func (c *conn) startJoin(ctx context.Context, roomName string, recoverFrom *fabric.Position) (fabric.JoinResult, *member, error) {
	n := c.n
	if err := fabric.ValidateRoom(roomName); err != nil {
		return fabric.JoinResult{}, nil, err
	}
	if _, err := n.cfg.Namespaces.Lookup(roomName); err != nil {
		return fabric.JoinResult{}, nil, err
	}
	c.mu.Lock()
	if c.state != stateConnected {
		c.mu.Unlock()
		return fabric.JoinResult{}, nil, fabric.Errorf(fabric.CodeUnavailable, "connection is closing")
	}
	if _, ok := c.rooms[roomName]; ok {
		c.mu.Unlock()
		return fabric.JoinResult{}, nil, fabric.Errorf(fabric.CodeAlreadyJoined, "already joined %q", roomName)
	}
	if len(c.rooms) >= n.cfg.MaxRoomsPerConn {
		c.mu.Unlock()
		return fabric.JoinResult{}, nil, fabric.Errorf(fabric.CodeLimitExceeded, "at most %d rooms per connection", n.cfg.MaxRoomsPerConn)
	}
	m := &member{c: c, room: roomName}
	if c.rooms == nil {
		c.rooms = make(map[string]*member)
	}
	c.rooms[roomName] = m
	// Indexed under c.mu so closeWith, which takes c.mu first, cannot miss it.
	n.addMember(m)
	ci := c.ci
	c.mu.Unlock()

	res, err := n.fab.Join(ctx, roomName, ci, recoverFrom)
	if err != nil {
		c.dropMember(m)
		return fabric.JoinResult{}, nil, err
	}
	return res, m, nil
}

// dropMember undoes a member that never went live.
func (c *conn) dropMember(m *member) {
	c.mu.Lock()
	if c.rooms[m.room] == m {
		delete(c.rooms, m.room)
	}
	c.mu.Unlock()
	c.n.removeMember(m)
}

// finishJoin queues the join's reply, then the buffered deliveries after pos, then
// makes the member live, all under the member's lock so no delivery slips in
// between. It reports false when the member was removed meanwhile (the connection
// closed or was made to leave); the caller then undoes the fabric join. reply may be
// nil when the reply was already queued (auto-joins at connect).
func (c *conn) finishJoin(m *member, pos fabric.Position, reply *pb.ServerMessage) bool {
	// Encode the reply (which may carry many recovered messages) before taking the
	// member's lock, which deliveries to the room wait on.
	var wm *wsio.Message
	if reply != nil {
		if wm = c.encode(reply); wm == nil {
			wm = c.encode(&pb.ServerMessage{Id: reply.Id, Error: &pb.Error{
				Code: pb.ErrorCode_ERROR_CODE_INTERNAL, Message: "internal error", Temporary: true,
			}})
		}
	}
	slow, ok := c.flushJoin(m, pos, wm)
	if slow {
		c.slow()
	}
	if !ok {
		n := c.n
		ci := c.info()
		n.spawn(func() {
			ctx, cancel := n.fabricCtx()
			defer cancel()
			_ = n.fab.Leave(ctx, m.room, ci)
		})
	}
	return ok
}

func (c *conn) flushJoin(m *member, pos fabric.Position, reply *wsio.Message) (slow, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.removed {
		return false, false
	}
	if m.overflow {
		return true, true
	}
	send := func(wm *wsio.Message) {
		if wm != nil && !slow && errors.Is(c.sendRaw(wm), wsio.ErrQueueFull) {
			slow = true
		}
	}
	send(reply)
	for _, p := range m.buf {
		if p.msg != nil {
			if p.msg.Pos.Epoch == pos.Epoch && p.msg.Pos.Offset <= pos.Offset {
				continue // already covered by the join position (or its Missed list)
			}
			var f frames
			send(f.get(c.n, p.msg, c.binary))
			continue
		}
		send(c.encode(p.push))
	}
	m.buf = nil
	m.live.Store(true)
	return slow, true
}

// info returns the connection's ClientInfo.
func (c *conn) info() fabric.ClientInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ci
}

// leave removes the connection from room locally, then at the fabric.
func (c *conn) leave(ctx context.Context, roomName string) error {
	ci, err := c.leaveLocal(roomName)
	if err != nil {
		return err
	}
	return c.n.fab.Leave(ctx, roomName, ci)
}

// leaveLocal removes the connection from room's local index: no delivery of the
// room reaches it afterwards.
func (c *conn) leaveLocal(roomName string) (fabric.ClientInfo, error) {
	c.mu.Lock()
	m := c.rooms[roomName]
	if m == nil {
		c.mu.Unlock()
		return fabric.ClientInfo{}, fabric.Errorf(fabric.CodeNotJoined, "not joined to %q", roomName)
	}
	delete(c.rooms, roomName)
	ci := c.ci
	c.mu.Unlock()
	c.n.removeMember(m)
	return ci, nil
}

// isMember reports whether the connection is in room (live).
func (c *conn) isMember(roomName string) bool {
	c.mu.Lock()
	m := c.rooms[roomName]
	c.mu.Unlock()
	return m != nil && m.live.Load()
}

// SendToConn pushes a direct message to a local connection (mesh.Edge).
func (n *Node) SendToConn(id string, p fabric.Payload) error {
	c, err := n.connected(id)
	if err != nil {
		return err
	}
	err = c.push(&pb.ServerMessage{Body: &pb.ServerMessage_Direct{Direct: &pb.DirectMessage{Payload: payloadToPB(p)}}})
	switch {
	case errors.Is(err, wsio.ErrQueueFull):
		return fabric.Errorf(fabric.CodeUnavailable, "connection %q is too slow", id)
	case errors.Is(err, wsio.ErrClosed):
		return fabric.Errorf(fabric.CodeNotFound, "connection %q not found", id)
	}
	return err
}

// JoinConn joins a local connection to room on the backend's behalf and pushes
// `joined` to it (mesh.Edge). The token's join rights do not apply: the backend
// decides; the namespace must exist and the rooms-per-connection limit holds.
func (n *Node) JoinConn(ctx context.Context, id, roomName string) error {
	c, err := n.connected(id)
	if err != nil {
		return err
	}
	res, m, err := c.startJoin(ctx, roomName, nil)
	if err != nil {
		return err
	}
	push := &pb.ServerMessage{Body: &pb.ServerMessage_Joined{Joined: &pb.Joined{Join: joinResultToPB(roomName, res)}}}
	if !c.finishJoin(m, res.Pos, push) {
		return fabric.Errorf(fabric.CodeNotFound, "connection %q closed during the join", id)
	}
	return nil
}

// LeaveConn removes a local connection from room and pushes `left` to it
// (mesh.Edge).
func (n *Node) LeaveConn(ctx context.Context, id, roomName string) error {
	c, err := n.connected(id)
	if err != nil {
		return err
	}
	ci, err := c.leaveLocal(roomName)
	if err != nil {
		return err
	}
	// The connection is out of the room locally whatever the owner says next, so
	// it learns that now.
	_ = c.push(&pb.ServerMessage{Body: &pb.ServerMessage_Left{Left: &pb.Left{Room: roomName, Reason: "backend"}}})
	return n.fab.Leave(ctx, roomName, ci)
}

// KickConn pushes disconnect to a local connection and closes it with kick's code
// (mesh.Edge).
func (n *Node) KickConn(id string, kick fabric.Kick) error {
	n.mu.Lock()
	c := n.conns[id]
	n.mu.Unlock()
	if c == nil {
		return fabric.Errorf(fabric.CodeNotFound, "connection %q not found", id)
	}
	code := kick.Code
	if code == 0 {
		code = fabric.CloseKicked
	}
	if wm := c.encode(&pb.ServerMessage{Body: &pb.ServerMessage_Disconnect{Disconnect: &pb.Disconnect{
		Code: uint32(code), Reason: kick.Reason, Reconnect: kick.Reconnect,
	}}}); wm != nil {
		_ = c.sendRaw(wm)
	}
	c.closeWith(code, kick.Reason, closeQuiet)
	return nil
}

// LocalMembers returns this node's members of the rooms for which keep reports true:
// room -> one ClientInfo per connection (joins in progress included, since the node
// registers a member before asking the owner). A new owner of a room's shard rebuilds
// presence and interest from it (mesh.MemberLister): the node is the source of truth
// for its own connections.
func (n *Node) LocalMembers(keep func(room string) bool) map[string][]fabric.ClientInfo {
	n.roomsMu.RLock()
	var rooms []string
	var idx []*room
	for name, r := range n.rooms {
		if keep(name) {
			rooms = append(rooms, name)
			idx = append(idx, r)
		}
	}
	n.roomsMu.RUnlock()
	out := make(map[string][]fabric.ClientInfo, len(rooms))
	var conns []*conn
	for i, r := range idx {
		conns = conns[:0]
		r.mu.RLock()
		for _, m := range r.members {
			conns = append(conns, m.c)
		}
		r.mu.RUnlock()
		// conn.mu is taken outside room.mu, as everywhere else.
		for _, c := range conns {
			out[rooms[i]] = append(out[rooms[i]], c.info())
		}
	}
	return out
}
