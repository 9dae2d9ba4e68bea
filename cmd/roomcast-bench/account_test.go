package main

import (
	"reflect"
	"testing"
)

func TestTallyCountsGapsAndDuplicates(t *testing.T) {
	type msg struct{ room, seq, step int64 }
	tests := []struct {
		name      string
		msgs      []msg
		want      stepTotals
		published int64 // deliveries owed to this one connection
		wantLost  int64
	}{
		{name: "in order", msgs: []msg{{1, 1, 1}, {1, 2, 1}, {1, 3, 1}}, want: stepTotals{Delivered: 3}, published: 3},
		{name: "repeat is a duplicate", msgs: []msg{{1, 1, 1}, {1, 2, 1}, {1, 2, 1}, {1, 3, 1}},
			want: stepTotals{Delivered: 3, Dups: 1}, published: 3},
		{name: "step back is a duplicate (order is promised)", msgs: []msg{{1, 1, 1}, {1, 3, 1}, {1, 2, 1}},
			want: stepTotals{Delivered: 2, Dups: 1, Gaps: 1}, published: 3, wantLost: 1},
		{name: "gap", msgs: []msg{{1, 1, 1}, {1, 4, 1}, {1, 5, 1}}, want: stepTotals{Delivered: 3, Gaps: 2}, published: 5, wantLost: 2},
		{name: "lost first message", msgs: []msg{{1, 2, 1}}, want: stepTotals{Delivered: 1, Gaps: 1}, published: 2, wantLost: 1},
		{name: "tail never came", msgs: []msg{{1, 1, 1}, {1, 2, 1}}, want: stepTotals{Delivered: 2}, published: 4, wantLost: 2},
		{name: "rooms are independent", msgs: []msg{{1, 1, 1}, {2, 1, 1}, {1, 2, 1}, {2, 2, 1}},
			want: stepTotals{Delivered: 4}, published: 4},
		{name: "other step is late, not delivered, and not a gap later",
			msgs: []msg{{1, 1, 0}, {1, 2, 0}, {1, 3, 1}}, want: stepTotals{Delivered: 1, Late: 2, LateBy: map[int64]int64{0: 2}}, published: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tl := newTally()
			tl.begin(1)
			seen := roomSeq{}
			for _, m := range tt.msgs {
				tl.observe(7, seen, stamp{t: 1000, seq: m.seq, room: m.room, step: m.step}, 3000)
			}
			got, h := tl.snapshot(true)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("totals = %+v, want %+v", got, tt.want)
			}
			if h.TotalCount() != tt.want.Delivered {
				t.Fatalf("histogram holds %d values, want one per delivery (%d)", h.TotalCount(), tt.want.Delivered)
			}
			if tt.want.Delivered > 0 && h.Max() < 1990 || h.Max() > 2010 {
				t.Fatalf("latency max = %dµs, want 2000µs (receive time − intended time)", h.Max())
			}
			if l := lossCount(tt.published, got.Delivered); l != tt.wantLost {
				t.Fatalf("lost = %d, want %d", l, tt.wantLost)
			}
		})
	}
}

func TestTallyBeginResets(t *testing.T) {
	tl := newTally()
	tl.begin(1)
	seen := roomSeq{}
	tl.observe(0, seen, stamp{t: 1, seq: 1, room: 1, step: 1}, 10)
	tl.begin(2)
	tl.observe(0, seen, stamp{t: 1, seq: 2, room: 1, step: 2}, 10)
	got, h := tl.snapshot(true)
	if !reflect.DeepEqual(got, stepTotals{Delivered: 1}) || h.TotalCount() != 1 {
		t.Fatalf("after begin(2): %+v, %d recorded; want only step 2's delivery", got, h.TotalCount())
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	s := stamp{t: 1764106000123456, seq: 42, room: 9999, step: 3}
	p := appendPayload(nil, s, 64)
	if len(p) != 64 {
		t.Fatalf("payload is %d bytes, want 64: %s", len(p), p)
	}
	frames := map[string][]byte{
		"bare":              p,
		"roomcast envelope": append(append([]byte(`{"message":{"room":"r","position":{"epoch":"e","offset":"5"},"data":`), p...), "}}"...),
		"socket.io event":   append(append([]byte(`42["m",`), p...), ']'),
	}
	for name, f := range frames {
		t.Run(name, func(t *testing.T) {
			got, ok := parseStamp(f)
			if !ok || got != s {
				t.Fatalf("parseStamp = %+v, %v; want %+v", got, ok, s)
			}
		})
	}
	for _, bad := range []string{`{"ping":{}}`, `{"bt":x}`, `{"bt":1,"bs":2}`, `2`} {
		if _, ok := parseStamp([]byte(bad)); ok {
			t.Errorf("parseStamp(%s) accepted garbage", bad)
		}
	}
}

func TestPingReply(t *testing.T) {
	tests := []struct {
		target, frame, want string
	}{
		{targetRoomcast, `{"ping":{}}`, `{"pong":{}}`},
		{targetRoomcast, `{"ping": {}}`, `{"pong":{}}`},
		{targetRoomcast, `{"message":{"data":{"bt":1}}}`, ""},
		{targetSocketIO, `2`, `3`},
		{targetSocketIO, `42["m",{}]`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.target+" "+tt.frame, func(t *testing.T) {
			if got := string(pingReply(tt.target, []byte(tt.frame))); got != tt.want {
				t.Fatalf("pingReply = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestMemberships(t *testing.T) {
	for _, dist := range []string{"uniform", "random"} {
		t.Run(dist, func(t *testing.T) {
			m, err := memberships(100, 100, 5, dist, 1)
			if err != nil {
				t.Fatal(err)
			}
			perConn := map[int]int{}
			for k, room := range m {
				seen := map[int]bool{}
				for _, c := range room {
					if seen[c] {
						t.Fatalf("room %d has connection %d twice", k, c)
					}
					seen[c] = true
					perConn[c]++
				}
				if len(room) != 5 {
					t.Fatalf("room %d has %d members", k, len(room))
				}
			}
			if dist == "uniform" {
				for c := range 100 {
					if perConn[c] != 5 {
						t.Fatalf("connection %d is in %d rooms, want 5", c, perConn[c])
					}
				}
			}
		})
	}
	if _, err := memberships(3, 1, 5, "uniform", 1); err == nil {
		t.Fatal("rooms larger than the connections were accepted")
	}
}

// A message of an earlier step that arrives after begin moved on counts as late for
// its own step, across later begins, so the runner can tell late from lost.
func TestTallyLateByStep(t *testing.T) {
	tl := newTally()
	tl.begin(1)
	seen := roomSeq{}
	tl.observe(0, seen, stamp{t: 1, seq: 1, room: 1, step: 1}, 10)
	tl.begin(2)
	tl.observe(0, seen, stamp{t: 1, seq: 2, room: 1, step: 1}, 10) // step 1's tail, late
	tl.begin(3)
	tl.observe(3, roomSeq{}, stamp{t: 1, seq: 1, room: 2, step: 1}, 10) // later still, another shard
	tl.observe(0, seen, stamp{t: 1, seq: 3, room: 1, step: 2}, 10)
	got, _ := tl.snapshot(false)
	if want := map[int64]int64{1: 2, 2: 1}; !reflect.DeepEqual(got.LateBy, want) {
		t.Fatalf("late by step = %v, want %v", got.LateBy, want)
	}
	var sum stepTotals
	sum.add(got)
	sum.add(got)
	if sum.LateBy[1] != 4 || sum.LateBy[2] != 2 {
		t.Fatalf("merged across workers: %v", sum.LateBy)
	}
}
