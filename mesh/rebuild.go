package mesh

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/roomcast/roomcast/fabric"
	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/mesh/peer"
	"github.com/roomcast/roomcast/mesh/registry"
)

// rebuild makes this node the serving owner of shards (at epochs): it asks every live
// node for its local members of rooms and local connections of users in those shards,
// and for the owner state it kept of them if it served them until now (a graceful
// handover); installs the newest handed-over state, adds the members to it (no join
// events: the members were there already) and then marks the shards ready. A request
// that fails (a link being set up, say) is tried again until RebuildTimeout; a node
// that has not answered by then is left out — a handoff it held is lost as in a
// crash — and asked again for its members in the background (retryPull) until it
// answers, so its connections get deliveries again.
func (c *cluster) rebuild(shards []uint32, epochs []int64) {
	m := c.m
	want := make(map[int]ep, len(shards))
	for i, s := range shards {
		want[int(s)] = ep{s: epochString(epochs[i]), n: epochs[i]}
	}
	replies := []*meshv1.RebuildReply{c.localState(want, true)}
	ids := c.rebuildIDs()
	var mu sync.Mutex
	var wg sync.WaitGroup
	var missed []string
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reps, err := c.askState(id, shards, epochs, false)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				m.log.Warn("rebuild: node did not answer; asking it again later", "node", id, "err", err)
				missed = append(missed, id)
				return
			}
			replies = append(replies, reps...)
		}()
	}
	wg.Wait()
	defer func() {
		for _, id := range missed {
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				c.retryPull(id, false)
			}()
		}
	}()
	handed := newestHandoffs(replies, want)
	for i, ho := range handed {
		c.install(ho, want[i])
	}
	for _, rep := range replies {
		c.addMembers(rep, want, false)
	}
	for i, e := range want {
		// Touch the shard so its state of an earlier ownership is dropped even when
		// nobody reported anything for it.
		s := m.shards[i]
		s.mu.Lock()
		if e.n != s.epochN { // older state, or the fence a stash left
			m.resetShardLocked(s, e.n)
		}
		s.mu.Unlock()
		c.ready[i].Store(e.n)
	}
}

// rebuildIDs is every node a rebuild must ask: those gossip shows alive and those
// registered in etcd. Gossip alone is not enough: a node back from a partition is
// registered (and may be given shards) before its gossip has merged with the others'
// and a rebuild that skipped a node would leave that node's members without
// deliveries, with nothing to tell them.
func (c *cluster) rebuildIDs() []string {
	ids := c.liveIDs()
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.RebuildTimeout)
	defer cancel()
	nodes, _, err := registry.List(ctx, c.cfg.Etcd, c.cfg.Name)
	if err != nil {
		c.m.log.Warn("rebuild: listing registered nodes failed; asking gossip's members only", "err", err)
		return ids
	}
	for _, n := range nodes {
		if n.ID != c.id && !slices.Contains(ids, n.ID) {
			ids = append(ids, n.ID)
			c.noteRegistered(n)
		}
	}
	return ids
}

// noteRegistered records a node known from the registry but not (yet) from gossip,
// so that deliveries reach its members meanwhile; gossip's verdicts still remove it.
func (c *cluster) noteRegistered(n registry.Node) {
	name, _, ok := peer.ParseID(n.ID)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, known := c.ids[name]; !known {
		c.ids[name] = n.ID
	}
	if n.PeerAddr != "" && c.addrs[n.ID] == "" {
		c.addrs[n.ID] = n.PeerAddr
	}
}

// addMembers adds a node's reported local members and connections of the wanted
// shards to this node's owner state. With announce, a user new to a room joins it as
// by a join (events, membership pushes): used when a node that was given up for dead
// comes back, whose members left with events then. A rebuild adds silently: the
// members were there all along.
func (c *cluster) addMembers(rep *meshv1.RebuildReply, want map[int]ep, announce bool) {
	m := c.m
	for _, rm := range rep.GetRooms() {
		e, ok := want[m.shardIndex(rm.GetRoom())]
		if !ok {
			continue
		}
		ns, err := m.cfg.Namespaces.Lookup(rm.GetRoom())
		if err != nil {
			continue
		}
		_, r, err := m.lockRoom(rm.GetRoom(), true, e)
		if err != nil {
			continue
		}
		for _, mem := range rm.GetMembers() {
			info := infoFromWire(mem.GetInfo())
			for _, conn := range mem.GetConnections() {
				if old := r.members[mem.GetUser()]; old != nil && slices.Contains(old.conns, conn) {
					continue
				}
				ci := fabric.ClientInfo{User: mem.GetUser(), Conn: conn, Info: info}
				if r.addConn(ci) && announce && ns.JoinLeave {
					m.edge().DeliverMembership(r.name, ci, true)
					m.fanMembership(r, ci, true, e)
					m.emit(fabric.Event{Type: fabric.EventJoin, Conn: ci.Conn, User: ci.User, Room: r.name})
				}
			}
		}
		r.mu.Unlock()
	}
	for _, uc := range rep.GetUsers() {
		e, ok := want[m.shardIndex(uc.GetUser())]
		if !ok {
			continue
		}
		for _, conn := range uc.GetConnections() {
			_ = m.userAddLocal(uc.GetUser(), conn, 0, e)
		}
	}
}

// requestRetrying is links.Request tried again, with a short backoff, after a failure
// that is not ctx's end (a link being set up, a dial race), until ctx ends.
func (c *cluster) requestRetrying(ctx context.Context, id string, env *meshv1.Envelope) (*meshv1.Envelope, error) {
	backoff := 20 * time.Millisecond
	for {
		resp, err := c.links.Request(ctx, id, env)
		if err == nil || ctx.Err() != nil {
			return resp, err
		}
		if !sleepCtx(ctx, backoff) {
			return nil, err
		}
		backoff = min(backoff*2, 200*time.Millisecond)
	}
}

// retryPull asks a node for its members (pullMembers) until it answers, the cluster
// stops, or a minute passed. announce as in addMembers: a rebuild that missed a node
// adds its members silently (they were members all along); a node back from the
// dead announces them (their leaves were announced).
func (c *cluster) retryPull(id string, announce bool) {
	deadline := time.Now().Add(time.Minute)
	backoff := 200 * time.Millisecond
	for time.Now().Before(deadline) && c.ctx.Err() == nil {
		if c.pullMembers(id, announce) {
			c.m.log.Info("members of a node added", "node", id, "announced", announce)
			return
		}
		if !sleepCtx(c.ctx, backoff) {
			return
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// pullMembers asks a node that appeared — new, or back after being given up for
// dead (a healed partition) — for its local members of the shards this node serves,
// and adds those missing: its connections stayed up, and without this they would
// get no deliveries from rooms whose owners dropped them.
func (c *cluster) pullMembers(id string, announce bool) bool {
	want := map[int]ep{}
	var shards []uint32
	var epochs []int64
	for i := range c.m.shards {
		if e, ok := c.ownEpoch(i); ok {
			want[i] = e
			shards = append(shards, uint32(i))
			epochs = append(epochs, e.n)
		}
	}
	reps, err := c.askState(id, shards, epochs, true)
	if err != nil {
		c.m.log.Debug("pulling a node's members failed", "node", id, "err", err)
		return false
	}
	for _, rep := range reps {
		c.addMembers(rep, want, announce)
	}
	return true
}

// askState asks a node for its local state of shards (at the asking owner's epochs),
// a few shards per request since a reply may carry their whole history, retrying
// failed requests until RebuildTimeout. It returns every reply, or the first error.
func (c *cluster) askState(id string, shards []uint32, epochs []int64, membersOnly bool) ([]*meshv1.RebuildReply, error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.RebuildTimeout)
	defer cancel()
	var out []*meshv1.RebuildReply
	for lo := 0; lo < len(shards); lo += rebuildChunk {
		hi := min(lo+rebuildChunk, len(shards))
		env := &meshv1.Envelope{Epoch: epochs[lo], Body: &meshv1.Envelope_Rebuild{Rebuild: &meshv1.RebuildRequest{
			Shards: shards[lo:hi], Epochs: epochs[lo:hi], MembersOnly: membersOnly}}}
		resp, err := c.requestRetrying(ctx, id, env)
		if err != nil {
			return nil, err
		}
		rep := resp.GetRebuildReply()
		if rep == nil {
			return nil, fmt.Errorf("node %s answered a rebuild request with %T", id, resp.GetBody())
		}
		out = append(out, rep)
	}
	return out, nil
}

// localState is this node's local members and connections in the wanted shards,
// and with handovers the handoffs it keeps for them.
func (c *cluster) localState(want map[int]ep, handovers bool) *meshv1.RebuildReply {
	m := c.m
	out := &meshv1.RebuildReply{}
	if handovers {
		out.Handovers = c.handoffsFor(want)
	}
	keep := func(room string) bool { _, ok := want[m.shardIndex(room)]; return ok }
	var local map[string][]fabric.ClientInfo
	if l, ok := m.edge().(MemberLister); ok {
		local = l.LocalMembers(keep)
	} else {
		local = m.ledger.snapshot(keep)
	}
	for room, cis := range local {
		byUser := map[string]*pb.Member{}
		rm := &meshv1.RoomMembers{Room: room}
		for _, ci := range cis {
			mem := byUser[ci.User]
			if mem == nil {
				mem = &pb.Member{User: ci.User, Info: infoToWire(ci.Info)}
				byUser[ci.User] = mem
				rm.Members = append(rm.Members, mem)
			}
			mem.Connections = append(mem.Connections, ci.Conn)
		}
		out.Rooms = append(out.Rooms, rm)
	}
	users := map[string]*meshv1.UserConnections{}
	for _, cs := range m.users {
		cs.mu.Lock()
		for conn, user := range cs.conns {
			if _, ok := want[m.shardIndex(user)]; !ok {
				continue
			}
			uc := users[user]
			if uc == nil {
				uc = &meshv1.UserConnections{User: user}
				users[user] = uc
				out.Users = append(out.Users, uc)
			}
			uc.Connections = append(uc.Connections, conn)
		}
		cs.mu.Unlock()
	}
	return out
}

// serveRebuild answers a new owner's RebuildRequest once this node's map shows the
// new ownership (bounded), so that what it reports and what it routes afterwards add
// up at the new owner.
func (c *cluster) serveRebuild(ctx context.Context, req *meshv1.RebuildRequest) *meshv1.Envelope {
	want := make(map[int]ep, len(req.GetShards()))
	var newest int64
	for i, s := range req.GetShards() {
		if i < len(req.GetEpochs()) {
			want[int(s)] = ep{n: req.GetEpochs()[i]}
			newest = max(newest, req.GetEpochs()[i])
		}
	}
	deadline := time.Now().Add(c.cfg.RebuildTimeout)
	// Applied, not merely received: the shards this node served until that map are
	// stashed by then, so the reply carries their handoffs.
	for c.applied.Load() < newest && time.Now().Before(deadline) && ctx.Err() == nil {
		c.waitMap(ctx, c.smap().Current().Revision, 20*time.Millisecond)
	}
	return &meshv1.Envelope{Body: &meshv1.Envelope_RebuildReply{RebuildReply: c.localState(want, !req.GetMembersOnly())}}
}

// forgetShard drops the owner state of a shard this node no longer owns.
func (m *Mesh) forgetShard(i int) {
	s := m.shards[i]
	s.mu.Lock()
	if len(s.rooms) > 0 {
		m.resetShardLocked(s, s.epochN)
	}
	s.mu.Unlock()
	m.forgetUsers(i)
}

// forgetUsers drops the user index of shard i (owner state of users whose shard
// this node no longer serves).
func (m *Mesh) forgetUsers(i int) {
	us := m.users[i]
	us.mu.Lock()
	if len(us.users) > 0 {
		us.users = make(map[string][]string)
	}
	us.mu.Unlock()
}

// dropNode removes a dead node's connections from every room and user this node
// owns, with leave events and member_left pushes as for ordinary leaves.
func (m *Mesh) dropNode(name string) {
	var batch []*room
	for i, s := range m.shards {
		if _, ok := m.ownEpoch(i); !ok {
			continue
		}
		batch = s.roomsInto(batch[:0])
		for _, r := range batch {
			r.mu.Lock()
			if !r.dead && r.nodes[name] > 0 {
				ns, _ := m.cfg.Namespaces.Lookup(r.name)
				var gone []fabric.ClientInfo
				for user, mem := range r.members {
					for _, conn := range mem.conns {
						if fabric.NodeOfConn(conn) == name {
							gone = append(gone, fabric.ClientInfo{User: user, Conn: conn})
						}
					}
				}
				for _, ci := range gone {
					_ = m.leaveLocked(s, r, ns, ci)
				}
			}
			r.mu.Unlock()
		}
		clear(batch)
		us := m.users[i]
		us.mu.Lock()
		for user, conns := range us.users {
			conns = slices.DeleteFunc(conns, func(c string) bool { return fabric.NodeOfConn(c) == name })
			if len(conns) == 0 {
				delete(us.users, user)
			} else {
				us.users[user] = conns
			}
		}
		us.mu.Unlock()
	}
}
