package mesh

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/roomcast/roomcast/fabric"
)

// hub fans events out to subscriptions. Ungrouped subscriptions each get every
// matching event; the members of a group share them round robin.
type hub struct {
	m      *Mesh
	mu     sync.RWMutex
	closed bool
	solo   map[*sub]struct{}
	groups map[string]*group
	// view holds the other nodes' groups (cluster mode; nil in a mesh of one).
	view *groupView
	// groupNotify (capacity 1) says the local groups changed.
	groupNotify chan struct{}
}

// group is the subscriptions sharing one group name and filter.
type group struct {
	key     string
	filter  fabric.EventFilter
	members []*sub // replaced, never modified in place, under hub.mu
	next    atomic.Uint64
}

func newHub(m *Mesh) *hub {
	return &hub{m: m, solo: make(map[*sub]struct{}), groups: make(map[string]*group), groupNotify: make(chan struct{}, 1)}
}

// Emit publishes an event to every matching subscription. It never blocks: a full
// subscription counts the event as missed and later reports one fabric.EventGap. It
// fills ev.Node and ev.Time when they are zero.
func (m *Mesh) Emit(ev fabric.Event) { m.emit(ev) }

// emit publishes an event to this node's subscriptions and, in cluster mode, to every
// other node's (events reach StreamEvents subscribers wherever they are).
func (m *Mesh) emit(ev fabric.Event) {
	if ev.Node == "" {
		ev.Node = m.cfg.Node
	}
	if ev.Time.IsZero() {
		ev.Time = m.cfg.Now()
	}
	m.hub.emit(ev)
	if m.cl != nil {
		m.cl.broadcastEvent(&ev)
	}
}

func (h *hub) emit(ev fabric.Event) {
	if ev.Node == "" {
		ev.Node = h.m.cfg.Node
	}
	if ev.Time.IsZero() {
		ev.Time = h.m.cfg.Now()
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.closed {
		return
	}
	for s := range h.solo {
		if s.filter.Match(&ev) {
			s.offer(&ev, true)
		}
	}
	for _, g := range h.groups {
		if !g.filter.Match(&ev) {
			continue
		}
		n := uint64(len(g.members))
		var start uint64
		if h.view != nil {
			var mine bool
			if start, mine = h.view.pick(g, &ev, h.m.cfg.Node); !mine {
				continue // a member on another node gets it
			}
		} else {
			start = g.next.Add(1) - 1
		}
		delivered := false
		for i := range n {
			if g.members[(start+i)%n].offer(&ev, false) {
				delivered = true
				break
			}
		}
		if !delivered {
			// Everyone is full: the member whose turn it was reports the loss.
			g.members[start%n].offer(&ev, true)
		}
	}
}

// Subscribe follows events matching filter. With a non-empty group, subscriptions with
// the same group and an equal filter share the events: each goes to exactly one of
// them. buffer bounds the queue (default 1024, at most 65536); when it overflows the
// reader gets one fabric.EventGap event with the number missed, at the point of loss.
func (m *Mesh) Subscribe(filter fabric.EventFilter, groupName string, buffer int) (fabric.EventStream, error) {
	if buffer <= 0 {
		buffer = DefaultEventBuffer
	}
	buffer = min(buffer, MaxEventBuffer)
	filter.Types = slices.Clone(filter.Types)
	s := &sub{
		h:      m.hub,
		filter: filter,
		limit:  buffer,
		notify: make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	h := m.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, m.errClosed()
	}
	if groupName == "" {
		h.solo[s] = struct{}{}
		return s, nil
	}
	key := groupKey(groupName, filter)
	g := h.groups[key]
	if g == nil {
		g = &group{key: key, filter: filter}
		h.groups[key] = g
	}
	g.members = append(slices.Clone(g.members), s)
	s.group = g
	h.groupsChanged()
	return s, nil
}

// groupKey names a group by its name and filter: subscribers that share a name but
// ask for different events cannot share them, so they form distinct groups.
func groupKey(name string, f fabric.EventFilter) string {
	types := slices.Clone(f.Types)
	slices.Sort(types)
	types = slices.Compact(types)
	var b strings.Builder
	fmt.Fprintf(&b, "%q|%q|%q|", name, f.RoomPattern, f.User)
	for _, t := range types {
		fmt.Fprintf(&b, "%d,", t)
	}
	return b.String()
}

// remove unsubscribes s.
func (h *hub) remove(s *sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.group == nil {
		delete(h.solo, s)
		return
	}
	g := s.group
	if h.groups[g.key] != g {
		return
	}
	members := slices.DeleteFunc(slices.Clone(g.members), func(x *sub) bool { return x == s })
	defer h.groupsChanged()
	if len(members) == 0 {
		delete(h.groups, g.key)
		return
	}
	g.members = members
}

// closeAll ends every subscription; later Subscribe calls fail.
func (h *hub) closeAll() {
	h.mu.Lock()
	h.closed = true
	var all []*sub
	for s := range h.solo {
		all = append(all, s)
	}
	for _, g := range h.groups {
		all = append(all, g.members...)
	}
	h.solo, h.groups = map[*sub]struct{}{}, map[string]*group{}
	h.mu.Unlock()
	for _, s := range all {
		s.shut()
	}
}

// sub is one subscription: a bounded queue with a count of events lost since the last
// queued one.
type sub struct {
	h      *hub
	filter fabric.EventFilter
	group  *group
	limit  int

	mu     sync.Mutex
	queue  deque[queued]
	missed uint64 // lost after the last queued event
	closed bool
	notify chan struct{} // capacity 1: "the queue changed"
	done   chan struct{} // closed by shut
}

// queued is an event with the number of events lost just before it.
type queued struct {
	ev           fabric.Event
	missedBefore uint64
}

// offer queues ev if there is room. When the queue is full it counts ev as missed if
// lose is set, and reports false either way.
func (s *sub) offer(ev *fabric.Event, lose bool) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	if s.queue.len() >= s.limit {
		if lose {
			s.missed++
		}
		s.mu.Unlock()
		return false
	}
	s.queue.push(queued{ev: *ev, missedBefore: s.missed})
	s.missed = 0
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return true
}

// Next returns the next event, or an EventGap reporting events lost at this point.
// It fails with fabric.ErrUnavailable after Close (or the mesh's Close) and with
// ctx.Err() when ctx is done.
func (s *sub) Next(ctx context.Context) (fabric.Event, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return fabric.Event{}, fabric.Errorf(fabric.CodeUnavailable, "event subscription closed")
		}
		if s.queue.len() > 0 {
			q := s.queue.ptr(0)
			if n := q.missedBefore; n > 0 {
				q.missedBefore = 0
				s.mu.Unlock()
				return s.gap(n), nil
			}
			ev := q.ev
			s.queue.dropFront(1)
			s.mu.Unlock()
			return ev, nil
		}
		if n := s.missed; n > 0 {
			s.missed = 0
			s.mu.Unlock()
			return s.gap(n), nil
		}
		s.mu.Unlock()
		select {
		case <-s.notify:
		case <-s.done:
		case <-ctx.Done():
			return fabric.Event{}, ctx.Err()
		}
	}
}

func (s *sub) gap(n uint64) fabric.Event {
	return fabric.Event{Type: fabric.EventGap, Time: s.h.m.cfg.Now(), Node: s.h.m.cfg.Node, Missed: n}
}

// Close ends the subscription; it is idempotent.
func (s *sub) Close() {
	s.h.remove(s)
	s.shut()
}

// shut marks s closed, wakes its reader and frees its queue.
func (s *sub) shut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	s.queue.clear()
	close(s.done)
}
