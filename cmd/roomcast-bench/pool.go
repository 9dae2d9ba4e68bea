package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
)

// workerEnv, set in a child's environment, makes the binary run as a worker whatever
// its arguments (so a test binary can be its own worker too).
const workerEnv = "ROOMCAST_BENCH_WORKER"

// pool is the coordinator's set of worker processes. Each process holds at most
// ~20,000 open files here, so large runs need several.
type pool struct {
	workers []*workerProc
}

// workerProc is one worker process and its request/reply plumbing. Its reader
// goroutine ends when the process's stdout closes.
type workerProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed when the reply reader has ended

	mu      sync.Mutex
	nextID  int64
	pending map[int64]chan workerReply
	enc     *json.Encoder
}

// startPool starts n worker processes re-executing this binary.
func startPool(n int) (*pool, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p := &pool{}
	for range max(n, 1) {
		cmd := exec.Command(exe, "worker")
		cmd.Env = append(os.Environ(), workerEnv+"=1")
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			p.close()
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			p.close()
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			p.close()
			return nil, fmt.Errorf("start worker: %w", err)
		}
		w := &workerProc{cmd: cmd, stdin: stdin, done: make(chan struct{}),
			pending: map[int64]chan workerReply{}, enc: json.NewEncoder(stdin)}
		go w.readReplies(stdout)
		p.workers = append(p.workers, w)
	}
	return p, nil
}

func (w *workerProc) readReplies(r io.Reader) {
	defer close(w.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	for sc.Scan() {
		var rep workerReply
		if err := json.Unmarshal(sc.Bytes(), &rep); err != nil {
			continue
		}
		w.mu.Lock()
		ch := w.pending[rep.ID]
		delete(w.pending, rep.ID)
		w.mu.Unlock()
		if ch != nil {
			ch <- rep
		}
	}
}

// call sends req and waits for its reply.
func (w *workerProc) call(ctx context.Context, req workerRequest) (workerReply, error) {
	ch := make(chan workerReply, 1)
	w.mu.Lock()
	w.nextID++
	req.ID = w.nextID
	w.pending[req.ID] = ch
	err := w.enc.Encode(req)
	w.mu.Unlock()
	if err != nil {
		return workerReply{}, fmt.Errorf("worker: %w", err)
	}
	select {
	case rep := <-ch:
		if rep.Err != "" {
			return rep, fmt.Errorf("worker: %s", rep.Err)
		}
		return rep, nil
	case <-w.done:
		return workerReply{}, errWorkerGone
	case <-ctx.Done():
		return workerReply{}, ctx.Err()
	}
}

// all sends one request to every worker (req(i) for worker i) and waits for all.
func (p *pool) all(ctx context.Context, req func(i int) workerRequest) ([]workerReply, error) {
	reps := make([]workerReply, len(p.workers))
	errs := make([]error, len(p.workers))
	var wg sync.WaitGroup
	for i, w := range p.workers {
		wg.Go(func() { reps[i], errs[i] = w.call(ctx, req(i)) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return reps, err
		}
	}
	return reps, nil
}

// broadcast sends the same request to every worker.
func (p *pool) broadcast(ctx context.Context, req workerRequest) ([]workerReply, error) {
	return p.all(ctx, func(int) workerRequest { return req })
}

// pids are the worker processes' ids.
func (p *pool) pids() []int {
	var ids []int
	for _, w := range p.workers {
		ids = append(ids, w.cmd.Process.Pid)
	}
	return ids
}

// close ends every worker: closing stdin makes it close its connections and exit.
func (p *pool) close() {
	for _, w := range p.workers {
		_ = w.stdin.Close()
	}
	for _, w := range p.workers {
		<-w.done
		_ = w.cmd.Wait()
	}
}
