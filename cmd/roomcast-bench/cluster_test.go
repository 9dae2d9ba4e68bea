package main

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestValidateTargets(t *testing.T) {
	scen := map[string]func(*runner, context.Context) ([]stepResult, error){"fanout": nil, "recover": nil}
	for k := range scen {
		scen[k] = func(*runner, context.Context) ([]stepResult, error) { return nil, nil }
	}
	cases := []struct {
		name string
		o    runOptions
		bad  string // substring of the error; empty: valid
	}{
		{"local cluster", runOptions{targets: []string{"roomcast", "cluster"}, scenarios: []string{"fanout", "recover"}, local: true, nodes: 3}, ""},
		{"one-node cluster", runOptions{targets: []string{"cluster"}, scenarios: []string{"fanout"}, local: true, nodes: 1}, "at least 2"},
		{"running cluster", runOptions{targets: []string{"cluster"}, scenarios: []string{"fanout"},
			clusterURLs: []string{"ws://a/ws", "ws://b/ws"}, clusterControls: []string{"a:1", "b:1"}}, ""},
		{"running cluster, controls missing", runOptions{targets: []string{"cluster"}, scenarios: []string{"fanout"},
			clusterURLs: []string{"ws://a/ws", "ws://b/ws"}, clusterControls: []string{"a:1"}}, "--cluster-control"},
		{"recover needs local", runOptions{targets: []string{"cluster"}, scenarios: []string{"recover"},
			clusterURLs: []string{"ws://a/ws", "ws://b/ws"}, clusterControls: []string{"a:1", "b:1"}}, "--local"},
		{"socketio2 without urls", runOptions{targets: []string{"socketio2"}, scenarios: []string{"fanout"}}, "--socketio2-url"},
		{"unknown target", runOptions{targets: []string{"nats"}, scenarios: []string{"fanout"}}, "unknown target"},
		{"unknown scenario", runOptions{targets: []string{"roomcast"}, scenarios: []string{"soak"}}, "unknown scenario"},
		{"no target", runOptions{scenarios: []string{"fanout"}}, "no target"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.o.validate(scen)
			switch {
			case c.bad == "" && err != nil:
				t.Fatalf("valid options refused: %v", err)
			case c.bad != "" && (err == nil || !strings.Contains(err.Error(), c.bad)):
				t.Fatalf("got %v, want an error about %q", err, c.bad)
			}
		})
	}
}

func TestRunFlagsParse(t *testing.T) {
	cmd := runCommand()
	err := cmd.ParseFlags([]string{"--targets", "roomcast,cluster", "--nodes", "3", "--scenarios", "recover,fanout",
		"--cluster-url", "ws://a/ws,ws://b/ws", "--recover-clients", "90", "--recover-kill", "1"})
	if err != nil {
		t.Fatal(err)
	}
	f := cmd.Flags()
	targets, _ := f.GetStringSlice("targets")
	urls, _ := f.GetStringSlice("cluster-url")
	clients, _ := f.GetInt("recover-clients")
	kill, _ := f.GetInt("recover-kill")
	if !slices.Equal(targets, []string{"roomcast", "cluster"}) || len(urls) != 2 || clients != 90 || kill != 1 {
		t.Fatalf("parsed targets %v urls %v clients %d kill %d", targets, urls, clients, kill)
	}
	if got := orderScenarios([]string{"recover", "fanout", "rooms"}); !slices.Equal(got, []string{"fanout", "rooms", "recover"}) {
		t.Fatalf("recover must run last: %v", got)
	}
}

func TestSpreadOverNodes(t *testing.T) {
	d := dialSpec{URL: "ws://one/ws"}
	if d.urlFor(5) != "ws://one/ws" {
		t.Fatal("a single-node spec must always dial its URL")
	}
	d.URLs = []string{"ws://a/ws", "ws://b/ws", "ws://c/ws"}
	count := map[string]int{}
	for i := range 30 {
		count[d.urlFor(i)]++
	}
	if len(count) != 3 || count["ws://a/ws"] != 10 || count["ws://c/ws"] != 10 {
		t.Fatalf("connections not spread evenly: %v", count)
	}
	p := pubSpec{Control: "x:1", Controls: []string{"a:1", "b:1", "c:1"}}
	if p.at(0).Control != "a:1" || p.at(4).Control != "b:1" || p.nodes() != 3 {
		t.Fatalf("stream placement: %v %v %d", p.at(0), p.at(4), p.nodes())
	}
	if (pubSpec{Control: "x:1"}).at(7).Control != "x:1" {
		t.Fatal("a single-node spec must always publish through its node")
	}
}

func TestCompareSteps(t *testing.T) {
	steps := []stepResult{
		{Target: "roomcast", Scenario: "fanout", Step: "100 msg/s", Delivered: 10, P50ms: 1, P99ms: 4, P999ms: 6},
		{Target: "roomcast", Scenario: "rooms", Step: "5000 pub/s", Delivered: 10, P99ms: 3},
		{Target: "cluster", Scenario: "fanout", Step: "100 msg/s", Delivered: 10, P50ms: 2, P99ms: 4.5, P999ms: 9, Nodes: 3, ViaNonOwner: 1},
		{Target: "cluster", Scenario: "fanout", Step: "500 msg/s", Delivered: 10, P99ms: 8}, // no baseline step
		{Target: "cluster", Scenario: "idle", Step: "100 conns"},                            // no latency
		{Target: "socketio", Scenario: "fanout", Step: "100 msg/s", Delivered: 10, P99ms: 20},
		{Target: "socketio2", Scenario: "fanout", Step: "100 msg/s", Delivered: 10, P99ms: 25},
	}
	got := compareSteps(steps)
	if len(got) != 2 {
		t.Fatalf("%d comparisons, want 2 (cluster and socketio2 fanout 100): %+v", len(got), got)
	}
	c := got[0]
	if c.Baseline != "roomcast" || c.Cluster != "cluster" || c.BaseP99ms != 4 || c.P99ms != 4.5 || c.P99DeltaMs != 0.5 || c.Nodes != 3 || c.ViaNonOwner != 1 {
		t.Fatalf("cluster comparison: %+v", c)
	}
	if got[1].Baseline != "socketio" || got[1].P99DeltaMs != 5 {
		t.Fatalf("socketio2 comparison: %+v", got[1])
	}
	var b strings.Builder
	writeComparison(&b, got)
	if !strings.Contains(b.String(), "+0.50") {
		t.Fatalf("table lacks the p99 difference:\n%s", b.String())
	}
}

func TestAccountRoom(t *testing.T) {
	var got bitset
	for _, s := range []int64{1, 2, 3, 5, 6, 8} {
		got.add(s)
	}
	if got.add(3) {
		t.Fatal("a second copy must not be added")
	}
	if got.count() != 6 || !got.has(8) || got.has(7) || got.has(700) {
		t.Fatal("bitset membership")
	}
	// 1..8 sent; 6 and 7 failed: 4 is missing (lost); 6 arrived anyway (extra); 7 is
	// not owed.
	missing, extra := accountRoom(got, 8, []int64{6, 7})
	if missing != 1 || extra != 1 {
		t.Fatalf("missing %d extra %d, want 1 and 1", missing, extra)
	}
	if m, e := accountRoom(nil, 3, nil); m != 3 || e != 0 {
		t.Fatalf("nothing received of 3: missing %d extra %d", m, e)
	}
}

func TestRecoveryOf(t *testing.T) {
	const kill = 1_000_000
	cases := []struct {
		name                   string
		r                      clientRecord
		reconnected, done      bool
		reconnectUs, recoverUs int64
	}{
		{"still on the dead node", clientRecord{connected: true, node: 2, connectedAt: 10}, false, false, 0, 0},
		{"disconnected", clientRecord{connected: false, node: 0, connectedAt: kill + 5}, false, false, 0, 0},
		{"connected before the kill only", clientRecord{connected: true, node: 0, connectedAt: kill - 5}, false, false, 0, 0},
		{"reconnected, one room not re-joined", clientRecord{connected: true, node: 0, connectedAt: kill + 400_000,
			rejoins: []int64{kill + 410_000, 0}}, true, false, 400_000, 0},
		{"recovered", clientRecord{connected: true, node: 1, connectedAt: kill + 400_000,
			rejoins: []int64{kill + 450_000, kill + 420_000}}, true, true, 400_000, 450_000},
		{"no rooms", clientRecord{connected: true, node: 0, connectedAt: kill + 300}, true, true, 300, 300},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc, d, ru, du := recoveryOf(c.r, 2, kill)
			if rc != c.reconnected || d != c.done || ru != c.reconnectUs || du != c.recoverUs {
				t.Fatalf("got %v %v %d %d, want %v %v %d %d", rc, d, ru, du, c.reconnected, c.done, c.reconnectUs, c.recoverUs)
			}
		})
	}
}

func TestRecoverAccounting(t *testing.T) {
	specs := recoverAssign(6, 4, 2, 3)
	members := make([]int, 4)
	for j, s := range specs {
		if s.Node != j%3 || len(s.Rooms) != 2 {
			t.Fatalf("client %d: %+v", j, s)
		}
		for _, k := range s.Rooms {
			members[k]++
		}
	}
	if !slices.Equal(members, []int{3, 3, 3, 3}) {
		t.Fatalf("rooms unevenly joined: %v", members)
	}

	a, b := &ackLog{}, &ackLog{}
	a.add(0, 1)
	a.add(0, 2)
	a.add(2, 1)
	b.add(1, 1)
	a.ack(1, nil)
	a.ack(2, errors.New("unavailable"))
	// a's third publish is never answered.
	b.ack(1, nil)
	b.ack(9, nil) // unknown ids are ignored
	acks, failed := roomAcks([]*ackLog{a, b})
	want := []roomAck{{Room: 0, Max: 2, NotOK: []int64{2}}, {Room: 1, Max: 1}, {Room: 2, Max: 1, NotOK: []int64{1}}}
	if failed != 2 || len(acks) != len(want) {
		t.Fatalf("acks %+v failed %d", acks, failed)
	}
	for i := range want {
		if acks[i].Room != want[i].Room || acks[i].Max != want[i].Max || !slices.Equal(acks[i].NotOK, want[i].NotOK) {
			t.Fatalf("room %d: %+v, want %+v", i, acks[i], want[i])
		}
	}

	// Merging workers' reports sums counts and histograms.
	h := newHist()
	_ = h.RecordValue(1000)
	reps := []workerReply{
		{SDK: &sdkReport{Clients: 3, Marked: 1, Done: 1, Lost: 2, RecoverHist: h.Export()}},
		{SDK: &sdkReport{Clients: 3, Marked: 2, Done: 1, Dups: 1, RecoverHist: h.Export()}},
		{},
	}
	tot, _, dh := mergeSDK(reps)
	if tot.Clients != 6 || tot.Marked != 3 || tot.Done != 2 || tot.Lost != 2 || tot.Dups != 1 || dh.TotalCount() != 2 {
		t.Fatalf("merged %+v, %d recover samples", tot, dh.TotalCount())
	}
}

func TestNodeProcs(t *testing.T) {
	if got := nodeProcs(0, 3); got != 0 {
		t.Errorf("0 (Go's default) became %d", got)
	}
	if got := nodeProcs(4, 3); got != 4 {
		t.Errorf("an explicit 4 became %d", got)
	}
	want := max(1, runtime.NumCPU()/3)
	if got := nodeProcs(-1, 3); got != want {
		t.Errorf("auto for 3 nodes = %d, want %d", got, want)
	}
	if got := nodeProcs(-1, 1000); got != 1 {
		t.Errorf("auto for 1000 nodes = %d, want 1", got)
	}
}
