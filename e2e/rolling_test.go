package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"

	"github.com/roomcast/roomcast/client"
	"github.com/roomcast/roomcast/fabric"
	"github.com/roomcast/roomcast/internal/etcdtest"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/testnode"
)

// rollSub is what one SDK client saw of one room.
type rollSub struct {
	mu      sync.Mutex
	seqs    []int
	pos     []fabric.Position
	joins   []client.JoinInfo
	seen    map[int]int
	problem string
}

func (s *rollSub) onMessage(m *fabric.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq, err := strconv.Atoi(string(m.Payload.Data))
	if err != nil {
		s.problem = fmt.Sprintf("payload %q", m.Payload.Data)
		return
	}
	s.seen[seq]++
	s.seqs = append(s.seqs, seq)
	s.pos = append(s.pos, m.Pos)
}

func (s *rollSub) onJoin(j client.JoinInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.joins = append(s.joins, j)
}

// A rolling restart of every node of a 3-node cluster, each stopped with SIGTERM
// (drain: shards handed over first, then clients told to reconnect) and started
// again, while a backend publishes continuously to rooms with history and SDK
// clients on every node follow them. Every acknowledged message reaches every client
// exactly once, in offset order; every re-join recovers (no gap is ever reported);
// the offsets of each room run on without a hole across all the owner changes.
func TestProcessRollingRestartLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	bin := buildRoomcast(t)
	etcd := etcdtest.Start(t)
	specs := make([]procSpec, 3)
	nodes := make([]*procNode, 3)
	for i := range specs {
		specs[i] = newProcSpec(t, i)
		specs[i].drain = 8 * time.Second
		nodes[i] = specs[i].start(t, bin, etcd.Endpoints())
	}
	waitProcCluster(t, nodes)
	var nodesMu sync.Mutex
	nodeAt := func(i int) *procNode { nodesMu.Lock(); defer nodesMu.Unlock(); return nodes[i] }

	rooms := []string{"feed:roll-0", "feed:roll-1", "feed:roll-2", "feed:roll-3"}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// One SDK client per node, following every room.
	subs := map[string][]*rollSub{}
	for i := range nodes {
		tok, err := jwtauth.Mint("HS256", "", []byte(testnode.Secret),
			jwtauth.Claims{User: fmt.Sprintf("u%d", i), Join: []string{"*"}, Read: []string{"*"}}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.New(nodes[i].wsURL, client.WithToken(tok), client.WithBackoff(20*time.Millisecond, 300*time.Millisecond),
			client.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if err := c.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		for _, room := range rooms {
			s := &rollSub{seen: map[int]int{}}
			if _, err := c.Join(ctx, room, client.WithMessageHandler(s.onMessage), client.WithJoinHandler(s.onJoin)); err != nil {
				t.Fatal(err)
			}
			subs[room] = append(subs[room], s)
		}
	}

	// The publisher: every publish is retried (same idempotency key) through the next
	// node until one acknowledges it, so every sequence number is acknowledged once.
	type ack struct {
		seq int
		pos *pb.Position
	}
	var (
		ackMu sync.Mutex
		acked = map[string][]ack{}
	)
	pubCtx, stopPub := context.WithCancel(ctx)
	pubDone := make(chan error, 1)
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		via := 0
		for seq := 1; ; seq++ {
			select {
			case <-pubCtx.Done():
				pubDone <- nil
				return
			case <-tick.C:
			}
			room := rooms[seq%len(rooms)]
			for attempt := 0; ; attempt++ {
				if pubCtx.Err() != nil {
					pubDone <- nil
					return
				}
				if attempt > 500 {
					pubDone <- fmt.Errorf("publish #%d never acknowledged", seq)
					return
				}
				rctx, rcancel := context.WithTimeout(pubCtx, 2*time.Second)
				r, err := nodeAt(via%len(nodes)).control.Publish(rctx, &pb.PublishRequest{
					Room: room, Payload: &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: strconv.Itoa(seq)}},
					IdempotencyKey: "seq-" + strconv.Itoa(seq),
				})
				rcancel()
				if err == nil {
					ackMu.Lock()
					acked[room] = append(acked[room], ack{seq, r.GetPosition()})
					ackMu.Unlock()
					break
				}
				via++ // this node is draining or down: the next one
			}
		}
	}()
	ackCount := func() int {
		ackMu.Lock()
		defer ackMu.Unlock()
		n := 0
		for _, a := range acked {
			n += len(a)
		}
		return n
	}
	waitAcks := func(n int) {
		pollUntil(t, 30*time.Second, fmt.Sprintf("%d acknowledged publishes", n), func() (bool, string) {
			got := ackCount()
			return got >= n, strconv.Itoa(got)
		})
	}
	waitAcks(40)

	// The rolling restart.
	for i := range nodes {
		old := nodeAt(i)
		stopAt := time.Now()
		if err := old.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-old.exited:
		case <-time.After(specs[i].drain + 10*time.Second):
			t.Fatalf("node %d did not exit after SIGTERM", i)
		}
		t.Logf("node %d drained and stopped in %v", i, time.Since(stopAt).Round(time.Millisecond))
		restarted := specs[i].start(t, bin, etcd.Endpoints())
		nodesMu.Lock()
		nodes[i] = restarted
		nodesMu.Unlock()
		waitProcCluster(t, []*procNode{nodeAt(0), nodeAt(1), nodeAt(2)})
		waitAcks(ackCount() + 40)
	}
	stopPub()
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}

	// Every client got every acknowledged message of every room, once, in order.
	ackMu.Lock()
	defer ackMu.Unlock()
	total := 0
	for _, room := range rooms {
		as := acked[room]
		total += len(as)
		// The room's stream: offsets run on by one across every owner change.
		for k := 1; k < len(as); k++ {
			if as[k].pos.GetOffset() != as[k-1].pos.GetOffset()+1 {
				t.Fatalf("%s: publish #%d at %v after #%d at %v: the stream has a hole", room, as[k].seq, as[k].pos, as[k-1].seq, as[k-1].pos)
			}
		}
		for ci, s := range subs[room] {
			pollUntil(t, 30*time.Second, fmt.Sprintf("client %d to have every message of %s", ci, room), func() (bool, string) {
				s.mu.Lock()
				defer s.mu.Unlock()
				missing := 0
				for _, a := range as {
					if s.seen[a.seq] == 0 {
						missing++
					}
				}
				return missing == 0, fmt.Sprintf("%d of %d missing", missing, len(as))
			})
			s.mu.Lock()
			if s.problem != "" {
				t.Fatalf("client %d, %s: %s", ci, room, s.problem)
			}
			for seq, n := range s.seen {
				if n > 1 {
					t.Fatalf("client %d, %s: publish #%d delivered %d times", ci, room, seq, n)
				}
			}
			for k := 1; k < len(s.pos); k++ {
				if s.pos[k].Offset <= s.pos[k-1].Offset {
					t.Fatalf("client %d, %s: offset %v after %v", ci, room, s.pos[k], s.pos[k-1])
				}
			}
			rejoins, resyncs := 0, 0
			for _, j := range s.joins {
				if j.Gap() {
					t.Fatalf("client %d, %s: a re-join reported a gap: %+v", ci, room, j)
				}
				if j.Rejoin && !j.Resync {
					rejoins++
				}
				if j.Resync {
					resyncs++ // a late delivery of an old owner was dropped; recovered
				}
			}
			if resyncs > 0 {
				t.Logf("client %d, %s: %d live gaps repaired by re-sync", ci, room, resyncs)
			}
			if ci < len(nodes) && rejoins == 0 {
				t.Errorf("client %d, %s: never re-joined although its node restarted", ci, room)
			}
			s.mu.Unlock()
		}
	}
	t.Logf("%d publishes to %d rooms, %d clients: nothing lost, nothing twice, no gap", total, len(rooms), len(nodes))
}
