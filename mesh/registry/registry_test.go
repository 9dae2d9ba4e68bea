package registry

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/roomcast/roomcast/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const waitFor = 15 * time.Second

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

func register(t *testing.T, c *clientv3.Client, cluster, id string) *Registry {
	t.Helper()
	r, err := New(ctxFor(t), Config{
		Client: c, Cluster: cluster, TTL: 5,
		Node:   Node{ID: id, GossipAddr: "127.0.0.1:" + id, PeerAddr: "peer-" + id, Version: "test"},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func nodeIDs(ns []Node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.ID)
	}
	return out
}

func TestRegisterListWatch(t *testing.T) {
	s := etcdtest.Start(t)
	ctx := ctxFor(t)
	wctx, wcancel := context.WithCancel(ctx)
	t.Cleanup(wcancel)
	updates := Watch(wctx, s.Client(), "c1")

	waitList := func(want ...string) {
		t.Helper()
		for {
			select {
			case nodes := <-updates:
				if slices.Equal(nodeIDs(nodes), want) {
					return
				}
			case <-ctx.Done():
				t.Fatalf("watch never listed %v", want)
			}
		}
	}
	waitList()

	a := register(t, s.Client(), "c1", "a.1")
	b := register(t, s.NewClient(t), "c1", "b.1")
	register(t, s.Client(), "other", "x.1") // another cluster is invisible
	waitList("a.1", "b.1")

	nodes, _, err := List(ctx, s.Client(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || nodes[1].PeerAddr != "peer-b.1" || nodes[1].Lease != b.Session().Lease() {
		t.Fatalf("list = %+v", nodes)
	}
	addrs, err := Discoverer(s.Client(), "c1")(ctx)
	if err != nil || !slices.Equal(addrs, []string{"127.0.0.1:a.1", "127.0.0.1:b.1"}) {
		t.Fatalf("discover = %v, %v", addrs, err)
	}

	if err := a.Update(ctx, Node{ID: "a.1", PeerAddr: "moved"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	waitList("b.1")
	select {
	case <-a.Lost():
	default:
		t.Fatal("Lost not closed after Close")
	}
	wcancel()
	for range updates {
	}
}

func TestDuplicateIDRefused(t *testing.T) {
	s := etcdtest.Start(t)
	register(t, s.Client(), "c", "n.1")
	_, err := New(ctxFor(t), Config{Client: s.Client(), Cluster: "c", Node: Node{ID: "n.1"}})
	if !errors.Is(err, ErrAlreadyRegistered) {
		t.Fatalf("second registration: %v, want ErrAlreadyRegistered", err)
	}
}

func TestNewValidates(t *testing.T) {
	s := etcdtest.Start(t)
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no client", Config{Cluster: "c", Node: Node{ID: "a"}}},
		{"no cluster", Config{Client: s.Client(), Node: Node{ID: "a"}}},
		{"slash in cluster", Config{Client: s.Client(), Cluster: "a/b", Node: Node{ID: "a"}}},
		{"no id", Config{Client: s.Client(), Cluster: "c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r, err := New(ctxFor(t), tt.cfg); err == nil {
				r.Close()
				t.Fatal("New succeeded")
			}
		})
	}
}

// TestFencingOnRevoke checks that a node whose lease a peer revokes (the leader acting
// on memberlist's verdict) learns it at once, well before its TTL or next keep-alive.
func TestFencingOnRevoke(t *testing.T) {
	s := etcdtest.Start(t)
	victim := register(t, s.NewClient(t), "c", "victim.1")
	peer := s.Client()

	start := time.Now()
	if err := Revoke(ctxFor(t), peer, "c", "victim.1"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-victim.Lost():
		t.Logf("registration loss reported %v after the revoke (TTL 5 s)", time.Since(start))
	case <-time.After(waitFor):
		t.Fatal("Lost not closed after the lease was revoked")
	}
	// Revoking again (or a node never registered) is harmless.
	if err := Revoke(ctxFor(t), peer, "c", "victim.1"); err != nil {
		t.Fatal(err)
	}
	if err := victim.Update(ctxFor(t), Node{ID: "victim.1"}); err == nil {
		t.Fatal("update after the registration was revoked succeeded")
	}
}

// TestFencingOnEtcdLoss checks that a node cut off from etcd reports the loss once its
// lease can no longer be kept alive.
func TestFencingOnEtcdLoss(t *testing.T) {
	s := etcdtest.Start(t)
	r, err := New(ctxFor(t), Config{Client: s.NewClient(t), Cluster: "c", TTL: 1, Node: Node{ID: "n.1"},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	start := time.Now()
	s.Stop()
	select {
	case <-r.Lost():
		t.Logf("registration loss reported %v after etcd stopped (TTL 1 s)", time.Since(start))
	case <-time.After(waitFor):
		t.Fatal("Lost not closed after etcd went away")
	}
}
