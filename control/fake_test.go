package control

import (
	"context"
	"strings"
	"sync"

	"github.com/roomcast/roomcast/fabric"
)

// fakeFabric records calls and answers from optional hooks, with canned defaults.
type fakeFabric struct {
	mu          sync.Mutex
	pubs        []fabric.Publication
	offset      uint64
	subs        []*fakeSub
	preload     []fabric.Event // queued on every new subscription
	subscribeCh chan *fakeSub  // receives each new subscription when non-nil

	publish     func(context.Context, fabric.Publication) (fabric.Position, error)
	sendToUser  func(ctx context.Context, user string, p fabric.Payload) (int, error)
	sendToConn  func(ctx context.Context, conn string, p fabric.Payload) error
	joinRoom    func(ctx context.Context, room string, t fabric.Target) (int, error)
	leaveRoom   func(ctx context.Context, room string, t fabric.Target) (int, error)
	kick        func(ctx context.Context, t fabric.Target, k fabric.Kick) (int, error)
	presence    func(ctx context.Context, room string) ([]fabric.Member, error)
	stats       func(ctx context.Context, room string) (fabric.Stats, error)
	history     func(ctx context.Context, room string, q fabric.HistoryQuery) (fabric.History, error)
	rooms       []string // for the default ListRooms
	listNodes   func(ctx context.Context) ([]fabric.NodeInfo, error)
	subscribeFn func(filter fabric.EventFilter, group string, buffer int) error
}

var _ Fabric = (*fakeFabric)(nil)

func (f *fakeFabric) Publish(ctx context.Context, p fabric.Publication) (fabric.Position, error) {
	if f.publish != nil {
		pos, err := f.publish(ctx, p)
		if err == nil {
			f.mu.Lock()
			f.pubs = append(f.pubs, p)
			f.mu.Unlock()
		}
		return pos, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pubs = append(f.pubs, p)
	f.offset++
	return fabric.Position{Epoch: "e1", Offset: f.offset}, nil
}

func (f *fakeFabric) published() []fabric.Publication {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fabric.Publication(nil), f.pubs...)
}

func (f *fakeFabric) SendToUser(ctx context.Context, user string, p fabric.Payload) (int, error) {
	if f.sendToUser != nil {
		return f.sendToUser(ctx, user, p)
	}
	return 2, nil
}

func (f *fakeFabric) SendToConn(ctx context.Context, conn string, p fabric.Payload) error {
	if f.sendToConn != nil {
		return f.sendToConn(ctx, conn, p)
	}
	return nil
}

func (f *fakeFabric) JoinRoom(ctx context.Context, room string, t fabric.Target) (int, error) {
	if f.joinRoom != nil {
		return f.joinRoom(ctx, room, t)
	}
	return 1, nil
}

func (f *fakeFabric) LeaveRoom(ctx context.Context, room string, t fabric.Target) (int, error) {
	if f.leaveRoom != nil {
		return f.leaveRoom(ctx, room, t)
	}
	return 1, nil
}

func (f *fakeFabric) Kick(ctx context.Context, t fabric.Target, k fabric.Kick) (int, error) {
	if f.kick != nil {
		return f.kick(ctx, t, k)
	}
	return 1, nil
}

func (f *fakeFabric) Presence(ctx context.Context, room string) ([]fabric.Member, error) {
	if f.presence != nil {
		return f.presence(ctx, room)
	}
	return nil, nil
}

func (f *fakeFabric) PresenceStats(ctx context.Context, room string) (fabric.Stats, error) {
	if f.stats != nil {
		return f.stats(ctx, room)
	}
	return fabric.Stats{}, nil
}

func (f *fakeFabric) History(ctx context.Context, room string, q fabric.HistoryQuery) (fabric.History, error) {
	if f.history != nil {
		return f.history(ctx, room, q)
	}
	return fabric.History{}, nil
}

// ListRooms pages over f.rooms (sorted) like the real fabric does.
func (f *fakeFabric) ListRooms(_ context.Context, prefix, after string, limit int) ([]fabric.RoomSummary, bool, error) {
	var out []fabric.RoomSummary
	for _, r := range f.rooms {
		if !strings.HasPrefix(r, prefix) || r <= after {
			continue
		}
		if len(out) == limit {
			return out, true, nil
		}
		out = append(out, fabric.RoomSummary{Name: r, Stats: fabric.Stats{Users: 1, Conns: 2}, Pos: fabric.Position{Epoch: "e", Offset: 3}, Owner: "n1"})
	}
	return out, false, nil
}

func (f *fakeFabric) ListNodes(ctx context.Context) ([]fabric.NodeInfo, error) {
	if f.listNodes != nil {
		return f.listNodes(ctx)
	}
	return []fabric.NodeInfo{{Name: "n1", State: fabric.NodeActive}}, nil
}

func (f *fakeFabric) Subscribe(filter fabric.EventFilter, group string, buffer int) (fabric.EventStream, error) {
	if f.subscribeFn != nil {
		if err := f.subscribeFn(filter, group, buffer); err != nil {
			return nil, err
		}
	}
	s := &fakeSub{filter: filter, group: group, buffer: buffer, events: make(chan fabric.Event, 64), closed: make(chan struct{})}
	f.mu.Lock()
	for _, ev := range f.preload {
		s.events <- ev
	}
	f.subs = append(f.subs, s)
	ch := f.subscribeCh
	f.mu.Unlock()
	if ch != nil {
		ch <- s
	}
	return s, nil
}

// fakeSub is one subscription; tests push events into it and watch it close.
type fakeSub struct {
	filter    fabric.EventFilter
	group     string
	buffer    int
	events    chan fabric.Event
	closeOnce sync.Once
	closed    chan struct{}
}

func (s *fakeSub) Next(ctx context.Context) (fabric.Event, error) {
	select {
	case ev := <-s.events:
		return ev, nil
	case <-ctx.Done():
		return fabric.Event{}, ctx.Err()
	case <-s.closed:
		return fabric.Event{}, fabric.Errorf(fabric.CodeUnavailable, "subscription closed")
	}
}

func (s *fakeSub) Close() { s.closeOnce.Do(func() { close(s.closed) }) }
