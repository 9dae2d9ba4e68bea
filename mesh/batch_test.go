package mesh

import (
	"errors"
	"strconv"
	"testing"

	"github.com/roomcast/roomcast/fabric"
)

// A batch published through a node that owns neither room keeps each room's order,
// answers every publication (an invalid one with its own error), and the members on
// a third node get every message in that order; the same through the owner itself.
func TestClusterPublishBatch(t *testing.T) {
	_, nodes := startCluster3(t)
	a, b, c := nodes[0], nodes[1], nodes[2]
	ctx := ctxT(t)
	r1, r2 := roomOwnedBy(t, nodes, b, "chat"), roomOwnedBy(t, nodes, c, "log")
	for _, room := range []string{r1, r2} {
		if _, err := a.m.Join(ctx, room, a.ci("u", "1"), nil); err != nil {
			t.Fatal(err)
		}
	}
	var ps []fabric.Publication
	for i := range 40 {
		room := r1
		if i%3 == 0 {
			room = r2
		}
		ps = append(ps, fabric.Publication{Room: room, Payload: fabric.Payload{Data: []byte(strconv.Itoa(i))}})
	}
	ps[7].Payload.Data = []byte(`{not json`)
	for _, via := range []*clusterNode{a, b} { // a owns neither room; b owns r1
		pos, errs := via.m.PublishBatch(ctx, ps)
		last := map[string]uint64{}
		for i, p := range ps {
			if i == 7 {
				if !errors.Is(errs[i], fabric.ErrBadRequest) {
					t.Fatalf("via %s: invalid payload: %v", via.name, errs[i])
				}
				continue
			}
			if errs[i] != nil {
				t.Fatalf("via %s: publish %d: %v", via.name, i, errs[i])
			}
			if l, ok := last[p.Room]; ok && pos[i].Offset != l+1 {
				t.Fatalf("via %s: publish %d to %s at offset %d after %d", via.name, i, p.Room, pos[i].Offset, l)
			}
			last[p.Room] = pos[i].Offset
		}
	}
	// a's member got both rooms' messages in offset order, each once.
	waitUntil(t, "deliveries on a", func() bool {
		return len(a.edge.offsets(r1))+len(a.edge.offsets(r2)) == 2*(len(ps)-1)
	})
	for _, room := range []string{r1, r2} {
		got := a.edge.offsets(room)
		for i := 1; i < len(got); i++ {
			if got[i] != got[i-1]+1 {
				t.Fatalf("%s delivered %v", room, got)
			}
		}
	}
}
