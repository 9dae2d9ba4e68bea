package mesh

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/roomcast/roomcast/fabric"
)

// A draining owner hands its shards over while a publisher keeps publishing through
// another node: every acknowledged publish is in the new owner's history once, the
// offsets go on without a gap across the epoch change, recovery from a position of
// the old epoch works at the new owner, idempotency keys survive, and presence too.
func TestClusterHandover(t *testing.T) {
	_, nodes := startCluster3(t)
	a, b, c := nodes[0], nodes[1], nodes[2]
	ctx := ctxT(t)
	room := roomOwnedBy(t, nodes, c, "log")
	ua := a.ci("ua", "1")
	if _, err := a.m.Join(ctx, room, ua, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.m.Join(ctx, room, c.ci("uc", "1"), nil); err != nil {
		t.Fatal(err)
	}

	var (
		mu    sync.Mutex
		acked []fabric.Position
	)
	publish := func(i int) (fabric.Position, error) {
		for {
			pos, err := a.m.Publish(ctx, fabric.Publication{Room: room, Payload: fabric.Payload{Data: []byte(strconv.Itoa(i))}, IdempotencyKey: "k" + strconv.Itoa(i)})
			if err == nil || ctx.Err() != nil || !errors.Is(err, fabric.ErrUnavailable) {
				return pos, err
			}
		}
	}
	stop := make(chan struct{})
	pubDone := make(chan error, 1)
	go func() {
		for i := 1; ; i++ {
			select {
			case <-stop:
				pubDone <- nil
				return
			default:
			}
			pos, err := publish(i)
			if err != nil {
				pubDone <- fmt.Errorf("publish %d: %w", i, err)
				return
			}
			mu.Lock()
			acked = append(acked, pos)
			mu.Unlock()
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	waitUntil(t, "publishes before the handover", func() bool { return count() >= 20 })
	start := time.Now()
	if err := c.m.HandOver(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("handover of %d shards took %v", len(c.m.shards), time.Since(start))
	before := count()
	waitUntil(t, "publishes after the handover", func() bool { return count() >= before+20 })
	close(stop)
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}

	if n := c.m.cl.smap().Current().Count()[c.m.cl.id]; n != 0 {
		t.Fatalf("drained node still owns %d shards", n)
	}
	owner := ownerOf(nodes, room)
	if owner == nil || owner == c {
		t.Fatalf("room owner after handover: %v", owner)
	}
	// One stream: offsets 1..N without a gap, exactly one epoch change.
	epochs := 0
	for i, p := range acked {
		if p.Offset != uint64(i+1) {
			t.Fatalf("publish %d acknowledged at offset %d", i+1, p.Offset)
		}
		if i > 0 && p.Epoch != acked[i-1].Epoch {
			epochs++
		}
	}
	if epochs != 1 {
		t.Fatalf("%d epoch changes along the stream, want 1", epochs)
	}
	h, err := b.m.History(ctx, room, fabric.HistoryQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Messages) != len(acked) {
		t.Fatalf("history has %d messages, %d were acknowledged", len(h.Messages), len(acked))
	}
	for i, msg := range h.Messages {
		if msg.Pos != acked[i] || string(msg.Payload.Data) != strconv.Itoa(i+1) {
			t.Fatalf("history[%d] = %v %s, acknowledged %v", i, msg.Pos, msg.Payload.Data, acked[i])
		}
	}
	// Recovery from a position of the old epoch, at the new owner.
	from := acked[5]
	res, err := b.m.Join(ctx, room, b.ci("ub", "1"), &from)
	if err != nil || !res.Recovered || len(res.Missed) != len(acked)-6 {
		t.Fatalf("recovery from %v: recovered=%v missed=%d err=%v", from, res.Recovered, len(res.Missed), err)
	}
	for i, msg := range res.Missed {
		if msg.Pos != acked[6+i] {
			t.Fatalf("missed[%d] at %v, want %v", i, msg.Pos, acked[6+i])
		}
	}
	// History since a position of the old epoch.
	h, err = b.m.History(ctx, room, fabric.HistoryQuery{Since: &from, Limit: 1000})
	if err != nil || len(h.Messages) != len(acked)-6 {
		t.Fatalf("history since %v: %d messages, %v", from, len(h.Messages), err)
	}
	// An idempotency key of the old owner still deduplicates.
	pos, err := publish(3)
	if err != nil || pos != acked[2] {
		t.Fatalf("retried publish 3: %v %v, first acknowledged at %v", pos, err, acked[2])
	}
	// Presence was rebuilt, including the drained node's still-connected member.
	ms, err := b.m.Presence(ctx, room)
	if err != nil || len(ms) != 3 {
		t.Fatalf("presence after handover: %+v %v", ms, err)
	}
	// a's member saw each message at most once, in order.
	a.edge.mu.Lock()
	got := a.edge.delivered[room]
	a.edge.mu.Unlock()
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("deliveries on a out of order or duplicated: %v", got)
		}
	}
	if len(got) < len(acked)-5 {
		t.Fatalf("a's member got %d of %d messages", len(got), len(acked))
	}
}

// Recovery positions: of the current epoch from where it began, of earlier epochs
// within their spans, nothing else.
func TestRoomOnStream(t *testing.T) {
	r := &room{offset: 30, lineage: []epochSpan{{"e1", 10}, {"e2", 20}}}
	for _, tc := range []struct {
		pos  fabric.Position
		want bool
	}{
		{fabric.Position{Epoch: "e1", Offset: 0}, true},
		{fabric.Position{Epoch: "e1", Offset: 10}, true},
		{fabric.Position{Epoch: "e1", Offset: 11}, false},
		{fabric.Position{Epoch: "e2", Offset: 9}, false},
		{fabric.Position{Epoch: "e2", Offset: 10}, true},
		{fabric.Position{Epoch: "e2", Offset: 20}, true},
		{fabric.Position{Epoch: "e3", Offset: 19}, false},
		{fabric.Position{Epoch: "e3", Offset: 20}, true},
		{fabric.Position{Epoch: "e3", Offset: 30}, true},
		{fabric.Position{Epoch: "e3", Offset: 31}, false},
		{fabric.Position{Epoch: "zz", Offset: 25}, false},
	} {
		if got := r.onStream(tc.pos, "e3"); got != tc.want {
			t.Errorf("onStream(%v) = %v, want %v", tc.pos, got, tc.want)
		}
	}
}

// Other nodes dial the advertised host with the listener's port; a listener on every
// interface is recognised so that gossip's address replaces its host.
func TestAdvertisedPeerAddress(t *testing.T) {
	for _, tc := range []struct{ addr, host, want string }{
		{"[::]:7947", "10.1.2.3", "10.1.2.3:7947"},
		{"127.0.0.1:7947", "", "127.0.0.1:7947"},
		{"[::]:7947", "", "[::]:7947"},
		{"0.0.0.0:7947", "node-a.internal", "node-a.internal:7947"},
	} {
		if got := advertised(tc.addr, tc.host); got != tc.want {
			t.Errorf("advertised(%q, %q) = %q, want %q", tc.addr, tc.host, got, tc.want)
		}
	}
	for host, want := range map[string]bool{"": true, "::": true, "0.0.0.0": true, "127.0.0.1": false, "10.0.0.1": false, "example.com": false} {
		if got := unspecified(host); got != want {
			t.Errorf("unspecified(%q) = %v", host, got)
		}
	}
}
