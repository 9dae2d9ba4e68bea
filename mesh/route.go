package mesh

import (
	"context"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"

	"github.com/roomcast/roomcast/fabric"
	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// The exported room operations: in a mesh of one they run the owner code at once; in
// cluster mode they run it when this node serves the room's shard and otherwise ask
// the owner over the peer link (see cluster.routeRoom).

// Publish assigns the message the room's next offset, retains it when the namespace
// keeps history, hands it to the edges holding members and returns its position. A
// publish whose idempotency key was seen within the namespace's window returns the
// original position and delivers nothing. The payload's bytes are copied.
func (m *Mesh) Publish(ctx context.Context, p fabric.Publication) (fabric.Position, error) {
	if m.cl == nil {
		return m.publishLocal(ctx, p, ep{s: m.epoch})
	}
	if _, err := m.lookupRoom(p.Room); err != nil {
		return fabric.Position{}, err
	}
	if err := validatePayload(p.Payload); err != nil {
		return fabric.Position{}, err
	}
	var pos fabric.Position
	req := &meshv1.PublishRequest{Room: p.Room, Payload: payloadToWire(p.Payload), IdempotencyKey: p.IdempotencyKey}
	if p.Publisher.User != "" || p.Publisher.Conn != "" {
		req.Publisher = clientToWire(p.Publisher)
	}
	err := m.cl.routeRoom(ctx, p.Room, p.IdempotencyKey != "",
		func(e ep) (err error) {
			pos, err = m.publishLocal(ctx, p, e)
			return err
		},
		&meshv1.Envelope{Body: &meshv1.Envelope_Publish{Publish: req}},
		func(resp *meshv1.Envelope) error {
			pos = posFromWire(resp.GetPublishReply().GetPosition())
			return nil
		})
	return pos, err
}

// Join registers ci as a member of room and returns the room's position, read
// atomically with the registration: the connection must receive exactly the messages
// after JoinResult.Pos. With recoverFrom it also returns the messages after that
// position, or Recovered=false when they are not all retained (another epoch, too
// old, in the future, or a namespace without history).
func (m *Mesh) Join(ctx context.Context, room string, ci fabric.ClientInfo, recoverFrom *fabric.Position) (fabric.JoinResult, error) {
	if m.cl == nil {
		return m.joinLocal(ctx, room, ci, recoverFrom, 0, ep{s: m.epoch})
	}
	ns, err := m.lookupRoom(room)
	if err != nil {
		return fabric.JoinResult{}, err
	}
	if ci.Conn == "" || ci.User == "" {
		return fabric.JoinResult{}, fabric.Errorf(fabric.CodeBadRequest, "join needs a user and a connection")
	}
	// Recorded before the owner hears of it, so that a new owner rebuilding the room
	// meanwhile finds the member; undone if the join fails.
	added := m.keepsLedger() && m.ledger.add(room, ci)
	var res fabric.JoinResult
	// One attempt across the retries of this join (see JoinRequest.attempt).
	attempt := rand.Uint64() | 1
	req := &meshv1.JoinRequest{Room: room, Client: clientToWire(ci), Attempt: attempt}
	if recoverFrom != nil {
		req.RecoverFrom = posToWire(*recoverFrom)
	}
	err = m.cl.routeRoom(ctx, room, true,
		func(e ep) (err error) {
			res, err = m.joinLocal(ctx, room, ci, recoverFrom, attempt, e)
			return err
		},
		&meshv1.Envelope{Body: &meshv1.Envelope_Join{Join: req}},
		func(resp *meshv1.Envelope) error {
			r := resp.GetJoinReply()
			res = fabric.JoinResult{
				Pos:         posFromWire(r.GetPosition()),
				Recoverable: ns.HistorySize > 0,
				Recovered:   r.GetRecovered(),
				Missed:      messagesFromWire(r.GetMissed()),
			}
			return nil
		})
	if err != nil && added {
		m.ledger.remove(room, ci.Conn)
	}
	return res, err
}

// Leave removes ci from room. It fails with fabric.ErrNotJoined when ci is not a member.
// It works after Close too (in a mesh of one), so a node shutting down can still
// clean up.
func (m *Mesh) Leave(ctx context.Context, room string, ci fabric.ClientInfo) error {
	if m.cl == nil {
		return m.leaveLocal(ctx, room, ci, ep{s: m.epoch})
	}
	if m.keepsLedger() {
		m.ledger.remove(room, ci.Conn)
	}
	return m.cl.routeRoom(ctx, room, true,
		func(e ep) error { return m.leaveLocal(ctx, room, ci, e) },
		&meshv1.Envelope{Body: &meshv1.Envelope_Leave{Leave: &meshv1.LeaveRequest{Room: room, Client: clientToWire(ci)}}},
		func(*meshv1.Envelope) error { return nil })
}

// Presence lists the room's members ordered by user, each with their connections in
// join order. It fails with fabric.ErrNotAvailable when the namespace has no presence.
func (m *Mesh) Presence(ctx context.Context, room string) ([]fabric.Member, error) {
	if m.cl == nil {
		return m.presenceLocal(ctx, room, ep{s: m.epoch})
	}
	if _, err := m.lookupRoom(room); err != nil {
		return nil, err
	}
	var out []fabric.Member
	err := m.cl.routeRoom(ctx, room, true,
		func(e ep) (err error) {
			out, err = m.presenceLocal(ctx, room, e)
			return err
		},
		&meshv1.Envelope{Body: &meshv1.Envelope_Presence{Presence: &meshv1.PresenceRequest{Room: room}}},
		func(resp *meshv1.Envelope) error {
			ms := resp.GetPresenceReply().GetMembers()
			out = make([]fabric.Member, len(ms))
			for i, mm := range ms {
				out[i] = memberFromWire(mm)
			}
			return nil
		})
	return out, err
}

// PresenceStats counts the room's users and connections. It fails with
// fabric.ErrNotAvailable when the namespace has no presence.
func (m *Mesh) PresenceStats(ctx context.Context, room string) (fabric.Stats, error) {
	if m.cl == nil {
		return m.presenceStatsLocal(ctx, room, ep{s: m.epoch})
	}
	if _, err := m.lookupRoom(room); err != nil {
		return fabric.Stats{}, err
	}
	var st fabric.Stats
	err := m.cl.routeRoom(ctx, room, true,
		func(e ep) (err error) {
			st, err = m.presenceStatsLocal(ctx, room, e)
			return err
		},
		&meshv1.Envelope{Body: &meshv1.Envelope_PresenceStats{PresenceStats: &meshv1.PresenceStatsRequest{Room: room}}},
		func(resp *meshv1.Envelope) error {
			r := resp.GetPresenceStatsReply()
			st = fabric.Stats{Users: int(r.GetUsers()), Conns: int(r.GetConnections())}
			return nil
		})
	return st, err
}

// History reads the room's retained messages after q.Since (all retained when nil),
// oldest first or newest first with q.Reverse, at most q.Limit (capped by
// Config.HistoryLimit). It fails with fabric.ErrNotAvailable when the namespace keeps
// no history and with fabric.ErrBadRequest for a position of another epoch.
func (m *Mesh) History(ctx context.Context, room string, q fabric.HistoryQuery) (fabric.History, error) {
	if m.cl == nil {
		return m.historyLocal(ctx, room, q, ep{s: m.epoch})
	}
	if _, err := m.lookupRoom(room); err != nil {
		return fabric.History{}, err
	}
	var h fabric.History
	req := &meshv1.HistoryRequest{Room: room, Limit: uint32(max(q.Limit, 0)), Reverse: q.Reverse}
	if q.Since != nil {
		req.Since = posToWire(*q.Since)
	}
	err := m.cl.routeRoom(ctx, room, true,
		func(e ep) (err error) {
			h, err = m.historyLocal(ctx, room, q, e)
			return err
		},
		&meshv1.Envelope{Body: &meshv1.Envelope_History{History: req}},
		func(resp *meshv1.Envelope) error {
			r := resp.GetHistoryReply()
			h = fabric.History{Messages: messagesFromWire(r.GetMessages()), Pos: posFromWire(r.GetPosition())}
			return nil
		})
	return h, err
}

// ListRooms returns up to limit rooms (default 100, at most 1000) that have members
// or retained history, whose names start with prefix and sort after `after`, ordered
// by name, and whether more follow. In cluster mode every node is asked for the rooms
// it owns and the answers are merged; a node that does not answer is left out.
func (m *Mesh) ListRooms(ctx context.Context, prefix, after string, limit int) ([]fabric.RoomSummary, bool, error) {
	if m.cl == nil {
		return m.listRoomsLocal(ctx, prefix, after, limit)
	}
	if m.closed.Load() {
		return nil, false, m.errClosed()
	}
	if limit <= 0 {
		limit = DefaultListRooms
	}
	limit = min(limit, MaxListRooms)
	return m.cl.listRooms(ctx, prefix, after, limit)
}

// mergeRooms merges per-node pages (each ordered by name) into one page of limit.
func mergeRooms(pages [][]fabric.RoomSummary, more bool, limit int) ([]fabric.RoomSummary, bool) {
	var all []fabric.RoomSummary
	for _, p := range pages {
		all = append(all, p...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	all = slices.CompactFunc(all, func(a, b fabric.RoomSummary) bool { return a.Name == b.Name })
	if len(all) > limit {
		return all[:limit], true
	}
	return all, more
}

// fanDeliver sends msg to every other node holding members of r (r.mu held, so a
// room's Deliver envelopes are queued one at a time, in offset order).
func (m *Mesh) fanDeliver(r *room, msg *fabric.Message, e ep) {
	if m.cl == nil || !r.hasRemote(m.cfg.Node) {
		return
	}
	env := &meshv1.Envelope{Epoch: e.n, Shard: uint32(m.shardIndex(r.name)),
		Body: &meshv1.Envelope_Deliver{Deliver: &meshv1.Deliver{Room: r.name, Messages: []*pb.RoomMessage{messageToWire(msg)}}}}
	m.cl.sendToNodes(r, env)
}

// fanMembership pushes a member_joined or member_left to every other node holding
// members of r (r.mu held).
func (m *Mesh) fanMembership(r *room, ci fabric.ClientInfo, joined bool, e ep) {
	if m.cl == nil || !r.hasRemote(m.cfg.Node) {
		return
	}
	change := meshv1.MembershipChange_MEMBERSHIP_CHANGE_LEFT
	if joined {
		change = meshv1.MembershipChange_MEMBERSHIP_CHANGE_JOINED
	}
	env := &meshv1.Envelope{Epoch: r.epoch, Shard: uint32(m.shardIndex(r.name)),
		Body: &meshv1.Envelope_MembershipPush{MembershipPush: &meshv1.MembershipPush{
			Room: r.name, Change: change,
			Member:   &pb.Member{User: ci.User, Connections: []string{ci.Conn}, Info: infoToWire(ci.Info)},
			Position: &pb.Position{Epoch: epochString(r.epoch), Offset: r.offset},
		}}}
	m.cl.sendToNodes(r, env)
}

// hasRemote reports whether r has members on a node other than self.
func (r *room) hasRemote(self string) bool {
	for n := range r.nodes {
		if n != self {
			return true
		}
	}
	return false
}

// keepsLedger reports whether the mesh records its edge's memberships itself: only
// for an edge that cannot list them (see MemberLister).
func (m *Mesh) keepsLedger() bool {
	_, ok := m.edge().(MemberLister)
	return !ok
}

// ledger is a cluster node's record of the room memberships its own edge registered
// (room -> conn -> client). It is what the node reports when a new owner rebuilds a
// shard. ledger.mu is a leaf lock.
type ledger struct {
	mu    sync.Mutex
	rooms map[string]map[string]fabric.ClientInfo
}

// add records ci in room and reports whether it was not recorded yet.
func (l *ledger) add(room string, ci fabric.ClientInfo) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rooms == nil {
		l.rooms = make(map[string]map[string]fabric.ClientInfo)
	}
	cs := l.rooms[room]
	if cs == nil {
		cs = make(map[string]fabric.ClientInfo)
		l.rooms[room] = cs
	}
	_, had := cs[ci.Conn]
	cs[ci.Conn] = ci
	return !had
}

func (l *ledger) remove(room, conn string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cs := l.rooms[room]; cs != nil {
		delete(cs, conn)
		if len(cs) == 0 {
			delete(l.rooms, room)
		}
	}
}

// snapshot returns the local members of rooms for which keep is true, one entry per
// room, each member with its local connections.
func (l *ledger) snapshot(keep func(room string) bool) map[string][]fabric.ClientInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string][]fabric.ClientInfo)
	for room, cs := range l.rooms {
		if !keep(room) {
			continue
		}
		for _, ci := range cs {
			out[room] = append(out[room], ci)
		}
	}
	return out
}
