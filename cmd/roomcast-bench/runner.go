package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// scenarioConfig holds every scenario's knobs (from flags).
type scenarioConfig struct {
	Workers  int           // worker processes
	Parallel int           // connects in flight per worker
	Payload  int           // payload bytes
	Step     time.Duration // publishing time per step
	Tail     time.Duration // longest wait for a step's last deliveries
	P99Limit time.Duration // fan-out stops rising once p99 passes this

	IdleConns  int
	IdleSettle time.Duration

	FanMembers  int
	FanRates    []int
	FanViaOwner bool // cluster: publish through the room's owner instead of another node

	RoomsConns   int
	RoomsCount   int
	RoomsSize    int
	RoomsDist    string // uniform or random
	RoomsRates   []int
	RoomsStreams int

	ChurnConns    int
	ChurnRate     float64
	ChurnDuration time.Duration

	PubDuration    time.Duration
	PubConcurrency int
	PubWindow      int

	RecClients   int           // recover: SDK clients
	RecRooms     int           // recover: history rooms
	RecJoins     int           // recover: rooms per client
	RecRate      float64       // recover: publishes per second
	RecDuration  time.Duration // recover: publishing time
	RecKillAfter time.Duration // recover: kill this long after publishing starts
	RecTimeout   time.Duration // recover: longest wait for the clients to recover
	RecKill      int           // recover: node index to kill; < 0 for the last
}

// runner runs scenarios against one target. It is used from one goroutine; the
// goroutines it starts (publishers, progress) end before each method returns.
type runner struct {
	cfg        scenarioConfig
	target     string
	dial       dialSpec
	pub        pubSpec
	serverPIDs []int
	pool       *pool
	progress   io.Writer     // live progress lines (stderr); nil for none
	nextID     int           // next connection id (unique within the run)
	step       int64         // last step number used
	nodes      []clusterNode // the target's nodes, when known (kill, pprof)
	pprofDir   string        // save a CPU profile per node and publishing step here
	// pubBase is the node the first publish stream goes through (stream s uses node
	// pubBase+s); fanout sets it to a node that does not own the room.
	pubBase int
	// owners maps a room to the node index that owns it, for the step being run (a
	// cluster target); nil when unknown.
	owners map[string]int
}

// connectAll spreads specs over the workers (spec k to worker k mod W) and opens them.
func (r *runner) connectAll(ctx context.Context, label string, specs []connSpec) (held int, failed map[int]bool, firstErr string, err error) {
	w := len(r.pool.workers)
	parts := make([][]connSpec, w)
	for k, s := range specs {
		parts[k%w] = append(parts[k%w], s)
	}
	stop := r.startProgress(ctx, label+" connecting", func() string { return "" })
	reps, err := r.pool.all(ctx, func(i int) workerRequest {
		return workerRequest{Op: opConnect, Dial: r.dial, Conns: parts[i], Parallel: r.cfg.Parallel}
	})
	stop()
	if err != nil {
		return 0, nil, "", err
	}
	failed = map[int]bool{}
	for _, rep := range reps {
		held += rep.Held
		for _, id := range rep.FailedIDs {
			failed[id] = true
		}
		if firstErr == "" {
			firstErr = rep.FirstErr
		}
	}
	return held, failed, firstErr, nil
}

func (r *runner) newSpecs(n int, prefix string, rooms func(k int) []string) []connSpec {
	specs := make([]connSpec, n)
	for k := range specs {
		specs[k] = connSpec{ID: r.nextID, User: fmt.Sprintf("%s-%d", prefix, r.nextID)}
		if rooms != nil {
			specs[k].Rooms = rooms(k)
		}
		r.nextID++
	}
	return specs
}

func (r *runner) closeAll(ctx context.Context) error {
	_, err := r.pool.broadcast(ctx, workerRequest{Op: opClose})
	return err
}

// settleLate counts, for each publishing step of res, the deliveries that came after
// its accounting closed (they are in Lost, but were late rather than lost), and says
// so in the step's note. Call it before the scenario's connections close.
func (r *runner) settleLate(ctx context.Context, res []stepResult) error {
	_, _, _, tot, _, err := r.stats(ctx, false)
	if err != nil {
		return err
	}
	for i := range res {
		if n := tot.LateBy[res[i].stepID]; res[i].stepID != 0 && n > 0 {
			res[i].LateAfterTail = n
			late := fmt.Sprintf("%d of the lost arrived after the tail (late, not lost)", n)
			if res[i].Note == "" {
				res[i].Note = late
			} else {
				res[i].Note = joinNote(res[i].Note, late)
			}
		}
	}
	return nil
}

// stats polls every worker; withHist merges their histograms.
func (r *runner) stats(ctx context.Context, withHist bool) (held int, alive, dropped int64, tot stepTotals, h *hdrhistogram.Histogram, err error) {
	reps, err := r.pool.broadcast(ctx, workerRequest{Op: opStats, WithHist: withHist})
	if err != nil {
		return 0, 0, 0, tot, nil, err
	}
	if withHist {
		h = newHist()
	}
	for _, rep := range reps {
		held += rep.Held
		alive += rep.Alive
		dropped += rep.Dropped
		tot.add(rep.Totals)
		if h != nil && rep.Hist != nil {
			h.Merge(hdrhistogram.Import(rep.Hist))
		}
	}
	return held, alive, dropped, tot, h, nil
}

// usage is a CPU/RSS reading of the server and of the tool (coordinator + workers).
type usage struct {
	at     time.Time
	server procSample
	tool   time.Duration
}

func (r *runner) usage() usage {
	u := usage{at: time.Now(), tool: selfCPU()}
	u.server, _ = readProcs(r.serverPIDs)
	if w, err := readProcs(r.pool.pids()); err == nil {
		u.tool += w.CPU
	}
	return u
}

// fill sets the CPU fields of res from two readings; ops is the unit for per-op cost.
func (r *runner) fill(res *stepResult, a, b usage, ops int64) {
	wall := b.at.Sub(a.at).Seconds()
	srv := b.server.CPU - a.server.CPU
	if len(r.serverPIDs) > 0 && wall > 0 {
		res.ServerCPUCores = srv.Seconds() / wall
		res.ServerRSSBytes = b.server.RSS
		if ops > 0 {
			res.ServerCPUPerOp = float64(srv.Nanoseconds()) / 1000 / float64(ops)
		}
	}
	if wall > 0 {
		res.ToolCPUCores = (b.tool - a.tool).Seconds() / wall
	}
}

func (r *runner) result(scenario, step string) stepResult {
	return stepResult{Target: r.target, Scenario: scenario, Step: step, Cores: runtime.NumCPU()}
}

// startProgress prints a live progress line every second until the returned stop.
func (r *runner) startProgress(ctx context.Context, label string, extra func() string) (stop func()) {
	if r.progress == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		start := r.usage()
		var lastDel int64
		last := start
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			held, _, dropped, tot, _, err := r.stats(ctx, false)
			if err != nil {
				return
			}
			now := r.usage()
			wall := now.at.Sub(last.at).Seconds()
			fmt.Fprintf(r.progress, "[%s] %-28s %4.0fs  conns %6d  deliveries %8.0f/s  dropped %d  server cpu %3.0f%% rss %6.1f MiB  tool cpu %3.0f%%%s\n",
				r.target, label, now.at.Sub(start.at).Seconds(), held, float64(tot.Delivered-lastDel)/wall, dropped,
				100*(now.server.CPU-last.server.CPU).Seconds()/wall, float64(now.server.RSS)/(1<<20),
				100*(now.tool-last.tool).Seconds()/wall, extra())
			lastDel, last = tot.Delivered, now
		}
	}()
	return func() { cancel(); <-done }
}

// idle opens IdleConns authenticated connections in no room and reports the server's
// RSS growth per connection.
func (r *runner) idle(ctx context.Context) ([]stepResult, error) {
	n := r.cfg.IdleConns
	before := r.usage()
	start := time.Now()
	_, _, firstErr, err := r.connectAll(ctx, "idle", r.newSpecs(n, "idle", nil))
	if err != nil {
		return nil, err
	}
	took := time.Since(start)
	// Let the server finish post-handshake work and return buffers (a settling pause,
	// not synchronisation: RSS has no completion event to wait for).
	select {
	case <-time.After(r.cfg.IdleSettle):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	after := r.usage()
	_, alive, dropped, _, _, err := r.stats(ctx, false)
	if err != nil {
		return nil, err
	}
	res := r.result("idle", fmt.Sprintf("%d conns", n))
	res.Requested, res.Conns, res.Dropped = n, int(alive), dropped
	res.Seconds = took.Seconds()
	r.fill(&res, before, after, 0)
	if alive > 0 && len(r.serverPIDs) > 0 {
		res.ServerRSSPerConn = float64(after.server.RSS-before.server.RSS) / float64(alive)
	}
	if firstErr != "" {
		res.Note = "first connect error: " + firstErr
	}
	return []stepResult{res}, r.closeAll(ctx)
}

// fanout: one room of FanMembers; publish at each rate of FanRates until p99 passes
// P99Limit.
func (r *runner) fanout(ctx context.Context) ([]stepResult, error) {
	room := fmt.Sprintf("bench-fanout-%d", r.nextID)
	specs := r.newSpecs(r.cfg.FanMembers, "fan", func(int) []string { return []string{room} })
	held, _, firstErr, err := r.connectAll(ctx, "fanout", specs)
	if err != nil {
		return nil, err
	}
	if held == 0 {
		return nil, fmt.Errorf("fanout: no member connected: %s", firstErr)
	}
	r.placePublishers(ctx, "bench-fanout-", []string{room})
	defer func() { r.pubBase, r.owners = 0, nil }()
	var out []stepResult
	seqs := make([]int64, 1)
	for _, rate := range r.cfg.FanRates {
		res, err := r.publishStep(ctx, "fanout", float64(rate), []string{room}, []int{held}, seqs, 1)
		if err != nil {
			return out, err
		}
		res.Step = fmt.Sprintf("%d msg/s", rate)
		res.Requested = r.cfg.FanMembers
		out = append(out, res)
		if r.progress != nil {
			fmt.Fprintln(r.progress, tableRow(res))
		}
		if time.Duration(res.P99ms*float64(time.Millisecond)) > r.cfg.P99Limit {
			break
		}
	}
	if err := r.settleLate(ctx, out); err != nil {
		return out, err
	}
	return out, r.closeAll(ctx)
}

// memberships assigns size members to each of rooms rooms among conns connections:
// "uniform" gives every connection the same number of rooms (member j of room k is
// connection (k·size+j) mod conns); "random" draws each room's members at random.
func memberships(conns, rooms, size int, dist string, seed uint64) ([][]int, error) {
	if size > conns {
		return nil, fmt.Errorf("rooms of %d need at least %d connections", size, size)
	}
	out := make([][]int, rooms)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for k := range out {
		out[k] = make([]int, size)
		switch dist {
		case "uniform":
			for j := range size {
				out[k][j] = (k*size + j) % conns
			}
		case "random":
			seen := map[int]bool{}
			for j := 0; j < size; {
				c := rng.IntN(conns)
				if !seen[c] {
					seen[c] = true
					out[k][j] = c
					j++
				}
			}
		default:
			return nil, fmt.Errorf("unknown room distribution %q (uniform or random)", dist)
		}
	}
	return out, nil
}

// manyRooms: RoomsCount rooms of RoomsSize among RoomsConns connections; publishes to
// random rooms through RoomsStreams streams at each rate of RoomsRates.
func (r *runner) manyRooms(ctx context.Context) ([]stepResult, error) {
	c := r.cfg
	mem, err := memberships(c.RoomsConns, c.RoomsCount, c.RoomsSize, c.RoomsDist, 1)
	if err != nil {
		return nil, err
	}
	rooms := make([]string, c.RoomsCount)
	connRooms := make([][]string, c.RoomsConns)
	for k := range rooms {
		rooms[k] = fmt.Sprintf("bench-r%d-%d", r.nextID, k)
		for _, m := range mem[k] {
			connRooms[m] = append(connRooms[m], rooms[k])
		}
	}
	base := r.nextID
	specs := r.newSpecs(c.RoomsConns, "rooms", func(k int) []string { return connRooms[k] })
	held, failed, firstErr, err := r.connectAll(ctx, "many rooms", specs)
	if err != nil {
		return nil, err
	}
	if held == 0 {
		return nil, fmt.Errorf("many rooms: no connection: %s", firstErr)
	}
	members := make([]int, len(rooms))
	for k := range rooms {
		for _, m := range mem[k] {
			if !failed[base+m] {
				members[k]++
			}
		}
	}
	r.placePublishers(ctx, fmt.Sprintf("bench-r%d-", base), nil)
	defer func() { r.pubBase, r.owners = 0, nil }()
	var out []stepResult
	seqs := make([]int64, len(rooms))
	for _, rate := range c.RoomsRates {
		res, err := r.publishStep(ctx, "many-rooms", float64(rate), rooms, members, seqs, max(c.RoomsStreams, 1))
		if err != nil {
			return out, err
		}
		res.Step = fmt.Sprintf("%d pub/s", rate)
		res.Requested = c.RoomsConns
		res.Rooms = len(rooms)
		out = append(out, res)
		if r.progress != nil {
			fmt.Fprintln(r.progress, tableRow(res))
		}
	}
	if err := r.settleLate(ctx, out); err != nil {
		return out, err
	}
	return out, r.closeAll(ctx)
}

// publishStep publishes at rate for cfg.Step over streams ordered streams, to random
// rooms (stream s owns the rooms k with k mod streams = s, so each room's sequence
// comes from one stream and stays ordered), and accounts what the members received.
//
// seqs holds each room's last sequence number; it carries over from step to step.
func (r *runner) publishStep(ctx context.Context, scenario string, rate float64, rooms []string, members []int, seqs []int64, streams int) (stepResult, error) {
	r.step++
	step := r.step
	if _, err := r.pool.broadcast(ctx, workerRequest{Op: opStep, Step: step}); err != nil {
		return stepResult{}, err
	}
	streams = min(streams, len(rooms))
	pubs := make([]publisher, streams)
	for s := range pubs {
		p, err := r.pub.at(r.pubBase + s).open(ctx)
		if err != nil {
			for _, q := range pubs[:s] {
				_, _, _ = q.finish(ctx)
			}
			return stepResult{}, err
		}
		pubs[s] = p
	}
	published := make([]int64, len(rooms))
	var sentTotal atomic.Int64
	perStream := int64(rate * r.cfg.Step.Seconds() / float64(streams))
	u0 := r.usage()
	start := time.Now().Add(20 * time.Millisecond)
	stopAt := start.Add(r.cfg.Step + r.cfg.Tail)
	label := fmt.Sprintf("%s %.0f/s", scenario, rate)
	stopProgress := r.startProgress(ctx, label, func() string {
		return fmt.Sprintf("  sent %d", sentTotal.Load())
	})
	stopProfiles := r.startProfiles(ctx, fmt.Sprintf("%s-%s-%.0f", r.target, scenario, rate), r.cfg.Step)
	defer stopProfiles()
	var wg sync.WaitGroup
	errs := make([]error, streams)
	lags := make([]*hdrhistogram.Histogram, streams)
	for s := range streams {
		lags[s] = newHist()
		wg.Go(func() {
			var own []int
			for k := s; k < len(rooms); k += streams {
				own = append(own, k)
			}
			rng := rand.New(rand.NewPCG(uint64(step), uint64(s)))
			sched := schedule{start: start.Add(time.Duration(float64(s) * float64(time.Second) / rate)), rate: rate / float64(streams)}
			buf := make([]byte, 0, r.cfg.Payload+64)
			_, errs[s] = runPaced(ctx, realClock{}, sched, perStream, stopAt, func(_ int64, intended time.Time) error {
				_ = lags[s].RecordValue(max(time.Since(intended).Microseconds(), histMin))
				k := own[rng.IntN(len(own))]
				seqs[k]++
				buf = appendPayload(buf[:0], stamp{t: intended.UnixMicro(), seq: seqs[k], room: int64(k), step: step}, r.cfg.Payload)
				if err := pubs[s].send(rooms[k], buf); err != nil {
					seqs[k]--
					return err
				}
				published[k]++
				sentTotal.Add(1)
				return nil
			})
		})
	}
	wg.Wait()
	sendEnd := time.Now()
	res := r.result(scenario, "")
	res.stepID = step
	res.TargetRate = rate
	lag := newHist()
	for _, h := range lags {
		lag.Merge(h)
	}
	res.SendLagP50ms = float64(lag.ValueAtQuantile(50)) / 1000
	res.SendLagP99ms = float64(lag.ValueAtQuantile(99)) / 1000
	fctx, cancel := context.WithTimeout(ctx, r.cfg.Tail)
	for _, p := range pubs {
		_, bad, ferr := p.finish(fctx)
		res.PublishErrors += bad
		if ferr != nil && res.Note == "" {
			res.Note = ferr.Error()
		}
	}
	cancel()
	var viaOther, placed int64
	for k := range rooms {
		res.Published += published[k]
		res.Expected += published[k] * int64(members[k])
		if owner, ok := r.owners[rooms[k]]; ok && r.pub.nodes() > 1 {
			placed += published[k]
			if owner != (r.pubBase+k%streams)%r.pub.nodes() {
				viaOther += published[k]
			}
		}
	}
	if placed > 0 {
		res.ViaNonOwner = float64(viaOther) / float64(placed)
	}
	res.Nodes = len(r.nodes)
	res.Unsent = perStream*int64(streams) - res.Published
	// Wait (bounded by Tail) for the last deliveries.
	deadline := sendEnd.Add(r.cfg.Tail)
	for {
		_, _, _, tot, _, err := r.stats(ctx, false)
		if err != nil {
			stopProgress()
			return res, err
		}
		if tot.Delivered >= res.Expected || time.Now().After(deadline) {
			break
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			stopProgress()
			return res, ctx.Err()
		}
	}
	u1 := r.usage()
	stopProgress()
	if perr := stopProfiles(); perr != nil {
		res.Note = joinNote("pprof: "+perr.Error(), res.Note)
	}
	held, _, dropped, tot, h, err := r.stats(ctx, true)
	if err != nil {
		return res, err
	}
	res.Conns, res.Dropped = held, dropped
	res.Delivered, res.Duplicates, res.Gaps = tot.Delivered, tot.Dups, tot.Gaps
	res.Lost = lossCount(res.Expected, tot.Delivered)
	res.Seconds = u1.at.Sub(start).Seconds()
	res.PublishPerSec = float64(res.Published) / r.cfg.Step.Seconds()
	res.DeliveryRate = float64(res.Delivered) / res.Seconds
	res.setLatency(h)
	r.fill(&res, u0, u1, res.Delivered)
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("%s: publish: %w", label, err)
	}
	return res, nil
}

// churn holds ChurnConns connections (each in one of 100 rooms) and replaces them,
// closing the oldest and opening a new one, at ChurnRate per second.
func (r *runner) churn(ctx context.Context) ([]stepResult, error) {
	c := r.cfg
	prefix := fmt.Sprintf("bench-churn-%d", r.nextID)
	specs := r.newSpecs(c.ChurnConns, "churn", func(k int) []string { return []string{fmt.Sprintf("%s-%d", prefix, k%100)} })
	held, _, firstErr, err := r.connectAll(ctx, "churn", specs)
	if err != nil {
		return nil, err
	}
	if held == 0 {
		return nil, fmt.Errorf("churn: no connection: %s", firstErr)
	}
	w := len(r.pool.workers)
	per := c.ChurnRate / float64(w)
	base := r.nextID
	r.nextID += int(c.ChurnRate*c.ChurnDuration.Seconds()) + w
	u0 := r.usage()
	stop := r.startProgress(ctx, fmt.Sprintf("churn %.0f/s", c.ChurnRate), func() string { return "" })
	reps, err := r.pool.all(ctx, func(i int) workerRequest {
		return workerRequest{Op: opChurn, Churn: &churnSpec{Rate: per, Duration: c.ChurnDuration,
			NextID: base + i*(int(per*c.ChurnDuration.Seconds())+1), Parallel: c.Parallel}}
	})
	u1 := r.usage()
	stop()
	if err != nil {
		return nil, err
	}
	res := r.result("churn", fmt.Sprintf("%.0f/s", c.ChurnRate))
	res.Requested, res.TargetRate = c.ChurnConns, c.ChurnRate
	h := newHist()
	var done, failed int64
	for _, rep := range reps {
		if rep.Churn == nil {
			continue
		}
		done += rep.Churn.Done
		failed += rep.Churn.Failed
		if rep.Churn.Hist != nil {
			h.Merge(hdrhistogram.Import(rep.Churn.Hist))
		}
		if res.Note == "" && rep.Churn.FirstErr != "" {
			res.Note = "first error: " + rep.Churn.FirstErr
		}
	}
	_, alive, dropped, _, _, err := r.stats(ctx, false)
	if err != nil {
		return nil, err
	}
	res.Conns, res.Dropped = int(alive), dropped
	res.Seconds = u1.at.Sub(u0.at).Seconds()
	res.Published = done // replacements done
	res.PublishErrors = failed
	res.PublishPerSec = float64(done) / res.Seconds
	res.setLatency(h)
	r.fill(&res, u0, u1, done)
	res.Note = joinNote("published/s = connects+disconnects done per second; latency = connect+join from the intended time", res.Note)
	return []stepResult{res}, r.closeAll(ctx)
}

func joinNote(a, b string) string {
	if b == "" {
		return a
	}
	return a + "; " + b
}

// publishThroughput measures the control API alone (a room with no members): unary
// calls from PubConcurrency callers, then one stream with PubWindow publishes in flight.
func (r *runner) publishThroughput(ctx context.Context) ([]stepResult, error) {
	c := r.cfg
	room := fmt.Sprintf("bench-pub-%d", r.nextID)
	r.nextID++
	payload := appendPayload(nil, stamp{t: time.Now().UnixMicro(), seq: 1}, c.Payload)
	var out []stepResult

	// Unary: closed loop, PubConcurrency calls in flight.
	u, err := newUnary(r.pub, c.PubConcurrency)
	if err != nil {
		return nil, err
	}
	var okN, badN atomic.Int64
	var firstErr atomic.Value
	hists := make([]*hdrhistogram.Histogram, max(c.PubConcurrency, 1))
	u0 := r.usage()
	end := u0.at.Add(c.PubDuration)
	stop := r.startProgress(ctx, "publish unary", func() string { return fmt.Sprintf("  calls %d", okN.Load()) })
	var wg sync.WaitGroup
	for i := range hists {
		hists[i] = newHist()
		wg.Go(func() {
			for time.Now().Before(end) && ctx.Err() == nil {
				t0 := time.Now()
				if err := u.publish(ctx, room, payload); err != nil {
					badN.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				okN.Add(1)
				_ = hists[i].RecordValue(max(time.Since(t0).Microseconds(), histMin))
			}
		})
	}
	wg.Wait()
	u1 := r.usage()
	stop()
	u.close()
	res := r.result("publish", fmt.Sprintf("unary x%d", c.PubConcurrency))
	res.Published, res.PublishErrors = okN.Load(), badN.Load()
	res.Seconds = u1.at.Sub(u0.at).Seconds()
	res.PublishPerSec = float64(res.Published) / res.Seconds
	h := newHist()
	for _, x := range hists {
		h.Merge(x)
	}
	res.setLatency(h)
	r.fill(&res, u0, u1, res.Published)
	if s, ok := firstErr.Load().(string); ok {
		res.Note = "first error: " + s
	}
	out = append(out, res)

	// Stream: closed loop, at most PubWindow unacknowledged publishes.
	p, err := r.pub.open(ctx)
	if err != nil {
		return out, err
	}
	u0 = r.usage()
	end = u0.at.Add(c.PubDuration)
	var sent int64
	stop = r.startProgress(ctx, "publish stream", func() string { return fmt.Sprintf("  acked %d", p.acked()) })
	for time.Now().Before(end) && ctx.Err() == nil {
		if sent-p.acked() >= int64(c.PubWindow) {
			time.Sleep(50 * time.Microsecond) // window full: let acks arrive
			continue
		}
		if err := p.send(room, payload); err != nil {
			break
		}
		sent++
	}
	fctx, cancel := context.WithTimeout(ctx, c.Tail)
	ok, bad, ferr := p.finish(fctx)
	cancel()
	u1 = r.usage()
	stop()
	res = r.result("publish", fmt.Sprintf("stream w%d", c.PubWindow))
	res.Published, res.PublishErrors = ok, bad
	res.Seconds = u1.at.Sub(u0.at).Seconds()
	res.PublishPerSec = float64(ok) / res.Seconds
	r.fill(&res, u0, u1, ok)
	if ferr != nil {
		res.Note = "first error: " + ferr.Error()
	}
	out = append(out, res)
	return out, nil
}
