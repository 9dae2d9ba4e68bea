package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/sys/unix"
)

// The coordinator drives its worker processes (`roomcast-bench worker`) with one JSON
// request per line on the worker's stdin; the worker answers each with one JSON line on
// stdout carrying the same id. Requests run concurrently inside the worker (a churn
// run must not block the stats polls that feed live progress).

// Worker operations.
const (
	opConnect = "connect" // open and join Conns
	opStep    = "step"    // start measuring Step: reset the delivery accounting
	opStats   = "stats"   // report accounting (with the histogram when WithHist)
	opChurn   = "churn"   // replace held connections at Churn.Rate per second
	opClose   = "close"   // close every connection
)

type connSpec struct {
	ID    int      `json:"i"`
	User  string   `json:"u"`
	Rooms []string `json:"r,omitempty"`
}

type churnSpec struct {
	Rate     float64       `json:"rate"`     // replacements per second (close one, open one)
	Duration time.Duration `json:"duration"` // how long
	NextID   int           `json:"next_id"`  // ids for new connections start here
	Parallel int           `json:"parallel"` // replacements in flight at most
}

type workerRequest struct {
	ID       int64      `json:"id"`
	Op       string     `json:"op"`
	Dial     dialSpec   `json:"dial,omitzero"`
	Conns    []connSpec `json:"conns,omitempty"`
	Parallel int        `json:"parallel,omitempty"`
	Step     int64      `json:"step,omitempty"`
	WithHist bool       `json:"with_hist,omitempty"`
	Churn    *churnSpec `json:"churn,omitempty"`
	SDK      *sdkSpec   `json:"sdk,omitempty"`
	Query    *sdkQuery  `json:"query,omitempty"`
}

type churnResult struct {
	Done     int64                  `json:"done"`
	Failed   int64                  `json:"failed"`
	FirstErr string                 `json:"first_err,omitempty"`
	Hist     *hdrhistogram.Snapshot `json:"hist,omitempty"` // connect latency from the intended time, µs
}

type workerReply struct {
	ID        int64                  `json:"id"`
	Err       string                 `json:"err,omitempty"`
	Held      int                    `json:"held,omitempty"`
	FailedIDs []int                  `json:"failed_ids,omitempty"`
	FirstErr  string                 `json:"first_err,omitempty"`
	Totals    stepTotals             `json:"totals"`
	Hist      *hdrhistogram.Snapshot `json:"hist,omitempty"`
	Alive     int64                  `json:"alive"`
	Dropped   int64                  `json:"dropped"` // connections the server closed
	CPU       time.Duration          `json:"cpu"`
	Churn     *churnResult           `json:"churn,omitempty"`
	SDK       *sdkReport             `json:"sdk,omitempty"`
}

// worker holds connections and accounts their deliveries. Once set up, connections are
// read by the receive engine (rx.go), which the worker starts at its first connection
// and stops in closeAll (ending its goroutines).
type worker struct {
	tally   *tally
	alive   atomic.Int64
	dropped atomic.Int64

	mu    sync.Mutex
	dial  dialSpec
	rx    *rxEngine
	conns []*wconn // held, oldest first (churn replaces from the front)
	sdk   *sdkSet  // the recover scenario's SDK clients; nil until it starts them
}

type wconn struct {
	spec connSpec
	rx   *rxEngine
	c    *rxConn
}

// workerMain serves requests from in until it is closed, then closes every connection.
func workerMain(in io.Reader, out io.Writer) error {
	w := &worker{tally: newTally()}
	var outMu sync.Mutex
	enc := json.NewEncoder(out)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var handlers sync.WaitGroup
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	for sc.Scan() {
		var req workerRequest
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			return fmt.Errorf("worker: bad request: %w", err)
		}
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			rep := w.handle(ctx, req)
			rep.ID = req.ID
			outMu.Lock()
			_ = enc.Encode(rep)
			outMu.Unlock()
		}()
	}
	cancel()
	handlers.Wait()
	w.closeAll()
	w.closeSDK()
	return sc.Err()
}

func (w *worker) handle(ctx context.Context, req workerRequest) workerReply {
	switch req.Op {
	case opConnect:
		w.mu.Lock()
		w.dial = req.Dial
		w.mu.Unlock()
		return w.connect(ctx, req.Conns, req.Parallel)
	case opStep:
		w.tally.begin(req.Step)
		return w.stats(false)
	case opStats:
		return w.stats(req.WithHist)
	case opChurn:
		if req.Churn == nil {
			return workerReply{Err: "churn: no spec"}
		}
		rep := w.stats(false)
		rep.Churn = w.churn(ctx, *req.Churn)
		return rep
	case opClose:
		w.closeAll()
		return w.stats(false)
	case opSDKConnect:
		if req.SDK == nil {
			return workerReply{Err: "sdk-connect: no spec"}
		}
		return w.sdkConnect(ctx, *req.SDK)
	case opSDKMark, opSDKStats:
		if req.Query == nil {
			return workerReply{Err: req.Op + ": no query"}
		}
		rep := w.stats(false)
		w.mu.Lock()
		set := w.sdk
		w.mu.Unlock()
		if set == nil {
			set = &sdkSet{}
		}
		if req.Op == opSDKMark {
			m := set.mark(req.Query.Node)
			rep.SDK = &m
		} else {
			rep.SDK = set.report(*req.Query)
		}
		return rep
	case opSDKClose:
		w.closeSDK()
		return w.stats(false)
	}
	return workerReply{Err: fmt.Sprintf("unknown op %q", req.Op)}
}

func (w *worker) stats(withHist bool) workerReply {
	tot, h := w.tally.snapshot(withHist)
	rep := workerReply{Totals: tot, Alive: w.alive.Load(), Dropped: w.dropped.Load(), CPU: selfCPU()}
	if h != nil {
		rep.Hist = h.Export()
	}
	w.mu.Lock()
	rep.Held = len(w.conns)
	w.mu.Unlock()
	return rep
}

// connect opens specs with parallel dials in flight.
func (w *worker) connect(ctx context.Context, specs []connSpec, parallel int) workerReply {
	var mu sync.Mutex
	var rep workerReply
	next := make(chan connSpec)
	var wg sync.WaitGroup
	for range max(parallel, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range next {
				err := w.open(ctx, s)
				if err != nil {
					mu.Lock()
					rep.FailedIDs = append(rep.FailedIDs, s.ID)
					if rep.FirstErr == "" {
						rep.FirstErr = err.Error()
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, s := range specs {
		next <- s
	}
	close(next)
	wg.Wait()
	st := w.stats(false)
	st.FailedIDs, st.FirstErr = rep.FailedIDs, rep.FirstErr
	return st
}

// open sets up one connection and hands it to the receive engine, which accounts
// every bench message it receives and answers pings.
func (w *worker) open(ctx context.Context, s connSpec) error {
	w.mu.Lock()
	d := w.dial
	w.mu.Unlock()
	setup, err := d.setup(ctx, s.ID, s.User, s.Rooms)
	if err != nil {
		return err
	}
	fd, err := setup.detach()
	if err != nil {
		return err
	}
	c := newRxConn(s.ID, d.Target, fd, setup.in)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.rx == nil {
		if w.rx, err = newRxEngine(rxConfig{BatchWait: d.RxBatchWait, Tally: w.tally, Alive: &w.alive, Dropped: &w.dropped}); err != nil {
			_ = unix.Close(fd)
			return err
		}
	}
	if err := w.rx.add(c); err != nil {
		_ = unix.Close(fd)
		return err
	}
	w.conns = append(w.conns, &wconn{spec: s, rx: w.rx, c: c})
	return nil
}

func (w *worker) closeSDK() {
	w.mu.Lock()
	set := w.sdk
	w.sdk = nil
	w.mu.Unlock()
	if set != nil {
		set.closeAll()
	}
}

// closeAll closes every connection and stops the receive engine.
func (w *worker) closeAll() {
	w.mu.Lock()
	rx := w.rx
	w.conns, w.rx = nil, nil
	w.mu.Unlock()
	if rx != nil {
		rx.stop()
	}
}

// churn closes the oldest held connection and opens a new one with the same rooms, at
// rate per second for the duration, on an open-loop schedule: the connect latency of a
// replacement is measured from its intended time, so a slow accept queue shows.
func (w *worker) churn(ctx context.Context, cs churnSpec) *churnResult {
	res := &churnResult{}
	hist := newHist()
	var mu sync.Mutex
	sem := make(chan struct{}, max(cs.Parallel, 1))
	var wg sync.WaitGroup
	total := int64(cs.Duration.Seconds() * cs.Rate)
	sched := schedule{start: time.Now(), rate: cs.Rate}
	_, _ = runPaced(ctx, realClock{}, sched, total, time.Time{}, func(i int64, intended time.Time) error {
		sem <- struct{}{}
		w.mu.Lock()
		var old *wconn
		if len(w.conns) > 0 {
			old = w.conns[0]
			w.conns = w.conns[1:]
		}
		w.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			spec := connSpec{ID: cs.NextID + int(i), User: fmt.Sprintf("churn-%d", cs.NextID+int(i))}
			if old != nil {
				old.rx.close(old.c)
				spec.Rooms = old.spec.Rooms
			}
			err := w.open(ctx, spec)
			lat := time.Since(intended).Microseconds()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Failed++
				if res.FirstErr == "" {
					res.FirstErr = err.Error()
				}
				return
			}
			res.Done++
			_ = hist.RecordValue(max(lat, histMin))
		}()
		return nil
	})
	wg.Wait()
	res.Hist = hist.Export()
	return res
}

// errWorkerGone is returned for calls to a worker whose process has exited.
var errWorkerGone = errors.New("worker exited")
