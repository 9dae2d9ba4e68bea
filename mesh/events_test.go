package mesh

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/roomcast/roomcast/fabric"
)

func subscribe(t *testing.T, m *Mesh, f fabric.EventFilter, group string, buffer int) fabric.EventStream {
	t.Helper()
	s, err := m.Subscribe(f, group, buffer)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// drain reads exactly n events, failing if they do not arrive in time.
func drain(t *testing.T, s fabric.EventStream, n int) []fabric.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := make([]fabric.Event, 0, n)
	for range n {
		ev, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("after %d events: %v", len(out), err)
		}
		out = append(out, ev)
	}
	return out
}

// assertEmpty checks that nothing is queued.
func assertEmpty(t *testing.T, s fabric.EventStream) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if ev, err := s.Next(ctx); err == nil {
		t.Fatalf("unexpected event %+v", ev)
	}
}

func TestEventFilters(t *testing.T) {
	env := newTestEnv(t)
	evs := []fabric.Event{
		{Type: fabric.EventConnect, User: "alice", Conn: "1@n1"},
		{Type: fabric.EventJoin, User: "alice", Room: "chat:a"},
		{Type: fabric.EventJoin, User: "bob", Room: "chat:b"},
		{Type: fabric.EventClientMessage, User: "bob", Room: "game:1"},
	}
	for _, tc := range []struct {
		name   string
		filter fabric.EventFilter
		want   []int // indexes into evs
	}{
		{"everything", fabric.EventFilter{}, []int{0, 1, 2, 3}},
		{"types", fabric.EventFilter{Types: []fabric.EventType{fabric.EventJoin}}, []int{1, 2}},
		{"user", fabric.EventFilter{User: "bob"}, []int{2, 3}},
		{"room pattern", fabric.EventFilter{RoomPattern: "chat:*"}, []int{1, 2}},
		{"combined", fabric.EventFilter{Types: []fabric.EventType{fabric.EventJoin}, User: "alice", RoomPattern: "chat:*"}, []int{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := subscribe(t, env.m, tc.filter, "", 0)
			for _, ev := range evs {
				env.m.Emit(ev)
			}
			got := drain(t, s, len(tc.want))
			for i, w := range tc.want {
				if got[i].Type != evs[w].Type || got[i].User != evs[w].User || got[i].Room != evs[w].Room {
					t.Fatalf("event %d = %+v, want %+v", i, got[i], evs[w])
				}
				if got[i].Node != testNode || got[i].Time.IsZero() {
					t.Fatalf("node/time not filled: %+v", got[i])
				}
			}
			assertEmpty(t, s)
		})
	}
}

func TestEventGapOnOverflow(t *testing.T) {
	env := newTestEnv(t)
	s := subscribe(t, env.m, fabric.EventFilter{}, "", 3)
	emit := func(from, to int) {
		for i := from; i <= to; i++ {
			env.m.Emit(fabric.Event{Type: fabric.EventClientMessage, Conn: fmt.Sprint(i)})
		}
	}
	emit(1, 10) // 1-3 queued, 4-10 lost
	got := drain(t, s, 2)
	emit(11, 12) // two slots free: 11 after the gap, 12 fits too
	got = append(got, drain(t, s, 4)...)
	want := []string{"1", "2", "3", "gap:7", "11", "12"}
	if g := describe(got); fmt.Sprint(g) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", g, want)
	}
	assertEmpty(t, s)
	// A loss with nothing queued after it is reported when the reader catches up.
	emit(13, 17)
	got = drain(t, s, 4)
	if g := describe(got); fmt.Sprint(g) != fmt.Sprint([]string{"13", "14", "15", "gap:2"}) {
		t.Fatalf("got %v", g)
	}
}

func describe(evs []fabric.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		if ev.Type == fabric.EventGap {
			out[i] = fmt.Sprint("gap:", ev.Missed)
		} else {
			out[i] = ev.Conn
		}
	}
	return out
}

func TestEventGroupSharesEvents(t *testing.T) {
	env := newTestEnv(t)
	f := fabric.EventFilter{Types: []fabric.EventType{fabric.EventClientMessage}}
	a := subscribe(t, env.m, f, "workers", 100)
	b := subscribe(t, env.m, f, "workers", 100)
	other := subscribe(t, env.m, f, "", 100)
	// Same group name, different filter: a group of its own that sees everything.
	c := subscribe(t, env.m, fabric.EventFilter{}, "workers", 100)
	const n = 40
	for i := range n {
		env.m.Emit(fabric.Event{Type: fabric.EventClientMessage, Conn: fmt.Sprint(i)})
	}
	seen := map[string]int{}
	ga, gb := drain(t, a, n/2), drain(t, b, n/2)
	for _, ev := range append(ga, gb...) {
		seen[ev.Conn]++
	}
	for i := range n {
		if seen[fmt.Sprint(i)] != 1 {
			t.Fatalf("event %d seen %d times by the group", i, seen[fmt.Sprint(i)])
		}
	}
	assertEmpty(t, a)
	assertEmpty(t, b)
	drain(t, other, n)
	drain(t, c, n)
}

func TestEventGroupSkipsFullMember(t *testing.T) {
	env := newTestEnv(t)
	a := subscribe(t, env.m, fabric.EventFilter{}, "g", 1)
	b := subscribe(t, env.m, fabric.EventFilter{}, "g", 3)
	for i := range 5 {
		env.m.Emit(fabric.Event{Type: fabric.EventConnect, Conn: fmt.Sprint(i)})
	}
	// 0 -> a, 1 -> b, 2 -> b (a full), 3 -> b, 4: both full, counted on a.
	if g := describe(drain(t, a, 2)); fmt.Sprint(g) != "[0 gap:1]" {
		t.Fatalf("a got %v", g)
	}
	if g := describe(drain(t, b, 3)); fmt.Sprint(g) != "[1 2 3]" {
		t.Fatalf("b got %v", g)
	}
	// After one member leaves, the other receives everything.
	a.Close()
	env.m.Emit(fabric.Event{Type: fabric.EventConnect, Conn: "5"})
	env.m.Emit(fabric.Event{Type: fabric.EventConnect, Conn: "6"})
	if g := describe(drain(t, b, 2)); fmt.Sprint(g) != "[5 6]" {
		t.Fatalf("b got %v", g)
	}
}

func TestCloseUnblocksNext(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(env *testEnv, s fabric.EventStream)
	}{
		{"stream close", func(_ *testEnv, s fabric.EventStream) { s.Close() }},
		{"mesh close", func(env *testEnv, _ fabric.EventStream) { env.m.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newTestEnv(t)
			s := subscribe(t, env.m, fabric.EventFilter{}, "g", 0)
			errc := make(chan error, 1)
			started := make(chan struct{})
			go func() {
				close(started)
				_, err := s.Next(context.Background())
				errc <- err
			}()
			<-started
			tc.close(env, s)
			select {
			case err := <-errc:
				if !errors.Is(err, fabric.ErrUnavailable) {
					t.Fatalf("Next after close: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Next still blocked after close")
			}
			s.Close() // idempotent
			if _, err := s.Next(context.Background()); err == nil {
				t.Fatal("Next succeeded after close")
			}
		})
	}
}

func TestNextHonoursContext(t *testing.T) {
	env := newTestEnv(t)
	s := subscribe(t, env.m, fabric.EventFilter{}, "", 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next = %v", err)
	}
}
