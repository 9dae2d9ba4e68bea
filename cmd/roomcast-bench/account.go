package main

import (
	"sync"
	"sync/atomic"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds, from 1 µs to 10 minutes, 3 significant digits.
const (
	histMin    = 1
	histMax    = 600_000_000
	histDigits = 3
)

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, histDigits) }

// tally is one worker's delivery accounting for the current step. Readers of many
// connections record into it concurrently, so it is split into shards (a connection
// always uses the same one) to keep the locks uncontended.
type tally struct {
	step   atomic.Int64 // the step being measured; messages of other steps count as late
	shards [16]tallyShard
}

type tallyShard struct {
	mu        sync.Mutex
	hist      *hdrhistogram.Histogram
	delivered int64 // first deliveries of the current step
	dups      int64 // a sequence at or below the last one seen in that room
	gaps      int64 // sequence numbers skipped (lost, as far as this connection knows)
	late      int64 // messages of another step (arrived after their step was closed)
	// lateBy counts late messages by the step they belong to, over the whole run
	// (begin does not reset it), so a step's "lost" can be told from "late".
	lateBy map[int64]int64
}

func newTally() *tally {
	t := &tally{}
	for i := range t.shards {
		t.shards[i].hist = newHist()
	}
	return t
}

// roomSeq tracks, for one connection, the last sequence seen per room. It is owned by
// the connection's reader goroutine.
type roomSeq map[int64]int64

// observe accounts one received message on a connection, nowMicro being the receive
// time. The fabric promises per-room order without duplicates, so any sequence at or
// below the last one seen is a duplicate, and any jump skips lost messages.
func (t *tally) observe(shard int, seen roomSeq, s stamp, nowMicro int64) {
	sh := &t.shards[shard%len(t.shards)]
	last := seen[s.room]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if s.seq <= last {
		sh.dups++
		return
	}
	seen[s.room] = s.seq
	if s.step != t.step.Load() {
		sh.late++
		if sh.lateBy == nil {
			sh.lateBy = map[int64]int64{}
		}
		sh.lateBy[s.step]++
		return
	}
	sh.gaps += s.seq - last - 1
	sh.delivered++
	_ = sh.hist.RecordValue(max(nowMicro-s.t, histMin))
}

// stepTotals are the counts of a tally.
type stepTotals struct {
	Delivered int64 `json:"delivered"`
	Dups      int64 `json:"dups"`
	Gaps      int64 `json:"gaps"`
	Late      int64 `json:"late"`
	// LateBy counts, over the whole run, messages that arrived after their step's
	// accounting had closed, by step.
	LateBy map[int64]int64 `json:"late_by,omitempty"`
}

func (a *stepTotals) add(b stepTotals) {
	a.Delivered += b.Delivered
	a.Dups += b.Dups
	a.Gaps += b.Gaps
	a.Late += b.Late
	for step, n := range b.LateBy {
		if a.LateBy == nil {
			a.LateBy = map[int64]int64{}
		}
		a.LateBy[step] += n
	}
}

// snapshot returns the counts and, when withHist, the merged latency histogram.
func (t *tally) snapshot(withHist bool) (stepTotals, *hdrhistogram.Histogram) {
	var tot stepTotals
	var h *hdrhistogram.Histogram
	if withHist {
		h = newHist()
	}
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		tot.add(stepTotals{Delivered: sh.delivered, Dups: sh.dups, Gaps: sh.gaps, Late: sh.late, LateBy: sh.lateBy})
		if h != nil {
			h.Merge(sh.hist)
		}
		sh.mu.Unlock()
	}
	return tot, h
}

// begin starts measuring step: counts and histograms restart from zero.
func (t *tally) begin(step int64) {
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		sh.hist.Reset()
		sh.delivered, sh.dups, sh.gaps, sh.late = 0, 0, 0, 0
		sh.mu.Unlock()
	}
	t.step.Store(step)
}

// lossCount is what a step lost: the deliveries owed (each publish times the members
// its room held) minus the distinct ones that arrived. Gaps seen by receivers are a
// subset; the difference catches a tail that never came.
func lossCount(expected, delivered int64) int64 { return max(expected-delivered, 0) }
