package main

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// `roomcast dev` brings up etcd and every node, each serving; cancelling drains them.
func TestDevRunsACluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and three nodes")
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 3)
	done := make(chan error, 1)
	go func() {
		done <- runDev(ctx, devPlan{nodes: 3, host: "127.0.0.1", dataDir: t.TempDir(), offset: 23000, ready: ready})
	}()
	for range 3 {
		var addr string
		select {
		case addr = <-ready:
		case err := <-done:
			t.Fatalf("dev stopped early: %v", err)
		case <-time.After(60 * time.Second):
			t.Fatal("nodes did not start")
		}
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		hctx, hcancel := context.WithTimeout(ctx, 30*time.Second)
		r, err := healthpb.NewHealthClient(cc).Check(hctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		hcancel()
		cc.Close()
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("node at %s: %v %v", addr, r, err)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("dev did not stop")
	}
}
