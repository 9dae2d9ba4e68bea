package mesh

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/roomcast/roomcast/fabric"
)

func TestPublishOffsetsInOrderUnderConcurrency(t *testing.T) {
	env := newTestEnv(t)
	rooms := []string{"chat:a", "chat:b", "plain:c"}
	const publishers, each = 8, 200
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				room := rooms[(p+i)%len(rooms)]
				if _, err := env.m.Publish(context.Background(), fabric.Publication{Room: room, Payload: fabric.Payload{Data: []byte(`{}`)}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, room := range rooms {
		offs := env.edge.offsets(room)
		for i, o := range offs {
			if o != uint64(i+1) {
				t.Fatalf("room %s: delivery %d has offset %d", room, i, o)
			}
		}
		total += len(offs)
	}
	if total != publishers*each {
		t.Fatalf("delivered %d, want %d", total, publishers*each)
	}
}

func TestPublishValidation(t *testing.T) {
	env := newTestEnv(t)
	for _, tc := range []struct {
		name string
		pub  fabric.Publication
		want error
	}{
		{"empty room", fabric.Publication{Payload: fabric.Payload{Data: []byte(`1`)}}, fabric.ErrBadRequest},
		{"space in room", fabric.Publication{Room: "chat:a b", Payload: fabric.Payload{Data: []byte(`1`)}}, fabric.ErrBadRequest},
		{"unknown namespace", fabric.Publication{Room: "nope:a", Payload: fabric.Payload{Data: []byte(`1`)}}, fabric.ErrUnknownNamespace},
		{"no namespace part", fabric.Publication{Room: "lobby", Payload: fabric.Payload{Data: []byte(`1`)}}, fabric.ErrUnknownNamespace},
		{"invalid json", fabric.Publication{Room: "chat:a", Payload: fabric.Payload{Data: []byte(`{`)}}, fabric.ErrBadRequest},
		{"binary is not json", fabric.Publication{Room: "chat:a", Payload: fabric.Payload{Data: []byte{0xff}, Binary: true}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := env.m.Publish(context.Background(), tc.pub)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestPublishCopiesPayload(t *testing.T) {
	env := newTestEnv(t)
	buf := []byte(`"abc"`)
	env.m.Publish(context.Background(), fabric.Publication{Room: "chat:a", Payload: fabric.Payload{Data: buf}})
	copy(buf, `"xyz"`)
	h, err := env.m.History(context.Background(), "chat:a", fabric.HistoryQuery{})
	if err != nil || string(h.Messages[0].Payload.Data) != `"abc"` {
		t.Fatalf("history %v, %v", h, err)
	}
}

func TestIdempotency(t *testing.T) {
	env := newTestEnv(t)
	pub := fabric.Publication{Room: "chat:a", Payload: fabric.Payload{Data: []byte(`1`)}, IdempotencyKey: "k1"}
	p1, err := env.m.Publish(context.Background(), pub)
	if err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(59 * time.Second)
	p2, err := env.m.Publish(context.Background(), pub)
	if err != nil || p2 != p1 {
		t.Fatalf("retry = %v, %v; want %v", p2, err, p1)
	}
	if got := env.edge.offsets("chat:a"); !reflect.DeepEqual(got, []uint64{1}) {
		t.Fatalf("delivered %v, want once", got)
	}
	// Another key is another message.
	other := pub
	other.IdempotencyKey = "k2"
	if p, _ := env.m.Publish(context.Background(), other); p.Offset != 2 {
		t.Fatalf("k2 position %v", p)
	}
	// After the window the key is forgotten.
	env.clock.Advance(2 * time.Second)
	p3, err := env.m.Publish(context.Background(), pub)
	if err != nil || p3.Offset != 3 {
		t.Fatalf("after window = %v, %v", p3, err)
	}
	if got := env.edge.offsets("chat:a"); !reflect.DeepEqual(got, []uint64{1, 2, 3}) {
		t.Fatalf("delivered %v", got)
	}
}

func TestHistoryRingAndTTL(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	for i := 1; i <= 7; i++ { // chat keeps 5
		env.publish(t, "chat:a", fmt.Sprint(i))
		env.clock.Advance(10 * time.Second)
	}
	offsets := func(h fabric.History) []uint64 {
		var out []uint64
		for _, m := range h.Messages {
			out = append(out, m.Pos.Offset)
		}
		return out
	}
	since := func(o uint64) *fabric.Position { return &fabric.Position{Epoch: env.m.Epoch(), Offset: o} }
	for _, tc := range []struct {
		name string
		q    fabric.HistoryQuery
		want []uint64
	}{
		{"all", fabric.HistoryQuery{}, []uint64{3, 4, 5, 6, 7}},
		{"limit", fabric.HistoryQuery{Limit: 2}, []uint64{3, 4}},
		{"reverse limit", fabric.HistoryQuery{Limit: 2, Reverse: true}, []uint64{7, 6}},
		{"since", fabric.HistoryQuery{Since: since(5)}, []uint64{6, 7}},
		{"since too old", fabric.HistoryQuery{Since: since(1)}, []uint64{3, 4, 5, 6, 7}},
		{"since current", fabric.HistoryQuery{Since: since(7)}, nil},
		{"since reverse", fabric.HistoryQuery{Since: since(4), Reverse: true}, []uint64{7, 6, 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := env.m.History(ctx, "chat:a", tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if got := offsets(h); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("offsets %v, want %v", got, tc.want)
			}
			if h.Pos != *since(7) {
				t.Fatalf("pos %v", h.Pos)
			}
		})
	}
	// Messages 3..7 were published at t=20s..60s (relative); now is 70s, TTL 1 min:
	// after 25 more seconds only those published at >= 35s, i.e. 5, 6 and 7, remain.
	env.clock.Advance(25 * time.Second)
	h, _ := env.m.History(ctx, "chat:a", fabric.HistoryQuery{})
	if got := offsets(h); !reflect.DeepEqual(got, []uint64{5, 6, 7}) {
		t.Fatalf("after ttl %v", got)
	}
	// Once all of it expired, the room is dropped by the sweep.
	env.clock.Advance(time.Hour)
	env.m.sweep()
	if rooms, _, _ := env.m.ListRooms(ctx, "", "", 0); len(rooms) != 0 {
		t.Fatalf("rooms after expiry %v", rooms)
	}
	if n := roomCount(env.m); n != 0 {
		t.Fatalf("%d rooms still held", n)
	}
}

func roomCount(m *Mesh) int {
	n := 0
	for _, s := range m.shards {
		s.mu.Lock()
		n += len(s.rooms)
		s.mu.Unlock()
	}
	return n
}

func TestHistoryErrors(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	if _, err := env.m.History(ctx, "plain:a", fabric.HistoryQuery{}); !errors.Is(err, fabric.ErrNotAvailable) {
		t.Fatalf("no-history namespace: %v", err)
	}
	_, err := env.m.History(ctx, "chat:a", fabric.HistoryQuery{Since: &fabric.Position{Epoch: "other", Offset: 1}})
	if !errors.Is(err, fabric.ErrBadRequest) {
		t.Fatalf("other epoch: %v", err)
	}
	h, err := env.m.History(ctx, "chat:none", fabric.HistoryQuery{})
	if err != nil || len(h.Messages) != 0 || h.Pos != (fabric.Position{Epoch: env.m.Epoch()}) {
		t.Fatalf("empty room: %v, %v", h, err)
	}
}

func TestRecoveryMatrix(t *testing.T) {
	env := newTestEnv(t)
	for i := 1; i <= 7; i++ { // chat:r keeps 3..7
		env.publish(t, "chat:r", fmt.Sprint(i))
		env.publish(t, "plain:r", fmt.Sprint(i))
	}
	epoch := env.m.Epoch()
	for i, tc := range []struct {
		name      string
		room      string
		from      fabric.Position
		recovered bool
		missed    []uint64
	}{
		{"inside window", "chat:r", fabric.Position{Epoch: epoch, Offset: 4}, true, []uint64{5, 6, 7}},
		{"oldest retained boundary", "chat:r", fabric.Position{Epoch: epoch, Offset: 2}, true, []uint64{3, 4, 5, 6, 7}},
		{"up to date", "chat:r", fabric.Position{Epoch: epoch, Offset: 7}, true, nil},
		{"too old", "chat:r", fabric.Position{Epoch: epoch, Offset: 1}, false, nil},
		{"other epoch", "chat:r", fabric.Position{Epoch: "zzzzzzzzzz", Offset: 5}, false, nil},
		{"future offset", "chat:r", fabric.Position{Epoch: epoch, Offset: 8}, false, nil},
		{"no-history namespace", "plain:r", fabric.Position{Epoch: epoch, Offset: 6}, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ci := env.connect(t, fmt.Sprint("u", i), uint64(100+i))
			res := env.join(t, tc.room, ci, &tc.from)
			if res.Pos != (fabric.Position{Epoch: epoch, Offset: 7}) {
				t.Fatalf("pos %v", res.Pos)
			}
			if res.Recovered != tc.recovered {
				t.Fatalf("recovered = %v, want %v", res.Recovered, tc.recovered)
			}
			var got []uint64
			for _, m := range res.Missed {
				got = append(got, m.Pos.Offset)
			}
			if !reflect.DeepEqual(got, tc.missed) {
				t.Fatalf("missed %v, want %v", got, tc.missed)
			}
			if res.Recoverable != (tc.room == "chat:r") {
				t.Fatalf("recoverable %v", res.Recoverable)
			}
		})
	}
	t.Run("expired by ttl", func(t *testing.T) {
		env.clock.Advance(2 * time.Minute)
		ci := env.connect(t, "late", 200)
		res := env.join(t, "chat:r", ci, &fabric.Position{Epoch: epoch, Offset: 5})
		if res.Recovered || len(res.Missed) != 0 {
			t.Fatalf("recovered %v missed %d after ttl", res.Recovered, len(res.Missed))
		}
	})
}

// TestJoinPositionAtomicWithPublishes checks the join invariant from the owner's side:
// the join's position is read under the same lock as the publishes' assignment and
// delivery, so in the edge's call log every delivery before the join's membership push
// has an offset <= the join position and every delivery after it a greater one.
func TestJoinPositionAtomicWithPublishes(t *testing.T) {
	env := newTestEnv(t)
	const room = "chat:race"
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				env.m.Publish(context.Background(), fabric.Publication{Room: room, Payload: fabric.Payload{Data: []byte(`1`)}})
			}
		}()
	}
	joined := map[string]uint64{}
	for i := range 50 {
		ci := env.connect(t, fmt.Sprint("u", i), uint64(i+1))
		joined[ci.User] = env.join(t, room, ci, nil).Pos.Offset
	}
	cancel()
	wg.Wait()
	env.edge.mu.Lock()
	defer env.edge.mu.Unlock()
	var last uint64
	for _, e := range env.edge.seq {
		if e.room != room {
			continue
		}
		if e.member == "" {
			if e.offset != last+1 {
				t.Fatalf("delivery %d after %d", e.offset, last)
			}
			last = e.offset
			continue
		}
		if pos := joined[e.member]; pos != last {
			t.Fatalf("%s joined at %d but the push came after delivery %d", e.member, pos, last)
		}
	}
}

func TestPresenceTwoConnsOneUser(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	events, err := env.m.Subscribe(fabric.EventFilter{Types: []fabric.EventType{fabric.EventJoin, fabric.EventLeave}}, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(events.Close)
	a1, a2, b := env.connect(t, "alice", 1), env.connect(t, "alice", 2), env.connect(t, "bob", 3)
	env.join(t, "chat:p", a1, nil)
	env.join(t, "chat:p", a2, nil)
	env.join(t, "chat:p", b, nil)
	if _, err := env.m.Join(ctx, "chat:p", a2, nil); !errors.Is(err, fabric.ErrAlreadyJoined) {
		t.Fatalf("second join: %v", err)
	}
	members, err := env.m.Presence(ctx, "chat:p")
	if err != nil {
		t.Fatal(err)
	}
	want := []fabric.Member{
		{User: "alice", Conns: []string{a1.Conn, a2.Conn}, Info: a1.Info},
		{User: "bob", Conns: []string{b.Conn}, Info: b.Info},
	}
	if !reflect.DeepEqual(members, want) {
		t.Fatalf("presence %+v\nwant %+v", members, want)
	}
	if st, _ := env.m.PresenceStats(ctx, "chat:p"); st != (fabric.Stats{Users: 2, Conns: 3}) {
		t.Fatalf("stats %+v", st)
	}
	if err := env.m.Leave(ctx, "chat:p", a1); err != nil {
		t.Fatal(err)
	}
	if err := env.m.Leave(ctx, "chat:p", a1); !errors.Is(err, fabric.ErrNotJoined) {
		t.Fatalf("second leave: %v", err)
	}
	env.m.Disconnect(ctx, a2, []string{"chat:p", "chat:never"})
	wantPush := []membership{
		{"chat:p", "alice", a1.Conn, true},
		{"chat:p", "bob", b.Conn, true},
		{"chat:p", "alice", a2.Conn, false},
	}
	if got := env.edge.memberships(); !reflect.DeepEqual(got, wantPush) {
		t.Fatalf("membership pushes %+v\nwant %+v", got, wantPush)
	}
	for _, w := range wantPush {
		ev, err := events.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		wantType := fabric.EventLeave
		if w.joined {
			wantType = fabric.EventJoin
		}
		if ev.Type != wantType || ev.User != w.user || ev.Room != w.room || ev.Node != testNode {
			t.Fatalf("event %+v, want %+v", ev, w)
		}
	}
	if st, _ := env.m.PresenceStats(ctx, "chat:p"); st != (fabric.Stats{Users: 1, Conns: 1}) {
		t.Fatalf("stats after leave %+v", st)
	}
}

func TestPresenceNotAvailable(t *testing.T) {
	env := newTestEnv(t)
	if _, err := env.m.Presence(context.Background(), "plain:a"); !errors.Is(err, fabric.ErrNotAvailable) {
		t.Fatalf("presence: %v", err)
	}
	if _, err := env.m.PresenceStats(context.Background(), "hist:a"); !errors.Is(err, fabric.ErrNotAvailable) {
		t.Fatalf("stats: %v", err)
	}
	// A namespace without join/leave pushes nothing.
	ci := env.connect(t, "u", 1)
	env.join(t, "small:a", ci, nil)
	if got := env.edge.memberships(); len(got) != 0 {
		t.Fatalf("pushes %v", got)
	}
}

func TestMaxMembers(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	a, a2, b, c := env.connect(t, "a", 1), env.connect(t, "a", 2), env.connect(t, "b", 3), env.connect(t, "c", 4)
	env.join(t, "small:x", a, nil)
	env.join(t, "small:x", b, nil)
	// Another connection of a present user is not a new member.
	env.join(t, "small:x", a2, nil)
	if _, err := env.m.Join(ctx, "small:x", c, nil); !errors.Is(err, fabric.ErrRoomFull) {
		t.Fatalf("third user: %v", err)
	}
	env.m.Leave(ctx, "small:x", b)
	env.join(t, "small:x", c, nil)
}

func TestJoinUnknownNamespace(t *testing.T) {
	env := newTestEnv(t)
	ci := env.connect(t, "u", 1)
	if _, err := env.m.Join(context.Background(), "nope:a", ci, nil); !errors.Is(err, fabric.ErrUnknownNamespace) {
		t.Fatalf("join: %v", err)
	}
	if _, err := env.m.Presence(context.Background(), "nope:a"); !errors.Is(err, fabric.ErrUnknownNamespace) {
		t.Fatalf("presence: %v", err)
	}
}

func TestRoomDroppedWhenEmpty(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	ci := env.connect(t, "u", 1)
	env.join(t, "plain:a", ci, nil)
	env.publish(t, "plain:a", `1`)
	if roomCount(env.m) != 1 {
		t.Fatal("room with a member not held")
	}
	env.m.Leave(ctx, "plain:a", ci)
	if n := roomCount(env.m); n != 0 {
		t.Fatalf("%d rooms held after the last member left", n)
	}
	// Publishing to a room nobody is in is allowed and holds nothing, yet its
	// offsets never repeat.
	for want := uint64(1); want <= 3; want++ {
		if pos := env.publish(t, "plain:b", `1`); pos.Offset < want {
			t.Fatalf("publish %d got offset %d", want, pos.Offset)
		}
	}
	if n := roomCount(env.m); n != 0 {
		t.Fatalf("%d rooms held after a publish to nobody", n)
	}
	// A room held only by an idempotency key is dropped once the window ends.
	env.m.Publish(ctx, fabric.Publication{Room: "plain:k", Payload: fabric.Payload{Data: []byte(`1`)}, IdempotencyKey: "k"})
	if n := roomCount(env.m); n != 1 {
		t.Fatalf("%d rooms held with a remembered key", n)
	}
	env.clock.Advance(fabric.DefaultIdempotencyWindow)
	env.m.sweep()
	if n := roomCount(env.m); n != 0 {
		t.Fatalf("%d rooms held after the key window", n)
	}
}

func TestRejoinAfterDropDoesNotRecoverFalsely(t *testing.T) {
	env := newTestEnv(t)
	for range 4 {
		env.publish(t, "chat:d", `1`)
	}
	old := fabric.Position{Epoch: env.m.Epoch(), Offset: 2} // a client that missed 3 and 4
	env.clock.Advance(time.Hour)
	env.m.sweep() // history expired: the room is dropped
	if roomCount(env.m) != 0 {
		t.Fatal("room not dropped")
	}
	for range 4 {
		env.publish(t, "chat:d", `1`)
	}
	res := env.join(t, "chat:d", env.connect(t, "u", 1), &old)
	if res.Recovered {
		t.Fatalf("recovered across a dropped room: missed %d", len(res.Missed))
	}
	if res.Pos.Offset < 8 {
		t.Fatalf("offsets repeated after drop: pos %v", res.Pos)
	}
}

func TestListRooms(t *testing.T) {
	env := newTestEnv(t)
	ctx := context.Background()
	ci := env.connect(t, "u", 1)
	for _, r := range []string{"chat:a", "chat:b", "chat:c", "chat:d", "hist:a"} {
		env.publish(t, r, `1`)
	}
	env.join(t, "plain:z", ci, nil)
	env.publish(t, "plain:gone", `1`) // no members, no history: not listed

	var names []string
	after := ""
	for pages := 0; ; pages++ {
		rooms, more, err := env.m.ListRooms(ctx, "chat:", after, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rooms {
			names = append(names, r.Name)
			if r.Owner != testNode || r.Pos != (fabric.Position{Epoch: env.m.Epoch(), Offset: 1}) {
				t.Fatalf("summary %+v", r)
			}
		}
		if !more {
			break
		}
		if pages > 3 {
			t.Fatal("pagination does not end")
		}
		after = rooms[len(rooms)-1].Name
	}
	if want := []string{"chat:a", "chat:b", "chat:c", "chat:d"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("names %v, want %v", names, want)
	}
	all, more, _ := env.m.ListRooms(ctx, "", "", 0)
	if more || len(all) != 6 || all[5].Name != "plain:z" || all[5].Stats != (fabric.Stats{Users: 1, Conns: 1}) {
		t.Fatalf("all rooms %+v more=%v", all, more)
	}
}

// A join retried after its reply was lost gets the first registration's position
// and only the missed messages up to it (the joining edge buffered the rest); a join
// by another attempt for a registered connection re-registers it at the current
// position; a plain duplicate join is refused.
func TestJoinRetriedAttempt(t *testing.T) {
	env := newTestEnv(t)
	m := env.m
	ctx := context.Background()
	e := ep{s: m.epoch}
	room := "log:retry"
	pub := func() fabric.Position {
		t.Helper()
		pos, err := m.Publish(ctx, fabric.Publication{Room: room, Payload: fabric.Payload{Data: []byte(`1`)}})
		if err != nil {
			t.Fatal(err)
		}
		return pos
	}
	p1 := pub()
	pub()
	ci := fabric.ClientInfo{User: "u", Conn: "c1@" + testNode}
	first, err := m.joinLocal(ctx, room, ci, &p1, 7, e)
	if err != nil || !first.Recovered || len(first.Missed) != 1 || first.Pos.Offset != 2 {
		t.Fatalf("first join: %+v %v", first, err)
	}
	pub() // offset 3: the edge buffers it for the joining connection
	again, err := m.joinLocal(ctx, room, ci, &p1, 7, e)
	if err != nil || again.Pos != first.Pos || !again.Recovered || len(again.Missed) != 1 || again.Missed[0].Pos.Offset != 2 {
		t.Fatalf("retried join: %+v %v, first %+v", again, err, first)
	}
	other, err := m.joinLocal(ctx, room, ci, nil, 9, e)
	if err != nil || other.Pos.Offset != 3 {
		t.Fatalf("join by another attempt: %+v %v", other, err)
	}
	if _, err := m.joinLocal(ctx, room, ci, nil, 0, e); !errors.Is(err, fabric.ErrAlreadyJoined) {
		t.Fatalf("duplicate join without an attempt: %v", err)
	}
	ms, err := m.Presence(ctx, room)
	if err != nil || len(ms) != 1 || len(ms[0].Conns) != 1 {
		t.Fatalf("presence: %+v %v", ms, err)
	}
}
