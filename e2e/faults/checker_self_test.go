package faults

import (
	"strings"
	"testing"
	"time"

	"github.com/roomcast/roomcast/client"
	"github.com/roomcast/roomcast/fabric"
)

// The checker itself, on synthetic streams: it must accept a correct stream and a
// loss covered by recovered=false, and catch each kind of violation.
func TestCheckerFindsViolations(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	pos := func(e string, o uint64) fabric.Position { return fabric.Position{Epoch: e, Offset: o} }
	const room = "chat:x"
	// Publishes 1..4 in epoch 10, then 5..6 in epoch 12 (the room moved).
	acks := func(c *checker) {
		for i := 1; i <= 6; i++ {
			p := pos("10", uint64(i))
			if i > 4 {
				p = pos("12", uint64(i-4))
			}
			c.addAck(ack{pub: "p", seq: i, room: room, pos: p, start: at(i * 100), done: at(i*100 + 10)})
		}
	}
	type ev struct {
		ms   int
		join *client.JoinInfo
		pos  fabric.Position
		seq  int
	}
	first := &client.JoinInfo{Room: room, Position: pos("10", 0), Recoverable: true}
	gap := &client.JoinInfo{Room: room, Position: pos("12", 1), Recoverable: true, Rejoin: true, RecoveryAsked: true}
	msg := func(ms int, e string, o uint64, seq int) ev { return ev{ms: ms, pos: pos(e, o), seq: seq} }
	for _, tc := range []struct {
		name   string
		events []ev
		want   string // "" = no violation
	}{
		{"complete stream across a move", []ev{{ms: 50, join: first}, msg(115, "10", 1, 1), msg(215, "10", 2, 2), msg(315, "10", 3, 3),
			msg(415, "10", 4, 4), msg(515, "12", 1, 5), msg(615, "12", 2, 6)}, ""},
		{"loss covered by recovered=false", []ev{{ms: 50, join: first}, msg(115, "10", 1, 1), msg(215, "10", 2, 2),
			{ms: 560, join: gap}, msg(615, "12", 2, 6)}, ""},
		{"silent loss at an epoch change", []ev{{ms: 50, join: first}, msg(115, "10", 1, 1), msg(215, "10", 2, 2),
			msg(515, "12", 1, 5), msg(615, "12", 2, 6)}, "silent loss"},
		{"skipped offsets", []ev{{ms: 50, join: first}, msg(115, "10", 1, 1), msg(315, "10", 3, 3), msg(415, "10", 4, 4),
			msg(515, "12", 1, 5), msg(615, "12", 2, 6)}, "offsets skipped"},
		{"delivered twice", []ev{{ms: 50, join: first}, msg(115, "10", 1, 1), msg(215, "10", 2, 2), msg(315, "10", 3, 3),
			msg(415, "10", 4, 4), msg(515, "12", 1, 5), msg(600, "12", 2, 5), msg(615, "12", 3, 6)}, "delivered twice"},
		{"two owners", []ev{{ms: 50, join: first}, msg(115, "10", 1, 1), msg(215, "10", 2, 2), msg(315, "10", 3, 3),
			msg(415, "10", 4, 4), msg(515, "12", 1, 5), msg(615, "12", 2, 6), msg(700, "12", 3, 99)}, "two believed owners"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newChecker()
			acks(c)
			s := c.newSub(c.newClient("u"), room)
			for _, e := range tc.events {
				re := recvEvent{at: at(e.ms), join: e.join, pos: e.pos, pub: "p", seq: e.seq}
				if e.join != nil {
					re.pos = e.join.Position
				}
				s.events = append(s.events, re)
			}
			if tc.name == "two owners" {
				c.addAck(ack{pub: "q", seq: 1, room: room, pos: pos("12", 3), start: at(650), done: at(660)})
			}
			r := c.check(testBackoff, 0, at(10_000))
			got := strings.Join(r.summary(), "\n")
			switch {
			case tc.want == "" && got != "":
				t.Fatalf("violations on a correct stream:\n%s", got)
			case tc.want != "" && !strings.Contains(got, tc.want):
				t.Fatalf("want a %q violation, got:\n%s", tc.want, got)
			}
		})
	}
}

// Reconnect waits are checked against the backoff's ceilings.
func TestCheckerBackoffBounds(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := client.Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	for _, tc := range []struct {
		name  string
		waits []time.Duration
		ok    bool
	}{
		{"within the ceilings", []time.Duration{90 * time.Millisecond, 190 * time.Millisecond, 390 * time.Millisecond}, true},
		{"second wait too long", []time.Duration{90 * time.Millisecond, 300 * time.Millisecond}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newChecker()
			cl := c.newClient("u")
			now := t0
			st := func(from, to client.State) {
				cl.states = append(cl.states, stateEvent{at: now, from: from, to: to})
			}
			st(client.StateConnecting, client.StateConnected)
			st(client.StateConnected, client.StateDisconnected)
			for i, w := range tc.waits {
				now = now.Add(w)
				st(client.StateDisconnected, client.StateConnecting)
				if i < len(tc.waits)-1 {
					st(client.StateConnecting, client.StateDisconnected)
				}
			}
			st(client.StateConnecting, client.StateConnected)
			r := c.check(b, 0, now)
			if ok := len(r.violations) == 0; ok != tc.ok {
				t.Fatalf("ok=%v, want %v: %v", ok, tc.ok, r.summary())
			}
		})
	}
}
