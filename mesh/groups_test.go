package mesh

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/roomcast/roomcast/fabric"
)

// A consumer group with members on two nodes gets every event of a third node
// exactly once across the cluster, spread over its members; an ungrouped subscriber
// still gets every event.
func TestClusterConsumerGroupAcrossNodes(t *testing.T) {
	_, nodes := startCluster3(t)
	a, b, c := nodes[0], nodes[1], nodes[2]
	ctx := ctxT(t)
	filter := fabric.EventFilter{Types: []fabric.EventType{fabric.EventClientMessage}}
	subscribe := func(n *clusterNode, group string) fabric.EventStream {
		s, err := n.m.Subscribe(filter, group, 4096)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		return s
	}
	members := []fabric.EventStream{subscribe(a, "workers"), subscribe(b, "workers"), subscribe(b, "workers")}
	solo := subscribe(a, "")
	key := groupKey("workers", filter)
	waitUntil(t, "every node to know the group's members", func() bool {
		for _, n := range nodes {
			var buf []nodeCount
			got := n.m.hub.view.members(key, n.name, 0, buf)
			total := uint64(0)
			for _, m := range got {
				if m.node != n.name {
					total += m.n
				}
			}
			want := map[string]uint64{"a": 2, "b": 1, "c": 3}[n.name] // members on the other nodes
			if total != want {
				return false
			}
		}
		return true
	})

	const events = 300
	var mu sync.Mutex
	got := map[string]int{}
	perMember := make([]int, len(members))
	markers := make([]bool, len(members))
	var wg sync.WaitGroup
	for i, s := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ev, err := s.Next(ctx)
				if err != nil {
					return
				}
				mu.Lock()
				if strings.HasPrefix(ev.Room, "marker:") {
					markers[i] = true
				} else {
					got[ev.Room]++
					perMember[i]++
				}
				mu.Unlock()
			}
		}()
	}
	for i := range events {
		c.m.Emit(fabric.Event{Type: fabric.EventClientMessage, Room: fmt.Sprintf("room:%d", i), User: "u"})
	}
	// Markers after the events: once every member saw one, every event sent before
	// them has arrived (one ordered link per node pair).
	for i := 0; ; i++ {
		mu.Lock()
		done := markers[0] && markers[1] && markers[2]
		mu.Unlock()
		if done {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("markers did not reach every member")
		}
		c.m.Emit(fabric.Event{Type: fabric.EventClientMessage, Room: fmt.Sprintf("marker:%d", i), User: "u"})
	}
	mu.Lock()
	if len(got) != events {
		t.Errorf("the group got %d distinct events of %d", len(got), events)
	}
	for room, n := range got {
		if n != 1 {
			t.Errorf("%s reached the group %d times", room, n)
		}
	}
	for i, n := range perMember {
		if n == 0 {
			t.Errorf("member %d got no event: %v", i, perMember)
		}
	}
	t.Logf("events per member: %v", perMember)
	mu.Unlock()
	for range events {
		ev, err := solo.Next(ctx)
		if err != nil || !strings.HasPrefix(ev.Room, "room:") {
			t.Fatalf("ungrouped subscriber: %+v %v", ev, err)
		}
	}
	for _, s := range members {
		s.Close()
	}
	wg.Wait()
}
