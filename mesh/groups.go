package mesh

import (
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/roomcast/roomcast/fabric"
	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
)

// Consumer groups across nodes.
//
// Every node receives every event (events are broadcast), and every node knows every
// other node's consumer groups with their member counts (GroupInterest pushes). For a
// group with members on several nodes, each node computes the same choice from the
// event's content: a member index in [0, total members) by a hash of the event, laid
// over the nodes in name order. Only the node the index falls on delivers, to its
// local member of that index; the others skip the event. No coordination per event,
// no owner in the path.
//
// The choice is the same everywhere as long as the nodes agree on the group's
// members. While a member subscribes or leaves, or a node appears or dies, views
// differ for about one link round trip: an event in that window may reach two
// members of the group or none. Groups whose members all live on one node are
// exactly-once as before (round robin, no hashing).

// groupRefresh is how often a node re-announces its groups (the pushes on change
// are the fast path; this repairs a view after a lost push or a healed partition).
const groupRefresh = 5 * time.Second

// groupView is what this node knows of the other nodes' consumer groups.
type groupView struct {
	mu    sync.RWMutex
	nodes map[string]map[string]uint32 // node name -> group key -> members
}

// nodeCount is one node's member count of a group.
type nodeCount struct {
	node string
	n    uint64
}

func newGroupView() *groupView { return &groupView{nodes: map[string]map[string]uint32{}} }

// set replaces what is known of node's groups.
func (v *groupView) set(node string, gi *meshv1.GroupInterest) {
	gs := make(map[string]uint32, len(gi.GetGroups()))
	for _, g := range gi.GetGroups() {
		if g.GetMembers() > 0 {
			gs[g.GetKey()] = g.GetMembers()
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(gs) == 0 {
		delete(v.nodes, node)
		return
	}
	v.nodes[node] = gs
}

// drop forgets a node that left or died.
func (v *groupView) drop(node string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.nodes, node)
}

// members returns the nodes with members of group key, self included with local
// members, sorted by name, appended to buf.
func (v *groupView) members(key, self string, local int, buf []nodeCount) []nodeCount {
	buf = append(buf, nodeCount{self, uint64(local)})
	v.mu.RLock()
	for node, gs := range v.nodes {
		if n := gs[key]; n > 0 && node != self {
			buf = append(buf, nodeCount{node, uint64(n)})
		}
	}
	v.mu.RUnlock()
	slices.SortFunc(buf, func(a, b nodeCount) int { return strings.Compare(a.node, b.node) })
	return buf
}

// pick returns the local member index that gets ev, or false when another node's
// member does. The choice depends only on the event and the view, so every node with
// the same view makes it alike.
func (v *groupView) pick(g *group, ev *fabric.Event, self string) (uint64, bool) {
	var arr [8]nodeCount
	ms := v.members(g.key, self, len(g.members), arr[:0])
	if len(ms) == 1 {
		return g.next.Add(1) - 1, true // only local members: round robin
	}
	var total uint64
	for _, m := range ms {
		total += m.n
	}
	x := eventHash(ev) % total
	for _, m := range ms {
		if x < m.n {
			return x, m.node == self
		}
		x -= m.n
	}
	return 0, false
}

// eventHash is a 64-bit FNV-1a hash of what identifies an event on every node: its
// origin, time (nanoseconds survive the wire), type and subjects.
func eventHash(ev *fabric.Event) uint64 {
	h := uint64(14695981039346656037)
	mix := func(s string) {
		for i := 0; i < len(s); i++ {
			h ^= uint64(s[i])
			h *= 1099511628211
		}
		h ^= 0xff
		h *= 1099511628211
	}
	mixU := func(u uint64) {
		for range 8 {
			h ^= u & 0xff
			h *= 1099511628211
			u >>= 8
		}
	}
	mix(ev.Node)
	mixU(uint64(ev.Time.UnixNano()))
	mixU(uint64(ev.Type))
	mix(ev.Conn)
	mix(ev.User)
	mix(ev.Room)
	if ev.Payload != nil {
		mixU(uint64(len(ev.Payload.Data)))
	}
	return h
}

// localGroups is this node's groups with their member counts, as a push.
func (h *hub) localGroups() *meshv1.GroupInterest {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := &meshv1.GroupInterest{}
	for key, g := range h.groups {
		out.Groups = append(out.Groups, &meshv1.GroupCount{Key: key, Members: uint32(min(len(g.members), math.MaxUint32))})
	}
	return out
}

// groupsChanged tells the cluster to announce the local groups again.
func (h *hub) groupsChanged() {
	select {
	case h.groupNotify <- struct{}{}:
	default:
	}
}

// pushGroups announces this node's groups to every other live node.
func (c *cluster) pushGroups() {
	env := &meshv1.Envelope{Body: &meshv1.Envelope_GroupInterest{GroupInterest: c.m.hub.localGroups()}}
	for _, id := range c.liveIDs() {
		c.sendBounded(id, env)
	}
}
