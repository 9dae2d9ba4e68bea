package etcdtest

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestStartPutGet(t *testing.T) {
	begin := time.Now()
	s := Start(t)
	t.Logf("embedded etcd started in %v at %v", time.Since(begin), s.Endpoints())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	if _, err := s.Client().Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	c := s.NewClient(t)
	resp, err := c.Get(ctx, "k")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("get k = %v, want v", resp.Kvs)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
}

func TestTwoServersAreIndependent(t *testing.T) {
	a, b := Start(t), Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	if _, err := a.Client().Put(ctx, "only-a", "1"); err != nil {
		t.Fatalf("put: %v", err)
	}
	resp, err := b.Client().Get(ctx, "only-a")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if len(resp.Kvs) != 0 {
		t.Fatalf("server b sees server a's key")
	}
}

func TestStopIsIdempotentAndStops(t *testing.T) {
	s, err := StartServer()
	if err != nil {
		t.Fatal(err)
	}
	s.Stop()
	s.Stop()
	c, err := s.dial()
	if err != nil {
		return // refusing to dial is fine too
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	t.Cleanup(cancel)
	if _, err := c.Get(ctx, "k"); err == nil {
		t.Fatal("get after Stop succeeded")
	}
}
