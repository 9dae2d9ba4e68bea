package client

import (
	"fmt"
	"sync"
	"testing"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// streamLog records, in delivery order, what a subscription's handlers saw: "join"
// reports and message offsets.
type streamLog struct {
	mu     sync.Mutex
	events []string
	joins  []JoinInfo
}

func (l *streamLog) options() []JoinOption {
	return []JoinOption{
		WithJoinHandler(func(j JoinInfo) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.joins = append(l.joins, j)
			l.events = append(l.events, "join")
		}),
		WithMessageHandler(func(m *fabric.Message) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.events = append(l.events, fmt.Sprintf("%s/%d", m.Pos.Epoch, m.Pos.Offset))
		}),
	}
}

func (l *streamLog) snapshot() ([]string, []JoinInfo) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.events...), append([]JoinInfo(nil), l.joins...)
}

// waitFor waits until the log holds n events.
func (l *streamLog) waitFor(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	eventually(t, fmt.Sprintf("%d events", n), func() bool { got, _ = l.snapshot(); return len(got) >= n })
	return got
}

// expect waits for the log to hold len(want) events and fails unless they are want.
func (l *streamLog) expect(t *testing.T, want ...string) {
	t.Helper()
	if got := l.waitFor(t, len(want)); !equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
}

// joinLogged joins room with a streamLog's handlers and waits until the fake
// server has the join command.
func joinLogged(t *testing.T, c *Client, fc *fakeConn, room string) (*Subscription, *streamLog) {
	t.Helper()
	l := &streamLog{}
	sub, err := c.Join(ctx10(t), room, l.options()...)
	if err != nil {
		t.Fatal(err)
	}
	fc.expect(t, "join")
	return sub, l
}

// expectRejoin waits for the leave and the join of a re-sync and fails unless the
// join recovers from epoch/offset; it returns the join command.
func expectRejoin(t *testing.T, fc *fakeConn, epoch string, offset uint64) *pb.ClientCommand {
	t.Helper()
	fc.expect(t, "leave")
	jc := fc.expect(t, "join")
	if rf := jc.GetJoin().GetRecoverFrom(); rf.GetEpoch() != epoch || rf.GetOffset() != offset {
		t.Fatalf("re-join recover_from = %v, want %s/%d", rf, epoch, offset)
	}
	return jc
}

func pushMsg(room, epoch string, off uint64) *pb.ServerMessage {
	return &pb.ServerMessage{Body: &pb.ServerMessage_Message{Message: &pb.RoomMessage{Room: room, Epoch: epoch, Offset: off, Payload: jsonPayload("0")}}}
}

// kinds names the leave and join commands among cmds.
func kinds(cmds []*pb.ClientCommand) []string {
	var out []string
	for _, cmd := range cmds {
		if k := kindOf(cmd); k == "leave" || k == "join" {
			out = append(out, k)
		}
	}
	return out
}

func equal(a, b []string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// A jump in the live stream of a room with history makes the client leave and
// re-join once, recovering from the last offset delivered: the missed messages come
// in order before later ones, and pushes that raced with the re-join are not
// delivered twice.
func TestGapInLiveStreamResyncs(t *testing.T) {
	fs, c, fc := startConnected(t, nil)
	sub, l := joinLogged(t, c, fc, "chat:g")
	fs.publish("chat:g", jsonPayload("1"), nil)
	fs.publish("chat:g", jsonPayload("2"), nil)
	l.waitFor(t, 3)
	// 3 to 5 never reach the client (a dropped delivery); 6 does: a jump from 2.
	for range 3 {
		fs.record("chat:g", jsonPayload("lost"))
	}
	fs.set(func(fs *fakeServer) { fs.hold["join"] = true })
	fs.publish("chat:g", jsonPayload("6"), nil)
	jc := expectRejoin(t, fc, "e1", 2)
	// While the re-join is on its way, pushes race ahead of its reply: a repeat of 6,
	// and 7.
	fs.publish("chat:g", jsonPayload("7"), nil) // not pushed: the fake saw the leave
	fc.send(pushMsg("chat:g", "e1", 6))
	fc.send(pushMsg("chat:g", "e1", 7))
	fc.send(&pb.ServerMessage{Id: jc.GetId(), Body: &pb.ServerMessage_Join{Join: fs.join(fc, "chat:g", jc.GetJoin().GetRecoverFrom())}})
	fs.set(func(fs *fakeServer) { fs.hold["join"] = false })
	fs.publish("chat:g", jsonPayload("8"), nil)

	l.expect(t, "join", "e1/1", "e1/2", "join", "e1/3", "e1/4", "e1/5", "e1/6", "e1/7", "e1/8")
	if k := kinds(fc.buffered()); len(k) != 0 {
		t.Errorf("more leave/join commands after the re-sync: %v", k)
	}
	_, joins := l.snapshot()
	j := joins[1]
	if !j.Rejoin || !j.Resync || !j.RecoveryAsked || !j.Recovered || j.Missed != 5 || j.Gap() || j.Server {
		t.Errorf("re-sync report = %+v", j)
	}
	if sub.Resyncs() != 1 || sub.Duplicates() != 3 {
		t.Errorf("resyncs = %d, duplicates = %d; want 1, 3", sub.Resyncs(), sub.Duplicates())
	}
	if p := sub.Position(); p != (fabric.Position{Epoch: "e1", Offset: 8}) {
		t.Errorf("Position = %v", p)
	}
}

// A new epoch whose offsets go on (the shard moved between live nodes with its
// history) is one stream: no re-sync, and a late message of the old epoch is a
// duplicate.
func TestContinuousHandoverDoesNotResync(t *testing.T) {
	fs, c, fc := startConnected(t, nil)
	sub, l := joinLogged(t, c, fc, "chat:h")
	fs.publish("chat:h", jsonPayload("1"), nil)
	fs.publish("chat:h", jsonPayload("2"), nil)
	for _, m := range []*pb.ServerMessage{
		pushMsg("chat:h", "e2", 3), // the handover
		pushMsg("chat:h", "e1", 2), // late, from the old owner
		pushMsg("chat:h", "e2", 4),
	} {
		fc.send(m)
	}
	l.expect(t, "join", "e1/1", "e1/2", "e2/3", "e2/4")
	// A round trip after the pushes: had they caused a re-sync, its commands would
	// have reached the fake before this one.
	if _, err := c.Presence(ctx10(t), "chat:h"); err != nil {
		t.Fatal(err)
	}
	if k := kinds(fc.buffered()); len(k) != 0 {
		t.Errorf("continuous handover sent %v", k)
	}
	if sub.Resyncs() != 0 || sub.Duplicates() != 1 {
		t.Errorf("resyncs = %d, duplicates = %d; want 0, 1", sub.Resyncs(), sub.Duplicates())
	}
}

// A new epoch whose offsets start again (the owner crashed and its history is gone)
// is a gap: the re-sync cannot recover and says so.
func TestEpochRestartInLiveStreamReportsGap(t *testing.T) {
	fs, c, fc := startConnected(t, nil)
	sub, l := joinLogged(t, c, fc, "chat:x")
	fs.publish("chat:x", jsonPayload("1"), nil)
	fs.publish("chat:x", jsonPayload("2"), nil)
	l.waitFor(t, 3)
	fs.restart("e2")
	fs.publish("chat:x", jsonPayload("new"), nil) // pushed as e2/1
	expectRejoin(t, fc, "e1", 2)
	l.waitFor(t, 4) // the re-join's report: joined again, so the next push reaches us
	fs.publish("chat:x", jsonPayload("next"), nil)
	l.expect(t, "join", "e1/1", "e1/2", "join", "e2/2")
	_, joins := l.snapshot()
	if j := joins[1]; !j.Resync || !j.RecoveryAsked || j.Recovered || !j.Gap() || j.Position != (fabric.Position{Epoch: "e2", Offset: 1}) {
		t.Errorf("re-sync report = %+v, want an honest recovered=false at e2/1", j)
	}
	if sub.Resyncs() != 1 {
		t.Errorf("resyncs = %d", sub.Resyncs())
	}
}

// In a room without history nothing can be recovered: the message after the gap is
// delivered, right after a report of the gap.
func TestGapWithoutHistoryIsReported(t *testing.T) {
	fs, c, fc := startConnected(t, func(fs *fakeServer) { fs.noHistory["live:n"] = true })
	sub, l := joinLogged(t, c, fc, "live:n")
	fs.publish("live:n", jsonPayload("1"), nil)
	fs.record("live:n", jsonPayload("lost"))
	fs.publish("live:n", jsonPayload("3"), nil)
	fs.publish("live:n", jsonPayload("4"), nil)
	l.expect(t, "join", "e1/1", "join", "e1/3", "e1/4")
	if _, err := c.Presence(ctx10(t), "live:n"); err != nil {
		t.Fatal(err)
	}
	if k := kinds(fc.buffered()); len(k) != 0 {
		t.Errorf("a room without history was re-joined: %v", k)
	}
	_, joins := l.snapshot()
	if j := joins[1]; !j.Rejoin || !j.Resync || j.RecoveryAsked || j.Recovered || !j.Gap() || j.Recoverable ||
		j.Position != (fabric.Position{Epoch: "e1", Offset: 2}) {
		t.Errorf("gap report = %+v", j)
	}
	if sub.LastJoin() != joins[1] || sub.Resyncs() != 1 {
		t.Errorf("LastJoin = %+v, resyncs = %d", sub.LastJoin(), sub.Resyncs())
	}
}

// A membership the server made (a rooms claim of the token) may carry no right to
// join again, so a gap in it is repaired by reading the room's history, not by a
// leave and a join.
func TestGapInServerJoinedRoomReadsHistory(t *testing.T) {
	fs, _, fc, sub := startAtTokenRoom(t)
	fs.record("news:auto", jsonPayload("lost"))
	fs.publish("news:auto", jsonPayload("3"), nil)
	if h := fc.expect(t, "history").GetHistory(); h.GetSince().GetEpoch() != "e1" || h.GetSince().GetOffset() != 1 {
		t.Fatalf("history since %v, want e1/1", h.GetSince())
	}
	eventually(t, "the re-sync", func() bool { return sub.LastJoin().Resync })
	fs.publish("news:auto", jsonPayload("4"), nil)
	for want := uint64(2); want <= 4; want++ {
		if m := recv(t, sub); m.Pos.Offset != want {
			t.Fatalf("offset %d, want %d", m.Pos.Offset, want)
		}
	}
	if j := sub.LastJoin(); !j.Resync || !j.Rejoin || !j.Recovered || j.Missed != 2 || j.Gap() || !j.Server {
		t.Errorf("re-sync report = %+v", j)
	}
	if k := kinds(fc.buffered()); len(k) != 0 {
		t.Errorf("a server-made membership was re-joined: %v", k)
	}
}

// When the history read cannot go on from the last position (the owner crashed
// and a new epoch started), the message after the gap is delivered after a report.
func TestGapInServerJoinedRoomAfterRestartIsReported(t *testing.T) {
	fs, c, fc := startConnected(t, withTokenRoom)
	sub := tokenRoom(t, c)
	fs.publish("news:auto", jsonPayload("1"), nil)
	fs.publish("news:auto", jsonPayload("2"), nil)
	recv(t, sub)
	recv(t, sub)
	fs.restart("e2")
	fs.publish("news:auto", jsonPayload("new"), nil)
	fc.expect(t, "history")
	if m := recv(t, sub); m.Pos != (fabric.Position{Epoch: "e2", Offset: 1}) {
		t.Fatalf("got %v, want e2/1", m.Pos)
	}
	if j := sub.LastJoin(); !j.Resync || j.Recovered || !j.Gap() || j.Position != (fabric.Position{Epoch: "e2", Offset: 0}) {
		t.Errorf("gap report = %+v", j)
	}
}

// A re-sync whose connection breaks is finished by the reconnect's re-join, which
// recovers from the same position.
func TestResyncInterruptedByReconnect(t *testing.T) {
	fs, c, fc := startConnected(t, nil)
	sub, l := joinLogged(t, c, fc, "chat:i")
	fs.publish("chat:i", jsonPayload("1"), nil)
	l.waitFor(t, 2)
	fs.record("chat:i", jsonPayload("lost"))
	fs.set(func(fs *fakeServer) { fs.hold["join"] = true })
	fs.publish("chat:i", jsonPayload("3"), nil)
	fc.expect(t, "join")
	fs.set(func(fs *fakeServer) { fs.hold["join"] = false })
	fc.cut()
	fc2 := fs.next(t)
	if rf := fc2.expect(t, "join").GetJoin().GetRecoverFrom(); rf.GetOffset() != 1 {
		t.Fatalf("reconnect re-join recover_from = %v, want e1/1", rf)
	}
	l.expect(t, "join", "e1/1", "join", "e1/2", "e1/3")
	_, joins := l.snapshot()
	if j := joins[1]; !j.Rejoin || j.Resync || !j.Recovered || j.Missed != 2 {
		t.Errorf("reconnect re-join = %+v", j)
	}
	if sub.Resyncs() != 1 {
		t.Errorf("resyncs = %d", sub.Resyncs())
	}
}

// A gap across a handover (the stream went on in a new epoch) is recovered from the
// position of the old epoch; a late message of the old epoch is a duplicate.
func TestGapAcrossHandoverRecovers(t *testing.T) {
	fs, c, fc := startConnected(t, nil)
	sub, l := joinLogged(t, c, fc, "chat:m")
	fs.publish("chat:m", jsonPayload("1"), nil)
	fs.publish("chat:m", jsonPayload("2"), nil)
	l.waitFor(t, 3)
	fs.record("chat:m", jsonPayload("lost")) // e1/3, dropped as stale after the move
	fs.handOver("e2")
	fs.publish("chat:m", jsonPayload("4"), nil) // e2/4: a jump from e1/2
	expectRejoin(t, fc, "e1", 2)
	l.waitFor(t, 6)
	fc.send(pushMsg("chat:m", "e1", 3)) // the old owner's late delivery
	fs.publish("chat:m", jsonPayload("5"), nil)
	l.expect(t, "join", "e1/1", "e1/2", "join", "e1/3", "e2/4", "e2/5")
	_, joins := l.snapshot()
	if j := joins[1]; !j.Resync || !j.Recovered || j.Missed != 2 || j.Gap() {
		t.Errorf("re-sync report = %+v", j)
	}
	if sub.Resyncs() != 1 || sub.Duplicates() != 2 {
		t.Errorf("resyncs = %d, duplicates = %d; want 1, 2", sub.Resyncs(), sub.Duplicates())
	}
}

// A token room's catch-up after a reconnect reads history from a position of the
// epoch before a handover.
func TestTokenRoomCatchesUpAcrossHandover(t *testing.T) {
	fs, c, fc, auto := startAtTokenRoom(t)
	fc2 := fs.outage(t, c, fc.cut, func() {
		fs.handOver("e2")
		fs.publish("news:auto", jsonPayload("2"), nil)
		fs.publish("news:auto", jsonPayload("3"), nil)
	})
	if h := fc2.expect(t, "history").GetHistory(); h.GetSince().GetEpoch() != "e1" || h.GetSince().GetOffset() != 1 {
		t.Errorf("catch-up history since %v", h.GetSince())
	}
	for want := uint64(2); want <= 3; want++ {
		if m := recv(t, auto); m.Pos != (fabric.Position{Epoch: "e2", Offset: want}) {
			t.Fatalf("got %v, want e2/%d", m.Pos, want)
		}
	}
	if j := auto.LastJoin(); !j.Rejoin || !j.Recovered || j.Missed != 2 || j.Resync {
		t.Errorf("catch-up join %+v", j)
	}
}
