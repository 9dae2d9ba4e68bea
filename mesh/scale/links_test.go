package scale

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
	"github.com/roomcast/roomcast/mesh/peer"
	"google.golang.org/grpc"
)

// TestLinkMemory measures what an idle peer link costs: one hub links to K spokes
// (each with its own Links and gRPC server, all in this process), and the heap and
// stack in use, and the goroutines, are compared before and after the links are up.
// Both ends of each link live in this process, so the figure is per link, both ends.
func TestLinkMemory(t *testing.T) {
	if os.Getenv("ROOMCAST_SCALE") == "" {
		t.Skip("set ROOMCAST_SCALE=1 to run the many-node benchmark")
	}
	const k = 60
	secret := bytes.Repeat([]byte{5}, 32)
	var mu sync.Mutex
	addrs := map[string]string{}
	resolve := func(_ context.Context, id string) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if a, ok := addrs[id]; ok {
			return a, nil
		}
		return "", fmt.Errorf("unknown node %s", id)
	}
	start := func(name string) (string, *peer.Links) {
		l, err := peer.New(peer.Config{
			Cluster: cluster, Node: name, Incarnation: 1, Secrets: [][]byte{secret}, Resolve: resolve,
			Handler: peer.HandlerFunc(func(*peer.Peer, *meshv1.Envelope) {}), Logger: quiet(),
			Registerer: prometheus.NewRegistry(),
		})
		if err != nil {
			t.Fatal(err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer(peer.ServerOptions()...)
		l.Register(srv)
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(lis) }()
		t.Cleanup(func() {
			_ = l.Close()
			srv.Stop()
			<-done
		})
		id := peer.ID(name, 1)
		mu.Lock()
		addrs[id] = lis.Addr().String()
		mu.Unlock()
		return id, l
	}
	var spokes []string
	_, hub := start("hub")
	for i := range k {
		id, _ := start(fmt.Sprintf("s%02d", i))
		spokes = append(spokes, id)
	}
	measure := func() (uint64, int) {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse + ms.StackInuse, runtime.NumGoroutine()
	}
	m0, g0 := measure()
	ctx := ctxFor(t, 60*time.Second)
	for _, id := range spokes {
		if _, err := hub.Link(ctx, id); err != nil {
			t.Fatalf("link to %s: %v", id, err)
		}
	}
	m1, g1 := measure()
	t.Logf("%d idle peer links: %.1f KB of heap+stack per link (both ends), %.1f goroutines per link (both ends); %d CPUs",
		k, float64(m1-m0)/k/1024, float64(g1-g0)/k, runtime.NumCPU())
}
