package mesh

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/roomcast/roomcast/fabric"
	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
	"github.com/roomcast/roomcast/mesh/registry"
)

// Graceful handover.
//
// When a shard moves away from a node that is alive (it drains, or a rebalance gives
// the shard to a newer node), the node keeps the shard's owner state — offsets,
// history, idempotency keys — as a handoff, and the next owner takes it as part of
// its rebuild. The room's stream goes on: the epoch changes (it names the
// ownership and fences the old owner), the offsets continue, and positions of the
// earlier epochs stay valid for recovery (a room's lineage). Only a crash loses the
// state; then the new owner starts a new stream and recovery answers
// recovered=false, as before.
//
// The old owner fences itself before it snapshots: apply stops serving the shard
// (ready is zeroed) and stashShard moves the shard's epoch forward under its lock, so
// an operation that already passed the ownership check fails with errNotOwner at
// lockRoom and is retried at the new owner, and one that holds a room's lock
// finishes before the room is snapshot.

const (
	// handoffTTL is how long a node keeps the state of shards that moved away for
	// their next owner to take.
	handoffTTL = time.Minute
	// maxLineage bounds the earlier epochs a room remembers; positions of older ones
	// recover with recovered=false.
	maxLineage = 16
	// rebuildChunk is how many shards one rebuild request asks for, so that a reply
	// carrying handoffs stays well under the peer links' message bound.
	rebuildChunk = 16
)

// epochSpan is one earlier ownership of a room's stream: positions (epoch, offset)
// with offset up to last belong to it.
type epochSpan struct {
	epoch string
	last  uint64
}

// handoff is the state of one shard kept for its next owner.
type handoff struct {
	state *meshv1.ShardHandover
	// to is the epoch of the owner the shard moved to (0: unknown, when this node
	// was fenced). Only a rebuild at that epoch may take the handoff: a later owner
	// asking means another ownership came in between, whose state this is not.
	to      int64
	expires time.Time
}

// onStream reports whether from is a position of r's stream, whose current epoch is
// epoch: of the current epoch at or after where it began, or of an earlier epoch of
// the lineage within that epoch's offsets, and not beyond the room's last offset.
func (r *room) onStream(from fabric.Position, epoch string) bool {
	if from.Offset > r.offset {
		return false
	}
	lo := uint64(0) // the offset an epoch's span starts after
	for _, s := range r.lineage {
		if s.epoch == from.Epoch {
			return from.Offset >= lo && from.Offset <= s.last
		}
		lo = s.last
	}
	return from.Epoch == epoch && from.Offset >= lo
}

// state is r's handoff form (r.mu held).
func (r *room) state(now time.Time, epoch string) *meshv1.RoomState {
	rs := &meshv1.RoomState{Room: r.name, Offset: r.offset}
	for i := range r.hist.len() {
		rs.History = append(rs.History, messageToWire(r.hist.at(i)))
	}
	for key, e := range r.keys.m {
		if e.exp.After(now) {
			rs.Keys = append(rs.Keys, &meshv1.IdempotencyKey{Key: key, Position: posToWire(e.pos), ExpiresUnixNano: e.exp.UnixNano()})
		}
	}
	for _, s := range r.lineage {
		rs.Lineage = append(rs.Lineage, &meshv1.EpochSpan{Epoch: s.epoch, LastOffset: s.last})
	}
	rs.Lineage = append(rs.Lineage, &meshv1.EpochSpan{Epoch: epoch, LastOffset: r.offset})
	return rs
}

// stashShard fences shard i (operations of epochs below fence fail from now on) and
// keeps its owner state as a handoff for the owner of epoch to (0: whoever comes
// next). Called by apply when a shard this node served moved away, and when the
// node is fenced.
func (c *cluster) stashShard(i int, fence, to int64) {
	m := c.m
	s := m.shards[i]
	s.mu.Lock()
	rooms, floor, served := s.rooms, s.floor, s.epochN
	m.met.rooms.Sub(float64(len(rooms)))
	s.rooms = make(map[string]*room)
	s.floor = 0
	s.epochN = fence // operations of the old epoch now fail with errNotOwner
	s.mu.Unlock()
	now := m.cfg.Now()
	ho := &meshv1.ShardHandover{Shard: uint32(i), Epoch: served, Floor: floor}
	for _, r := range rooms {
		r.mu.Lock()
		if ns, err := m.cfg.Namespaces.Lookup(r.name); err == nil {
			r.expire(m, ns, now)
		}
		r.dead = true
		if r.offset > 0 || r.hist.len() > 0 || r.keys.len() > 0 {
			ho.Rooms = append(ho.Rooms, r.state(now, epochString(served)))
		}
		m.met.retained.Sub(float64(r.hist.len()))
		r.mu.Unlock()
	}
	m.forgetUsers(i)
	c.hoMu.Lock()
	c.handoffs[i] = &handoff{state: ho, to: to, expires: time.Now().Add(handoffTTL)}
	c.hoMu.Unlock()
	m.log.Debug("shard handed off", "shard", i, "rooms", len(ho.Rooms), "epoch", served, "to", to)
}

// handoffsFor hands over the kept handoffs of the wanted shards that are meant for
// the wanted epochs, and forgets them: a handoff is given once, since its taker may
// serve and move the stream on, after which this copy is stale. Expired and stale
// ones (a later owner asks) are dropped.
func (c *cluster) handoffsFor(want map[int]ep) []*meshv1.ShardHandover {
	c.hoMu.Lock()
	defer c.hoMu.Unlock()
	now := time.Now()
	var out []*meshv1.ShardHandover
	for i, h := range c.handoffs {
		e, wanted := want[i]
		switch {
		case now.After(h.expires):
			delete(c.handoffs, i)
		case !wanted:
		case h.to == 0 || h.to == e.n:
			out = append(out, h.state)
			delete(c.handoffs, i)
		case e.n > h.to:
			delete(c.handoffs, i) // the owner it was for came and went
		}
	}
	return out
}

// pendingHandoffs counts kept handoffs no next owner has taken yet.
func (c *cluster) pendingHandoffs() int {
	c.hoMu.Lock()
	defer c.hoMu.Unlock()
	n := 0
	for _, h := range c.handoffs {
		if time.Now().Before(h.expires) {
			n++
		}
	}
	return n
}

// install makes a shard handoff this node's owner state at epoch e, before the
// shard's members are rebuilt and before it is served.
func (c *cluster) install(ho *meshv1.ShardHandover, e ep) {
	m := c.m
	i := int(ho.GetShard())
	s := m.shards[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	// Rebuild is authoritative for the shard at e: whatever is there (stale state,
	// or the fence stashShard left) gives way.
	m.resetShardLocked(s, e.n)
	s.floor = max(s.floor, ho.GetFloor())
	for _, rs := range ho.GetRooms() {
		r := &room{name: rs.GetRoom(), epoch: e.n, offset: rs.GetOffset()}
		for _, sp := range rs.GetLineage() {
			r.lineage = append(r.lineage, epochSpan{epoch: sp.GetEpoch(), last: sp.GetLastOffset()})
		}
		r.lineage = keepLineage(r.lineage)
		for _, msg := range rs.GetHistory() {
			r.hist.push(messageFromWire(msg))
		}
		for _, k := range rs.GetKeys() {
			r.keys.put(k.GetKey(), posFromWire(k.GetPosition()), time.Unix(0, k.GetExpiresUnixNano()))
		}
		if old := s.rooms[r.name]; old != nil {
			old.dead = true
		} else {
			m.met.rooms.Inc()
		}
		s.rooms[r.name] = r
		m.met.retained.Add(float64(r.hist.len()))
	}
}

// newestHandoffs picks, per wanted shard, the handoff of the newest epoch among the
// replies: when a shard moved twice quickly, the latest owner's state wins. A handoff
// of the wanted epoch itself is this node's own, kept when it was fenced and now
// resumed at the same epoch.
func newestHandoffs(replies []*meshv1.RebuildReply, want map[int]ep) map[int]*meshv1.ShardHandover {
	out := map[int]*meshv1.ShardHandover{}
	for _, rep := range replies {
		for _, ho := range rep.GetHandovers() {
			i := int(ho.GetShard())
			e, ok := want[i]
			if !ok || ho.GetEpoch() > e.n {
				continue
			}
			if cur := out[i]; cur == nil || ho.GetEpoch() > cur.GetEpoch() {
				out[i] = ho
			}
		}
	}
	return out
}

// HandOver gives this node's shards to the other nodes before it goes away: it marks
// the node draining in the registry (the shard-map leader then assigns its shards to
// the others), and waits until it owns no shard and their next owners took the
// state. Connections stay up meanwhile; the node keeps routing their operations to
// the new owners. It returns nil at once in a mesh of one or when no other node is
// live (nobody to hand over to), and ctx's error if the handover did not finish in
// time (what was not taken is then lost, as in a crash).
func (m *Mesh) HandOver(ctx context.Context) error {
	c := m.cl
	if c == nil || len(c.liveIDs()) == 0 {
		return nil
	}
	start := time.Now()
	c.draining.Store(true)
	node := c.regNode()
	node.Draining = true
	if err := c.registry().Update(ctx, node); err != nil {
		return fmt.Errorf("mesh: mark draining: %w", err)
	}
	meta := c.ml.Local().Meta
	meta.State = "draining"
	if err := c.ml.UpdateMeta(ctx, meta); err != nil {
		m.log.Warn("gossip metadata not updated", "err", err)
	}
	for {
		mp := c.smap().Current()
		if mp.Count()[c.id] == 0 && c.pendingHandoffs() == 0 {
			m.log.Info("shards handed over", "took", time.Since(start), "revision", mp.Revision)
			return nil
		}
		if len(c.liveIDs()) == 0 {
			return errors.New("mesh: handover: no other node is live")
		}
		c.waitMap(ctx, mp.Revision, 20*time.Millisecond)
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("mesh: handover: %d shards owned, %d handoffs not taken: %w", mp.Count()[c.id], c.pendingHandoffs(), err)
		}
	}
}

// regNode is this node's registration.
func (c *cluster) regNode() registry.Node {
	m := c.m
	return registry.Node{ID: c.id, GossipAddr: c.ml.Addr(), PeerAddr: c.peerAddr,
		ClientAddr: m.cfg.ClientAddr, ControlAddr: m.cfg.ControlAddr, Version: m.cfg.Version}
}

// keepLineage trims a lineage to its newest maxLineage spans.
func keepLineage(l []epochSpan) []epochSpan {
	if over := len(l) - maxLineage; over > 0 {
		return slices.Clone(l[over:])
	}
	return l
}
