package mesh

import (
	"context"
	"encoding/json"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/roomcast/roomcast/fabric"
)

// room is the owner state of one room. Every field is guarded by mu.
type room struct {
	name string
	// epoch is the shard epoch the room was created in (0 in a mesh of one); a room
	// of an older epoch is stale state of an earlier ownership.
	epoch int64
	mu    sync.Mutex
	// dead is set when the room was removed from its shard; a caller that locked a
	// dead room looks it up again.
	dead    bool
	offset  uint64
	hist    deque[*fabric.Message] // contiguous offsets ending at offset when not empty
	keys    idemKeys
	members map[string]*member
	conns   int
	// nodes counts the room's connections per node name: the nodes that must get its
	// deliveries and membership pushes (cluster mode).
	nodes map[string]int
	// lineage lists the earlier epochs of the room's stream, oldest first, when its
	// shard was handed over between live owners (see handover.go).
	lineage []epochSpan
}

// member is one user present in a room.
type member struct {
	info  []byte
	conns []string   // join order
	marks []joinMark // per connection, parallel to conns
}

// joinMark is how a connection's registration came about: the join attempt that
// made it (0: rebuilt, or a mesh of one) and the room's offset at that moment.
type joinMark struct {
	attempt uint64
	at      uint64
}

// idemKeys remembers publish idempotency keys until their window ends.
type idemKeys struct {
	m     map[string]idemEntry
	order deque[keyExpiry] // insertion order; windows are per namespace, so roughly expiry order
}

type idemEntry struct {
	pos fabric.Position
	exp time.Time
}

type keyExpiry struct {
	key string
	exp time.Time
}

func (k *idemKeys) len() int { return len(k.m) }

func (k *idemKeys) get(key string, now time.Time) (fabric.Position, bool) {
	e, ok := k.m[key]
	if !ok || !now.Before(e.exp) {
		return fabric.Position{}, false
	}
	return e.pos, true
}

func (k *idemKeys) put(key string, pos fabric.Position, exp time.Time) {
	if k.m == nil {
		k.m = make(map[string]idemEntry)
	}
	k.m[key] = idemEntry{pos: pos, exp: exp}
	k.order.push(keyExpiry{key: key, exp: exp})
}

// expire forgets keys whose window ended. A key whose window got longer (namespace
// change) behind a shorter one waits for it, which is harmless: get checks expiry.
func (k *idemKeys) expire(now time.Time) {
	n := 0
	for n < k.order.len() {
		ke := k.order.at(n)
		if now.Before(ke.exp) {
			break
		}
		// The key may have been published again with a later expiry.
		if e, ok := k.m[ke.key]; ok && e.exp.Equal(ke.exp) {
			delete(k.m, ke.key)
		}
		n++
	}
	k.order.dropFront(n)
	if len(k.m) == 0 {
		k.m = nil
		k.order.clear()
	}
}

func (k *idemKeys) clear() {
	k.m = nil
	k.order.clear()
}

// expire drops history older than the namespace's TTL (or all of it when the
// namespace keeps none any more) and idempotency keys past their window.
func (r *room) expire(m *Mesh, ns *fabric.Namespace, now time.Time) {
	switch {
	case ns.HistorySize == 0:
		if r.hist.len() > 0 {
			m.met.retained.Sub(float64(r.hist.clear()))
		}
	default:
		n := 0
		if over := r.hist.len() - ns.HistorySize; over > 0 {
			n = over // the namespace shrank its history
		}
		if ns.HistoryTTL > 0 {
			cutoff := now.Add(-ns.HistoryTTL)
			for n < r.hist.len() && r.hist.at(n).Time.Before(cutoff) {
				n++
			}
		}
		if n > 0 {
			r.hist.dropFront(n)
			m.met.retained.Sub(float64(n))
		}
	}
	if r.keys.len() > 0 {
		r.keys.expire(now)
	}
}

// empty reports whether the room holds nothing worth keeping.
func (r *room) empty() bool {
	return len(r.members) == 0 && r.hist.len() == 0 && r.keys.len() == 0
}

// firstRetained returns the offset of the oldest retained message (0 if none).
func (r *room) firstRetained() uint64 {
	if r.hist.len() == 0 {
		return 0
	}
	return r.hist.at(0).Pos.Offset
}

// lockRoom returns the room named name, locked, from shard s, as owner state of
// epoch e. With create it makes the room if needed; without, it returns nil for an
// absent room. A newer epoch than the shard's resets the shard (the state of an
// earlier ownership is stale); an older one fails with errNotOwner.
func (m *Mesh) lockRoom(name string, create bool, e ep) (*shard, *room, error) {
	s := m.shards[m.shardIndex(name)]
	for {
		s.mu.Lock()
		if e.n != s.epochN {
			if e.n < s.epochN {
				s.mu.Unlock()
				return s, nil, errNotOwner
			}
			m.resetShardLocked(s, e.n)
		}
		r := s.rooms[name]
		if r == nil {
			if !create {
				s.mu.Unlock()
				return s, nil, nil
			}
			r = &room{name: name, offset: s.floor, epoch: e.n}
			s.rooms[name] = r
			m.met.rooms.Inc()
		}
		s.mu.Unlock()
		r.mu.Lock()
		if !r.dead && r.epoch == e.n {
			return s, r, nil
		}
		// Removed or reset between the lookup and the lock: look again.
		r.mu.Unlock()
	}
}

// resetShardLocked forgets a shard's rooms (s.mu held): they belong to an earlier
// ownership. Rooms still locked by someone are unreachable from now on.
func (m *Mesh) resetShardLocked(s *shard, epoch int64) {
	m.met.rooms.Sub(float64(len(s.rooms)))
	s.rooms = make(map[string]*room)
	s.floor = 0
	s.epochN = epoch
}

// dropIfEmpty removes r (locked by the caller) from its shard when it holds nothing.
func (m *Mesh) dropIfEmpty(s *shard, r *room) {
	if r.dead || !r.empty() {
		return
	}
	r.dead = true
	s.mu.Lock()
	if s.rooms[r.name] == r {
		delete(s.rooms, r.name)
		s.floor = max(s.floor, r.offset)
		m.met.rooms.Dec()
	}
	s.mu.Unlock()
}

// lookupRoom validates a room name and returns its namespace.
func (m *Mesh) lookupRoom(room string) (*fabric.Namespace, error) {
	if m.closed.Load() {
		return nil, m.errClosed()
	}
	if err := fabric.ValidateRoom(room); err != nil {
		return nil, err
	}
	return m.cfg.Namespaces.Lookup(room)
}

func validatePayload(p fabric.Payload) error {
	if !p.Binary && !json.Valid(p.Data) {
		return fabric.Errorf(fabric.CodeBadRequest, "payload is not valid json")
	}
	return nil
}

// Publish assigns the message the room's next offset, retains it when the namespace
// keeps history, hands it to the edge and returns its position. A publish whose
// idempotency key was seen within the namespace's window returns the original
// position and delivers nothing. The payload's bytes are copied.
func (m *Mesh) publishLocal(ctx context.Context, p fabric.Publication, e ep) (fabric.Position, error) {
	start := time.Now()
	if err := ctx.Err(); err != nil {
		return fabric.Position{}, err
	}
	ns, err := m.lookupRoom(p.Room)
	if err != nil {
		return fabric.Position{}, err
	}
	if err := validatePayload(p.Payload); err != nil {
		return fabric.Position{}, err
	}
	now := m.cfg.Now()
	s, r, err := m.lockRoom(p.Room, true, e)
	if err != nil {
		return fabric.Position{}, err
	}
	defer r.mu.Unlock()
	r.expire(m, ns, now)
	if p.IdempotencyKey != "" {
		if pos, ok := r.keys.get(p.IdempotencyKey, now); ok {
			return pos, nil
		}
	}
	r.offset++
	msg := &fabric.Message{
		Room:      p.Room,
		Pos:       fabric.Position{Epoch: e.s, Offset: r.offset},
		Payload:   fabric.Payload{Data: slices.Clone(p.Payload.Data), Binary: p.Payload.Binary},
		Publisher: p.Publisher,
		Time:      now,
	}
	if ns.HistorySize > 0 {
		r.hist.push(msg)
		m.met.retained.Inc()
		if over := r.hist.len() - ns.HistorySize; over > 0 {
			r.hist.dropFront(over)
			m.met.retained.Sub(float64(over))
		}
	}
	if p.IdempotencyKey != "" {
		r.keys.put(p.IdempotencyKey, msg.Pos, now.Add(ns.Idempotency()))
	}
	// Under r.mu: the room's deliveries happen one at a time, in offset order.
	m.edge().Deliver(msg)
	m.fanDeliver(r, msg, e)
	m.met.published.Inc()
	m.met.latency.Observe(time.Since(start).Seconds())
	m.dropIfEmpty(s, r)
	return msg.Pos, nil
}

// Join registers ci as a member of room and returns the room's position, read
// atomically with the registration: the connection must receive exactly the messages
// after JoinResult.Pos. With recoverFrom it also returns the messages after that
// position, or Recovered=false when they are not all retained (another epoch, too
// old, in the future, or a namespace without history).
func (m *Mesh) joinLocal(ctx context.Context, roomName string, ci fabric.ClientInfo, recoverFrom *fabric.Position, attempt uint64, e ep) (fabric.JoinResult, error) {
	if err := ctx.Err(); err != nil {
		return fabric.JoinResult{}, err
	}
	ns, err := m.lookupRoom(roomName)
	if err != nil {
		return fabric.JoinResult{}, err
	}
	if ci.Conn == "" || ci.User == "" {
		return fabric.JoinResult{}, fabric.Errorf(fabric.CodeBadRequest, "join needs a user and a connection")
	}
	now := m.cfg.Now()
	s, r, err := m.lockRoom(roomName, true, e)
	if err != nil {
		return fabric.JoinResult{}, err
	}
	defer r.mu.Unlock()
	r.expire(m, ns, now)
	mem := r.members[ci.User]
	if i := mem.index(ci.Conn); i >= 0 {
		if attempt == 0 {
			return fabric.JoinResult{}, fabric.Errorf(fabric.CodeAlreadyJoined, "connection %s already joined room %q", ci.Conn, roomName)
		}
		return r.rejoin(mem, i, recoverFrom, attempt, ns, e), nil
	}
	if mem == nil && ns.MaxMembers > 0 && len(r.members) >= ns.MaxMembers {
		m.dropIfEmpty(s, r)
		return fabric.JoinResult{}, fabric.Errorf(fabric.CodeRoomFull, "room %q is full (%d members)", roomName, ns.MaxMembers)
	}
	res := fabric.JoinResult{
		Pos:         fabric.Position{Epoch: e.s, Offset: r.offset},
		Recoverable: ns.HistorySize > 0,
	}
	if recoverFrom != nil && ns.HistorySize > 0 {
		res.Missed, res.Recovered = r.recover(*recoverFrom, e.s)
	}
	first := r.addConn(ci)
	mem = r.members[ci.User]
	mem.marks[len(mem.marks)-1].attempt = attempt
	if first && ns.JoinLeave {
		m.edge().DeliverMembership(roomName, ci, true)
		m.fanMembership(r, ci, true, e)
		m.emit(fabric.Event{Type: fabric.EventJoin, Conn: ci.Conn, User: ci.User, Room: roomName})
	}
	return res, nil
}

// index returns the position of conn among mem's connections (-1: none).
func (mem *member) index(conn string) int {
	if mem == nil {
		return -1
	}
	return slices.Index(mem.conns, conn)
}

// rejoin answers a join (attempt != 0) for a connection the room already has
// (r.mu held). The same attempt means the first try was applied and its reply lost:
// the answer is that registration's position, and recovery stops there, since the
// joining edge has buffered every delivery after it. Another attempt finds a
// registration the edge does not know of (rebuilt by a new owner from the edge's
// own ledger, or a leave that never arrived): it is registered again, at the current
// position. No join event either way: the user was a member all along.
func (r *room) rejoin(mem *member, i int, recoverFrom *fabric.Position, attempt uint64, ns *fabric.Namespace, e ep) fabric.JoinResult {
	mk := &mem.marks[i]
	if mk.attempt != attempt {
		*mk = joinMark{attempt: attempt, at: r.offset}
	}
	res := fabric.JoinResult{Pos: fabric.Position{Epoch: e.s, Offset: mk.at}, Recoverable: ns.HistorySize > 0}
	if recoverFrom != nil && ns.HistorySize > 0 {
		missed, ok := r.recover(*recoverFrom, e.s)
		res.Recovered = ok
		for _, msg := range missed {
			if msg.Pos.Offset <= mk.at {
				res.Missed = append(res.Missed, msg)
			}
		}
	}
	return res
}

// addConn registers ci as a member (r.mu held) and reports whether it is the user's
// first connection in the room. The caller checked it is not already a member.
func (r *room) addConn(ci fabric.ClientInfo) bool {
	mem := r.members[ci.User]
	first := mem == nil
	if first {
		mem = &member{info: slices.Clone(ci.Info)}
		if r.members == nil {
			r.members = make(map[string]*member)
		}
		r.members[ci.User] = mem
	}
	mem.conns = append(mem.conns, ci.Conn)
	mem.marks = append(mem.marks, joinMark{at: r.offset})
	r.conns++
	if node := fabric.NodeOfConn(ci.Conn); node != "" {
		if r.nodes == nil {
			r.nodes = make(map[string]int)
		}
		r.nodes[node]++
	}
	return first
}

// recover returns the retained messages after from when every one of them is still
// retained. Expired messages must already be dropped.
func (r *room) recover(from fabric.Position, epoch string) ([]*fabric.Message, bool) {
	if !r.onStream(from, epoch) {
		return nil, false
	}
	if from.Offset == r.offset {
		return nil, true
	}
	first := r.firstRetained()
	if first == 0 || first > from.Offset+1 || r.hist.at(r.hist.len()-1).Pos.Offset != r.offset {
		return nil, false
	}
	i := int(from.Offset + 1 - first)
	if i > 0 && r.hist.at(i-1).Pos.Epoch != from.Epoch {
		return nil, false // the same offset under another epoch: not this stream
	}
	out := make([]*fabric.Message, 0, r.hist.len()-i)
	for ; i < r.hist.len(); i++ {
		out = append(out, r.hist.at(i))
	}
	return out, true
}

// Leave removes ci from room. It fails with fabric.ErrNotJoined when ci is not a member.
// It works after Close too, so a node shutting down can still clean up.
func (m *Mesh) leaveLocal(ctx context.Context, roomName string, ci fabric.ClientInfo, e ep) error {
	// A removed namespace must not keep members in forever: leave works without it.
	ns, _ := m.cfg.Namespaces.Lookup(roomName)
	s, r, err := m.lockRoom(roomName, false, e)
	if err != nil {
		return err
	}
	if r == nil {
		return fabric.Errorf(fabric.CodeNotJoined, "connection %s is not in room %q", ci.Conn, roomName)
	}
	defer r.mu.Unlock()
	return m.leaveLocked(s, r, ns, ci)
}

func (m *Mesh) leaveLocked(s *shard, r *room, ns *fabric.Namespace, ci fabric.ClientInfo) error {
	mem := r.members[ci.User]
	i := -1
	if mem != nil {
		i = slices.Index(mem.conns, ci.Conn)
	}
	if i < 0 {
		return fabric.Errorf(fabric.CodeNotJoined, "connection %s is not in room %q", ci.Conn, r.name)
	}
	mem.conns = slices.Delete(mem.conns, i, i+1)
	mem.marks = slices.Delete(mem.marks, i, i+1)
	r.conns--
	if node := fabric.NodeOfConn(ci.Conn); node != "" && r.nodes != nil {
		if r.nodes[node]--; r.nodes[node] <= 0 {
			delete(r.nodes, node)
		}
	}
	if len(mem.conns) == 0 {
		delete(r.members, ci.User)
		if ns != nil && ns.JoinLeave {
			left := fabric.ClientInfo{User: ci.User, Conn: ci.Conn, Info: mem.info}
			m.edge().DeliverMembership(r.name, left, false)
			// The leaving connection's node hears of it too: its other local
			// members of the room are still interested.
			m.fanMembership(r, left, false, ep{s: "", n: r.epoch})
			m.emit(fabric.Event{Type: fabric.EventLeave, Conn: ci.Conn, User: ci.User, Room: r.name})
		}
	}
	if ns != nil {
		r.expire(m, ns, m.cfg.Now())
	}
	m.dropIfEmpty(s, r)
	return nil
}

// Presence lists the room's members ordered by user, each with their connections in
// join order. It fails with fabric.ErrNotAvailable when the namespace has no presence.
func (m *Mesh) presenceLocal(ctx context.Context, roomName string, e ep) ([]fabric.Member, error) {
	ns, err := m.lookupRoom(roomName)
	if err != nil {
		return nil, err
	}
	if !ns.Presence {
		return nil, fabric.Errorf(fabric.CodeNotAvailable, "presence is off in namespace %q", ns.Name)
	}
	_, r, err := m.lockRoom(roomName, false, e)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return []fabric.Member{}, nil
	}
	out := make([]fabric.Member, 0, len(r.members))
	for user, mem := range r.members {
		out = append(out, fabric.Member{User: user, Conns: slices.Clone(mem.conns), Info: mem.info})
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].User < out[j].User })
	return out, nil
}

// PresenceStats counts the room's users and connections. It fails with
// fabric.ErrNotAvailable when the namespace has no presence.
func (m *Mesh) presenceStatsLocal(ctx context.Context, roomName string, e ep) (fabric.Stats, error) {
	ns, err := m.lookupRoom(roomName)
	if err != nil {
		return fabric.Stats{}, err
	}
	if !ns.Presence {
		return fabric.Stats{}, fabric.Errorf(fabric.CodeNotAvailable, "presence is off in namespace %q", ns.Name)
	}
	_, r, err := m.lockRoom(roomName, false, e)
	if err != nil {
		return fabric.Stats{}, err
	}
	if r == nil {
		return fabric.Stats{}, nil
	}
	defer r.mu.Unlock()
	return fabric.Stats{Users: len(r.members), Conns: r.conns}, nil
}

// History reads the room's retained messages after q.Since (all retained when nil),
// oldest first or newest first with q.Reverse, at most q.Limit (capped by
// Config.HistoryLimit). It fails with fabric.ErrNotAvailable when the namespace keeps
// no history and with fabric.ErrBadRequest for a position of another epoch.
func (m *Mesh) historyLocal(ctx context.Context, roomName string, q fabric.HistoryQuery, e ep) (fabric.History, error) {
	ns, err := m.lookupRoom(roomName)
	if err != nil {
		return fabric.History{}, err
	}
	if ns.HistorySize == 0 {
		return fabric.History{}, fabric.Errorf(fabric.CodeNotAvailable, "history is off in namespace %q", ns.Name)
	}
	since := q.Since
	if since != nil && since.IsZero() {
		since = nil
	}
	limit := q.Limit
	if limit <= 0 || limit > m.cfg.HistoryLimit {
		limit = m.cfg.HistoryLimit
	}
	s, r, err := m.lockRoom(roomName, false, e)
	if err != nil {
		return fabric.History{}, err
	}
	if r == nil {
		if since != nil && since.Epoch != e.s {
			return fabric.History{}, fabric.Errorf(fabric.CodeBadRequest, "position of another epoch")
		}
		return fabric.History{Messages: []*fabric.Message{}, Pos: fabric.Position{Epoch: e.s}}, nil
	}
	defer r.mu.Unlock()
	if since != nil && !r.onStream(*since, e.s) {
		return fabric.History{}, fabric.Errorf(fabric.CodeBadRequest, "position of another epoch")
	}
	r.expire(m, ns, m.cfg.Now())
	h := fabric.History{Pos: fabric.Position{Epoch: e.s, Offset: r.offset}}
	lo, hi := 0, r.hist.len() // the selectable range [lo, hi)
	if since != nil && hi > 0 {
		first := r.firstRetained()
		switch {
		case since.Offset >= r.offset:
			lo = hi
		case since.Offset >= first:
			lo = int(since.Offset + 1 - first)
		}
	}
	n := min(limit, hi-lo)
	h.Messages = make([]*fabric.Message, 0, n)
	if q.Reverse {
		for i := hi - 1; i >= hi-n; i-- {
			h.Messages = append(h.Messages, r.hist.at(i))
		}
	} else {
		for i := lo; i < lo+n; i++ {
			h.Messages = append(h.Messages, r.hist.at(i))
		}
	}
	m.dropIfEmpty(s, r)
	return h, nil
}

// ListRooms returns up to limit rooms (default 100, at most 1000) that have members
// or retained history, whose names start with prefix and sort after `after`, ordered
// by name, and whether more follow.
func (m *Mesh) listRoomsLocal(ctx context.Context, prefix, after string, limit int) ([]fabric.RoomSummary, bool, error) {
	if m.closed.Load() {
		return nil, false, m.errClosed()
	}
	if limit <= 0 {
		limit = DefaultListRooms
	}
	limit = min(limit, MaxListRooms)
	type cand struct {
		s *shard
		r *room
		e ep
	}
	var cands []cand
	for i, s := range m.shards {
		e, ok := m.ownEpoch(i)
		if !ok {
			continue // a cluster node lists only the shards it serves
		}
		s.mu.Lock()
		for name, r := range s.rooms {
			if r.epoch != e.n {
				continue
			}
			if name > after && strings.HasPrefix(name, prefix) {
				cands = append(cands, cand{s, r, e})
			}
		}
		s.mu.Unlock()
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].r.name < cands[j].r.name })
	now := m.cfg.Now()
	out := make([]fabric.RoomSummary, 0, min(limit, len(cands)))
	for _, c := range cands {
		r := c.r
		r.mu.Lock()
		if ns, err := m.cfg.Namespaces.Lookup(r.name); err == nil && !r.dead {
			r.expire(m, ns, now)
		}
		live := !r.dead && (len(r.members) > 0 || r.hist.len() > 0)
		var sum fabric.RoomSummary
		if live {
			sum = fabric.RoomSummary{
				Name:  r.name,
				Stats: fabric.Stats{Users: len(r.members), Conns: r.conns},
				Pos:   fabric.Position{Epoch: c.e.s, Offset: r.offset},
				Owner: m.cfg.Node,
			}
		}
		r.mu.Unlock()
		if !live {
			continue
		}
		if len(out) == limit {
			return out, true, nil
		}
		out = append(out, sum)
	}
	return out, false, nil
}
