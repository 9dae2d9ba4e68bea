package client

import "sync"

// pump runs queued functions one at a time, in order, on a goroutine of its own. It
// decouples the reader (which must never block on the application) from handlers and
// channel sends. Its queue is unbounded; see the package comment.
//
// The pump exits when finish was called and its queue is drained, or at once when
// abort is closed (items still queued are dropped). onExit runs last, on the pump's
// goroutine.
type pump struct {
	mu     sync.Mutex
	q      []func()
	fin    bool
	wake   chan struct{} // capacity 1: "the queue or fin changed"
	abort  <-chan struct{}
	onExit func()
	exited chan struct{}
}

func newPump(abort <-chan struct{}, onExit func()) *pump {
	return &pump{wake: make(chan struct{}, 1), abort: abort, onExit: onExit, exited: make(chan struct{})}
}

// push queues f; it reports false when the pump no longer accepts work.
func (p *pump) push(f func()) bool {
	p.mu.Lock()
	if p.fin {
		p.mu.Unlock()
		return false
	}
	p.q = append(p.q, f)
	p.mu.Unlock()
	p.signal()
	return true
}

// finish makes the pump exit once everything queued so far has run.
func (p *pump) finish() {
	p.mu.Lock()
	p.fin = true
	p.mu.Unlock()
	p.signal()
}

func (p *pump) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *pump) run() {
	defer close(p.exited)
	if p.onExit != nil {
		defer p.onExit()
	}
	for {
		p.mu.Lock()
		var f func()
		if len(p.q) > 0 {
			f = p.q[0]
			p.q[0] = nil
			p.q = p.q[1:]
		}
		fin := p.fin
		p.mu.Unlock()
		select {
		case <-p.abort:
			return
		default:
		}
		if f != nil {
			f()
			continue
		}
		if fin {
			return
		}
		select {
		case <-p.wake:
		case <-p.abort:
			return
		}
	}
}
