package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/roomcast/roomcast/internal/app"
	"github.com/roomcast/roomcast/internal/testnode"
)

// TestEndToEnd runs every scenario briefly, small, against an in-process node, with
// real worker processes (this test binary re-executed). It checks the accounting a
// user relies on: every connection held, every delivery counted once, nothing lost.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts worker processes and a node")
	}
	n := startBenchNode(t, 10*time.Minute, 0)
	p, err := startPool(2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	r := &runner{
		cfg: scenarioConfig{
			Workers: 2, Parallel: 8, Payload: 64, Step: time.Second, Tail: 5 * time.Second, P99Limit: time.Minute,
			IdleConns: 40, IdleSettle: 10 * time.Millisecond,
			FanMembers: 20, FanRates: []int{50, 100},
			RoomsConns: 30, RoomsCount: 30, RoomsSize: 3, RoomsDist: "uniform", RoomsRates: []int{200}, RoomsStreams: 2,
			ChurnConns: 10, ChurnRate: 20, ChurnDuration: 500 * time.Millisecond,
			PubDuration: 300 * time.Millisecond, PubConcurrency: 4, PubWindow: 64,
		},
		target:     targetRoomcast,
		dial:       dialSpec{Target: targetRoomcast, URL: n.WSURL, Secret: testnode.Secret, Sources: 2},
		pub:        pubSpec{Target: targetRoomcast, Control: n.ControlAddr, Token: n.ControlToken},
		serverPIDs: []int{os.Getpid()},
		pool:       p,
		progress:   io.Discard,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)

	t.Run("idle", func(t *testing.T) {
		res, err := r.idle(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 1 || res[0].Conns != 40 || res[0].Requested != 40 {
			t.Fatalf("idle held %+v, want 40 of 40", res)
		}
		if res[0].ServerRSSBytes <= 0 {
			t.Fatalf("no server RSS sampled: %+v", res[0])
		}
	})
	deliveries := func(t *testing.T, res []stepResult, steps int) {
		t.Helper()
		if len(res) != steps {
			t.Fatalf("%d steps, want %d: %+v", len(res), steps, res)
		}
		for _, s := range res {
			if s.Published == 0 || s.Expected == 0 || s.Delivered != s.Expected {
				t.Fatalf("step %s: published %d, delivered %d of %d expected", s.Step, s.Published, s.Delivered, s.Expected)
			}
			if s.Lost != 0 || s.Duplicates != 0 || s.Gaps != 0 || s.PublishErrors != 0 {
				t.Fatalf("step %s: lost %d dup %d gaps %d errors %d (%s)", s.Step, s.Lost, s.Duplicates, s.Gaps, s.PublishErrors, s.Note)
			}
			if s.P50ms <= 0 || s.MaxMs < s.P99ms || len(s.Percentiles) == 0 {
				t.Fatalf("step %s: latency not recorded: %+v", s.Step, s)
			}
			// A message's latency includes its publisher's lag, so the lag's p99 is
			// at most the largest latency.
			if s.SendLagP99ms <= 0 || s.SendLagP99ms > s.MaxMs || s.LateAfterTail != 0 {
				t.Fatalf("step %s: publisher lag p99 %v ms (max latency %v ms), late after tail %d", s.Step, s.SendLagP99ms, s.MaxMs, s.LateAfterTail)
			}
		}
	}
	t.Run("fanout", func(t *testing.T) {
		res, err := r.fanout(ctx)
		if err != nil {
			t.Fatal(err)
		}
		deliveries(t, res, 2)
		if res[0].Conns != 20 || res[0].Expected != res[0].Published*20 {
			t.Fatalf("fanout: %d conns, %d expected for %d published; want 20 members each", res[0].Conns, res[0].Expected, res[0].Published)
		}
	})
	t.Run("rooms", func(t *testing.T) {
		res, err := r.manyRooms(ctx)
		if err != nil {
			t.Fatal(err)
		}
		deliveries(t, res, 1)
		if res[0].Expected != res[0].Published*3 {
			t.Fatalf("rooms of 3: %d expected for %d published", res[0].Expected, res[0].Published)
		}
	})
	t.Run("churn", func(t *testing.T) {
		res, err := r.churn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 1 || res[0].Published != 10 || res[0].PublishErrors != 0 || res[0].Conns != 10 {
			t.Fatalf("churn: %+v; want 10 replacements, 10 connections still held", res)
		}
	})
	t.Run("publish", func(t *testing.T) {
		res, err := r.publishThroughput(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 2 || res[0].Published == 0 || res[1].Published == 0 || res[0].PublishErrors+res[1].PublishErrors != 0 {
			t.Fatalf("publish: %+v", res)
		}
	})
	t.Run("sdk clients", func(t *testing.T) {
		// The recover scenario's plumbing without the kill: SDK clients in the workers
		// join history rooms, a stream publishes, and the accounting finds every
		// acknowledged message received once.
		specs := recoverAssign(8, 4, 2, 1)
		for j := range specs {
			specs[j].ID, specs[j].User = 1000+j, fmt.Sprintf("sdk-%d", j)
		}
		defer func() { _, _ = p.broadcast(ctx, workerRequest{Op: opSDKClose}) }()
		reps, err := p.all(ctx, func(i int) workerRequest {
			var mine []sdkClientSpec
			for j, s := range specs {
				if j%2 == i {
					mine = append(mine, s)
				}
			}
			return workerRequest{Op: opSDKConnect, SDK: &sdkSpec{Nodes: []string{n.WSURL}, Secret: testnode.Secret,
				Sources: 2, Prefix: "news:e2e-", Parallel: 4, Clients: mine}}
		})
		if err != nil {
			t.Fatal(err)
		}
		if tot, _, _ := mergeSDK(reps); tot.Connected != 8 || tot.FirstErr != "" {
			t.Fatalf("%d of 8 SDK clients connected: %s", tot.Connected, tot.FirstErr)
		}
		log := &ackLog{}
		g, err := openGRPCStream(ctx, r.pub, log.ack)
		if err != nil {
			t.Fatal(err)
		}
		for seq := int64(1); seq <= 5; seq++ {
			for k := range 4 {
				log.add(k, seq)
				if err := g.send(fmt.Sprintf("news:e2e-%d", k), appendPayload(nil, stamp{t: time.Now().UnixMicro(), seq: seq, room: int64(k)}, 64)); err != nil {
					t.Fatal(err)
				}
			}
		}
		if ok, bad, err := g.finish(ctx); ok != 20 || bad != 0 {
			t.Fatalf("publishes acknowledged %d, failed %d (%v)", ok, bad, err)
		}
		acks, failed := roomAcks([]*ackLog{log})
		if failed != 0 || len(acks) != 4 {
			t.Fatalf("acks %+v, failed %d", acks, failed)
		}
		q := &sdkQuery{Node: -1, Acks: acks}
		var tot sdkReport
		for deadline := time.Now().Add(30 * time.Second); ; {
			reps, err := p.broadcast(ctx, workerRequest{Op: opSDKStats, Query: q})
			if err != nil {
				t.Fatal(err)
			}
			if tot, _, _ = mergeSDK(reps); tot.Received == 8*2*5 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond) // polling a condition; the deadline bounds it
		}
		if tot.Received != 80 || tot.Lost != 0 || tot.Dups != 0 || tot.Extra != 0 || tot.Marked != 0 {
			t.Fatalf("SDK clients: %+v; want 80 received, nothing lost or duplicated", tot)
		}
	})
	t.Run("report", func(t *testing.T) {
		var out []stepResult
		rep := report{Steps: append(out, stepResult{Target: targetRoomcast, Scenario: "fanout", Step: "1",
			Percentiles: []percentile{{0, 0.1}, {50, 1}, {99, 5}, {100, 9}}})}
		f, err := os.Create(t.TempDir() + "/x.svg")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := writeSVG(f, rep); err != nil {
			t.Fatal(err)
		}
	})
}

// startBenchNode starts an in-process node with the load-test limits roomcast-bench
// --local gives its nodes, pinging every ping (pong timeout pong; 0: the default).
func startBenchNode(t *testing.T, ping, pong time.Duration) *testnode.Node {
	t.Helper()
	return testnode.Start(t, testnode.Options{Configure: func(c *app.Config) {
		c.MaxConnsPerUser = 0
		c.ConnectRate = 100000
		c.PingInterval = ping
		if pong > 0 {
			c.PongTimeout = pong
		}
	}})
}
