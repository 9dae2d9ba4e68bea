package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// recoveryResult details the recover scenario: what happened to the clients of the
// killed node, and to every message.
type recoveryResult struct {
	Killed      string `json:"killed"`      // the node killed with SIGKILL
	Clients     int    `json:"clients"`     // SDK clients in all
	Marked      int    `json:"marked"`      // clients connected to the killed node at the kill
	Reconnected int    `json:"reconnected"` // of those, connected to another node in time
	Done        int    `json:"done"`        // of those, re-joined to every room in time
	Recovered   int64  `json:"rejoins_recovered"`
	Gaps        int64  `json:"rejoins_recovered_false"` // re-joins told recovered=false (any client)
	Timeout     string `json:"timeout"`

	ReconnectP50ms float64 `json:"reconnect_p50_ms"`
	ReconnectP99ms float64 `json:"reconnect_p99_ms"`
	ReconnectMaxMs float64 `json:"reconnect_max_ms"`
	// Recover* are the time from the kill until the client had re-joined every room
	// (the step's p50/p99/max are the same figures).
	RecoverP50ms float64 `json:"recover_p50_ms"`
	RecoverP99ms float64 `json:"recover_p99_ms"`
	RecoverMaxMs float64 `json:"recover_max_ms"`

	PublishFailed int64 `json:"publishes_failed"` // publishes not acknowledged as applied
	Lost          int64 `json:"lost"`             // acknowledged, never received, no recovered=false
	Announced     int64 `json:"missed_announced"` // missed in rooms told recovered=false
	Duplicates    int64 `json:"duplicates"`
	Extra         int64 `json:"extra"`  // received although their publish failed
	Unread        int64 `json:"unread"` // received with a payload other than the one published
	// LostOnKilled is the part of Lost in subscriptions of the killed node's clients.
	LostOnKilled int64 `json:"lost_on_killed_node_clients"`
	// Ended counts subscriptions that ended (a re-join failed); EndErr is one reason.
	Ended  int64  `json:"subscriptions_ended"`
	EndErr string `json:"end_err,omitempty"`
}

// ackLog records, for one publish stream, which room and sequence each request carried
// and how it was answered. The stream's reader goroutine writes answers.
type ackLog struct {
	mu     sync.Mutex
	sent   []roomSeqRef
	status []int8 // 0 no answer, 1 applied, 2 failed
}

type roomSeqRef struct {
	room int
	seq  int64
}

func (a *ackLog) add(room int, seq int64) {
	a.mu.Lock()
	a.sent = append(a.sent, roomSeqRef{room, seq})
	a.status = append(a.status, 0)
	a.mu.Unlock()
}

func (a *ackLog) ack(id uint64, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if id == 0 || id > uint64(len(a.status)) {
		return
	}
	a.status[id-1] = 1
	if err != nil {
		a.status[id-1] = 2
	}
}

// roomAcks folds the logs into one roomAck per room that was published to.
func roomAcks(logs []*ackLog) (acks []roomAck, failed int64) {
	by := map[int]*roomAck{}
	for _, l := range logs {
		l.mu.Lock()
		for i, s := range l.sent {
			a := by[s.room]
			if a == nil {
				a = &roomAck{Room: s.room}
				by[s.room] = a
			}
			a.Max = max(a.Max, s.seq)
			if l.status[i] != 1 {
				a.NotOK = append(a.NotOK, s.seq)
				failed++
			}
		}
		l.mu.Unlock()
	}
	for _, a := range by {
		acks = append(acks, *a)
	}
	slices.SortFunc(acks, func(x, y roomAck) int { return x.Room - y.Room })
	return acks, failed
}

// recoverAssign gives client j its preferred node (j mod nodes) and joins rooms
// (j·joins + t) mod rooms, t < joins: every room gets the same number of members.
func recoverAssign(clients, rooms, joins, nodes int) []sdkClientSpec {
	out := make([]sdkClientSpec, clients)
	for j := range out {
		out[j].Node = j % nodes
		for t := range min(joins, rooms) {
			out[j].Rooms = append(out[j].Rooms, (j*joins+t)%rooms)
		}
	}
	return out
}

// mergeSDK sums the workers' reports, merging their histograms.
func mergeSDK(reps []workerReply) (sdkReport, *hdrhistogram.Histogram, *hdrhistogram.Histogram) {
	var tot sdkReport
	rh, dh := newHist(), newHist()
	for _, w := range reps {
		r := w.SDK
		if r == nil {
			continue
		}
		tot.Clients += r.Clients
		tot.Connected += r.Connected
		tot.Marked += r.Marked
		tot.Reconnected += r.Reconnected
		tot.Done += r.Done
		tot.Recovered += r.Recovered
		tot.Gaps += r.Gaps
		tot.Received += r.Received
		tot.Dups += r.Dups
		tot.Lost += r.Lost
		tot.Announced += r.Announced
		tot.Extra += r.Extra
		tot.LostMarked += r.LostMarked
		tot.Ended += r.Ended
		if tot.EndErr == "" {
			tot.EndErr = r.EndErr
		}
		if tot.Stuck == "" {
			tot.Stuck = r.Stuck
		}
		if tot.FirstErr == "" {
			tot.FirstErr = r.FirstErr
		}
		if r.ReconnectHist != nil {
			rh.Merge(hdrhistogram.Import(r.ReconnectHist))
		}
		if r.RecoverHist != nil {
			dh.Merge(hdrhistogram.Import(r.RecoverHist))
		}
	}
	return tot, rh, dh
}

// recover kills one node of a local cluster while SDK clients are subscribed to
// history rooms and a publisher runs, and reports how long the killed node's clients
// took to be connected elsewhere and re-joined (recovered or told recovered=false),
// and what was lost or duplicated. It runs last: the cluster has one node fewer after.
func (r *runner) recover(ctx context.Context) ([]stepResult, error) {
	c := r.cfg
	if r.target != targetCluster {
		if r.progress != nil {
			fmt.Fprintf(r.progress, "[%s] scenario recover runs on target cluster only: skipped\n", r.target)
		}
		return nil, nil
	}
	n := len(r.nodes)
	if n < 2 || r.nodes[0].proc == nil {
		return nil, errors.New("recover: needs a cluster started with --local (it kills a node)")
	}
	kill := c.RecKill
	if kill < 0 || kill >= n {
		kill = n - 1
	}
	prefix := fmt.Sprintf("feed:bench-rec-%d-", r.nextID)
	specs := recoverAssign(c.RecClients, c.RecRooms, c.RecJoins, n)
	members := make([]int, c.RecRooms)
	for j := range specs {
		specs[j].ID = r.nextID
		specs[j].User = fmt.Sprintf("rec-%d", r.nextID)
		r.nextID++
		for _, k := range specs[j].Rooms {
			members[k]++
		}
	}
	w := len(r.pool.workers)
	parts := make([][]sdkClientSpec, w)
	for j, s := range specs {
		parts[j%w] = append(parts[j%w], s)
	}
	stop := r.startProgress(ctx, "recover connecting", func() string { return "" })
	reps, err := r.pool.all(ctx, func(i int) workerRequest {
		return workerRequest{Op: opSDKConnect, SDK: &sdkSpec{Nodes: r.dial.URLs, Secret: r.dial.Secret,
			Sources: r.dial.Sources, Prefix: prefix, Parallel: c.Parallel, Clients: parts[i]}}
	})
	stop()
	defer func() { _, _ = r.pool.broadcast(context.WithoutCancel(ctx), workerRequest{Op: opSDKClose}) }()
	if err != nil {
		return nil, err
	}
	tot, _, _ := mergeSDK(reps)
	if tot.Connected < len(specs) {
		return nil, fmt.Errorf("recover: %d of %d SDK clients connected and joined: %s", tot.Connected, len(specs), tot.FirstErr)
	}

	// Publishers: one stream through each surviving node; stream s owns the rooms
	// k with k mod streams = s, so each room's sequence stays ordered.
	var via []int
	for k := range n {
		if k != kill {
			via = append(via, k)
		}
	}
	streams := len(via)
	logs := make([]*ackLog, streams)
	pubs := make([]*grpcStream, streams)
	for s := range streams {
		logs[s] = &ackLog{}
		p, err := openGRPCStream(ctx, r.pub.at(via[s]), logs[s].ack)
		if err != nil {
			for _, q := range pubs[:s] {
				_, _, _ = q.finish(ctx)
			}
			return nil, err
		}
		pubs[s] = p
	}
	finished := false
	finishPubs := func() {
		if finished {
			return
		}
		finished = true
		fctx, cancel := context.WithTimeout(ctx, c.Tail)
		defer cancel()
		for _, p := range pubs {
			_, _, _ = p.finish(fctx)
		}
	}
	defer finishPubs() // on the error paths
	r.step++
	step := r.step
	seqs := make([]int64, c.RecRooms)
	perStream := int64(c.RecRate * c.RecDuration.Seconds() / float64(streams))
	start := time.Now().Add(20 * time.Millisecond)
	stopAt := start.Add(c.RecDuration + c.Tail)
	u0 := r.usage()

	// The killer: mark the clients of the node, then SIGKILL it.
	killed := make(chan int64, 1)
	killErr := make(chan error, 1)
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	go func() {
		realClock{}.SleepUntil(kctx, start.Add(c.RecKillAfter))
		if kctx.Err() != nil {
			killErr <- kctx.Err()
			return
		}
		if _, err := r.pool.broadcast(kctx, workerRequest{Op: opSDKMark, Query: &sdkQuery{Node: kill}}); err != nil {
			killErr <- err
			return
		}
		if err := r.nodes[kill].proc.cmd.Process.Kill(); err != nil {
			killErr <- err
			return
		}
		killed <- time.Now().UnixMicro()
	}()

	var wg sync.WaitGroup
	errs := make([]error, streams)
	for s := range streams {
		wg.Go(func() {
			var own []int
			for k := s; k < c.RecRooms; k += streams {
				own = append(own, k)
			}
			rng := rand.New(rand.NewPCG(uint64(step), uint64(s)))
			sched := schedule{start: start.Add(time.Duration(float64(s) * float64(time.Second) / c.RecRate)), rate: c.RecRate / float64(streams)}
			buf := make([]byte, 0, c.Payload+64)
			_, errs[s] = runPaced(ctx, realClock{}, sched, perStream, stopAt, func(_ int64, intended time.Time) error {
				k := own[rng.IntN(len(own))]
				seqs[k]++
				buf = appendPayload(buf[:0], stamp{t: intended.UnixMicro(), seq: seqs[k], room: int64(k), step: step}, c.Payload)
				logs[s].add(k, seqs[k])
				return pubs[s].send(prefix+fmt.Sprint(k), buf)
			})
		})
	}
	progressStop := r.startProgress(ctx, "recover", func() string { return "" })
	defer progressStop()
	var killAt int64
	select {
	case killAt = <-killed:
	case err := <-killErr:
		wg.Wait()
		return nil, fmt.Errorf("recover: kill: %w", err)
	}
	// The killed node's CPU and memory are gone from now on: server CPU is measured
	// over the survivors, from the kill.
	r.serverPIDs = slices.DeleteFunc(slices.Clone(r.serverPIDs), func(pid int) bool { return pid == r.nodes[kill].proc.cmd.Process.Pid })
	u0 = r.usage()
	if r.progress != nil {
		fmt.Fprintf(r.progress, "[%s] killed %s (SIGKILL)\n", r.target, r.nodes[kill].name)
	}

	// Wait for every marked client to recover (bounded by RecTimeout).
	query := sdkQuery{Node: kill, KillAt: killAt}
	deadline := time.UnixMicro(killAt).Add(c.RecTimeout)
	for {
		reps, err := r.pool.broadcast(ctx, workerRequest{Op: opSDKStats, Query: &query})
		if err != nil {
			wg.Wait()
			return nil, err
		}
		t, _, _ := mergeSDK(reps)
		if t.Done >= t.Marked || time.Now().After(deadline) {
			break
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			wg.Wait()
			return nil, ctx.Err()
		}
	}
	wg.Wait()
	finishPubs()
	acks, failed := roomAcks(logs)
	var expected int64
	for _, a := range acks {
		expected += (a.Max - int64(len(a.NotOK))) * int64(members[a.Room])
	}
	// Wait for the last deliveries: until all arrived, or nothing arrived for 2 s
	// (a subscription that is never coming back cannot hold the run up), bounded by
	// Tail + 10 s. A cluster under load delivers seconds late; what is still in
	// flight when this gives up counts as lost.
	var last sdkReport
	var rh, dh *hdrhistogram.Histogram
	tailEnd := time.Now().Add(c.Tail + 10*time.Second)
	progressAt, lastReceived := time.Now(), int64(-1)
	for {
		reps, err := r.pool.broadcast(ctx, workerRequest{Op: opSDKStats, Query: &query})
		if err != nil {
			return nil, err
		}
		last, rh, dh = mergeSDK(reps)
		if last.Received != lastReceived {
			progressAt, lastReceived = time.Now(), last.Received
		}
		if last.Received >= expected || time.Since(progressAt) > 2*time.Second || time.Now().After(tailEnd) {
			break
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	u1 := r.usage()
	progressStop()
	final := query
	final.Acks = acks
	reps, err = r.pool.broadcast(ctx, workerRequest{Op: opSDKStats, Query: &final})
	if err != nil {
		return nil, err
	}
	last, rh, dh = mergeSDK(reps)

	res := r.result("recover", fmt.Sprintf("kill -9 node %d", kill))
	res.Nodes = n
	res.Requested, res.Conns = len(specs), last.Connected
	res.Rooms = c.RecRooms
	res.TargetRate = c.RecRate
	for _, a := range acks {
		res.Published += a.Max
	}
	res.PublishErrors = failed
	res.Expected = expected
	res.Delivered = last.Received
	res.Lost, res.Duplicates = last.Lost, last.Dups
	res.Seconds = time.Since(start).Seconds()
	res.PublishPerSec = float64(res.Published) / c.RecDuration.Seconds()
	res.DeliveryRate = float64(res.Delivered) / res.Seconds
	res.setLatency(dh)
	r.fill(&res, u0, u1, 0) // CPU covers the kill onwards only: no per-delivery figure
	ms := func(h *hdrhistogram.Histogram, q float64) float64 {
		if h.TotalCount() == 0 {
			return 0
		}
		if q == 100 {
			return float64(h.Max()) / 1000
		}
		return float64(h.ValueAtQuantile(q)) / 1000
	}
	res.Recovery = &recoveryResult{
		Killed: r.nodes[kill].name, Clients: last.Clients, Marked: last.Marked,
		Reconnected: last.Reconnected, Done: last.Done, Recovered: last.Recovered, Gaps: last.Gaps,
		Timeout:        c.RecTimeout.String(),
		ReconnectP50ms: ms(rh, 50), ReconnectP99ms: ms(rh, 99), ReconnectMaxMs: ms(rh, 100),
		RecoverP50ms: ms(dh, 50), RecoverP99ms: ms(dh, 99), RecoverMaxMs: ms(dh, 100),
		PublishFailed: failed, Lost: last.Lost, Announced: last.Announced, Duplicates: last.Dups, Extra: last.Extra, Unread: last.Unread,
		LostOnKilled: last.LostMarked, Ended: last.Ended, EndErr: last.EndErr,
	}
	res.Note = recoveryNote(*res.Recovery)
	if last.Stuck != "" {
		res.Note += "; e.g. " + last.Stuck
	}
	if r.progress != nil {
		fmt.Fprintln(r.progress, tableRow(res))
	}
	if err := errors.Join(errs...); err != nil {
		return []stepResult{res}, fmt.Errorf("recover: publish: %w", err)
	}
	return []stepResult{res}, nil
}

// recoveryNote summarises a recovery in one line for the table's notes.
func recoveryNote(x recoveryResult) string {
	return fmt.Sprintf("latency columns = kill → every room re-joined; %d of %d clients of %s reconnected (p50 %.0f ms, p99 %.0f ms, max %.0f ms) and %d re-joined all rooms within %s; re-joins recovered=true %d, recovered=false %d; publishes failed %d; lost %d (%d on the killed node's clients), missed under recovered=false %d, duplicates %d, delivered despite a failed publish %d, payloads altered %d; subscriptions ended %d %s",
		x.Reconnected, x.Marked, x.Killed, x.ReconnectP50ms, x.ReconnectP99ms, x.ReconnectMaxMs, x.Done, x.Timeout,
		x.Recovered, x.Gaps, x.PublishFailed, x.Lost, x.LostOnKilled, x.Announced, x.Duplicates, x.Extra, x.Unread, x.Ended, x.EndErr)
}
