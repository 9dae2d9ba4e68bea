package peer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/roomcast/roomcast/fabric"
	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
)

// wire is one side of a Link stream, after the handshake. send is only called by the
// link's writer goroutine and recv only by its reader goroutine.
type wire interface {
	send(*meshv1.Batch) error
	recv() (*meshv1.Batch, error)
}

type clientWire struct {
	s   grpc.BidiStreamingClient[meshv1.LinkRequest, meshv1.LinkResponse]
	req meshv1.LinkRequest // reused: SendMsg encodes before returning
}

func (w *clientWire) send(b *meshv1.Batch) error {
	w.req.Batch = b
	return w.s.Send(&w.req)
}

func (w *clientWire) recv() (*meshv1.Batch, error) {
	r, err := w.s.Recv()
	return r.GetBatch(), err
}

type serverWire struct {
	s    grpc.BidiStreamingServer[meshv1.LinkRequest, meshv1.LinkResponse]
	resp meshv1.LinkResponse
}

func (w *serverWire) send(b *meshv1.Batch) error {
	w.resp.Batch = b
	return w.s.Send(&w.resp)
}

func (w *serverWire) recv() (*meshv1.Batch, error) {
	r, err := w.s.Recv()
	return r.GetBatch(), err
}

type item struct {
	env  *meshv1.Envelope
	size int
}

// Peer is one established, authenticated link to a remote node. It is handed to the
// Handler with every envelope and can be used to reply or to send on that very link.
type Peer struct {
	l        *Links
	id       string
	sender   *meshv1.Sender
	dialer   string // gossip ID of the side that dialed, for the tie-break
	outbound bool
	protocol uint32
	version  string
	w        wire
	cancel   context.CancelFunc // ends an outbound stream; nil for inbound ones

	installed  atomic.Bool
	nextReq    atomic.Uint64
	goodbye    atomic.Bool
	done       chan struct{}
	writerDone chan struct{}
	wake       chan struct{} // capacity 1: the writer has work
	closeOnce  sync.Once

	mu      sync.Mutex
	queue   []item
	qbytes  int
	space   chan struct{} // closed when the writer made progress; nil without waiters
	pending map[uint64]chan *meshv1.Envelope
	err     error
}

func newPeer(l *Links, sender *meshv1.Sender, outbound bool, protocol uint32, version string, w wire, cancel context.CancelFunc) *Peer {
	id := ID(sender.GetNode(), sender.GetIncarnation())
	dialer := id
	if outbound {
		dialer = l.selfID
	}
	return &Peer{
		l: l, id: id, sender: sender, dialer: dialer, outbound: outbound, protocol: protocol,
		version: version, w: w, cancel: cancel,
		done: make(chan struct{}), writerDone: make(chan struct{}), wake: make(chan struct{}, 1),
		pending: make(map[uint64]chan *meshv1.Envelope),
	}
}

// ID returns the remote node's gossip ID.
func (p *Peer) ID() string { return p.id }

// Node returns the remote node's name.
func (p *Peer) Node() string { return p.sender.GetNode() }

// Incarnation returns the remote node's incarnation.
func (p *Peer) Incarnation() uint64 { return p.sender.GetIncarnation() }

// Protocol returns the protocol number negotiated for the link.
func (p *Peer) Protocol() uint32 { return p.protocol }

// Version returns the remote node's roomcast release, as it announced it.
func (p *Peer) Version() string { return p.version }

// Outbound reports whether this node dialed the link.
func (p *Peer) Outbound() bool { return p.outbound }

// Done is closed when the link has ended.
func (p *Peer) Done() <-chan struct{} { return p.done }

// Err returns why the link ended, or nil while it is up.
func (p *Peer) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// beats reports whether p should replace other as the link to the same node: the
// stream dialed by the smaller gossip ID wins; between two streams dialed by the same
// side the newer (p) wins, since that side only redials a link it believes dead.
func (p *Peer) beats(other *Peer) bool {
	if p.dialer == other.dialer {
		return true
	}
	return p.dialer < other.dialer
}

func (p *Peer) downErr() error {
	return fmt.Errorf("%w to %s (%v): %w", ErrLinkDown, p.id, p.err, fabric.ErrUnavailable)
}

// Send queues env on this link without waiting: ErrQueueFull when the queue is at its
// bound, ErrLinkDown when the link has ended.
func (p *Peer) Send(env *meshv1.Envelope) error {
	return p.enqueue(env, proto.Size(env), nil)
}

// SendWait queues env on this link, waiting for room while the queue is full, bounded
// by ctx.
func (p *Peer) SendWait(ctx context.Context, env *meshv1.Envelope) error {
	return p.enqueue(env, proto.Size(env), ctx)
}

// Reply queues resp as the reply to req (setting resp.reply_to) on this link.
func (p *Peer) Reply(req, resp *meshv1.Envelope) error {
	if req.GetRequestId() == 0 {
		return fmt.Errorf("peer: reply to an envelope that is not a request: %w", fabric.ErrBadRequest)
	}
	resp.RequestId = 0
	resp.ReplyTo = req.GetRequestId()
	return p.Send(resp)
}

func (p *Peer) enqueue(env *meshv1.Envelope, size int, wait context.Context) error {
	if size > p.l.cfg.MaxEnvelopeBytes {
		return fabric.Errorf(fabric.CodeTooLarge, "peer envelope of %d bytes exceeds %d", size, p.l.cfg.MaxEnvelopeBytes)
	}
	p.mu.Lock()
	for {
		if p.err != nil {
			err := p.downErr()
			p.mu.Unlock()
			return err
		}
		cfg := &p.l.cfg
		if len(p.queue) < cfg.MaxQueueEnvelopes && (p.qbytes+size <= cfg.MaxQueueBytes || len(p.queue) == 0) {
			break
		}
		if wait == nil {
			p.mu.Unlock()
			p.l.m.queueDrops.Inc()
			return fmt.Errorf("%w to %s: %w", ErrQueueFull, p.id, fabric.ErrUnavailable)
		}
		ch := p.spaceLocked()
		p.mu.Unlock()
		select {
		case <-ch:
		case <-wait.Done():
			p.l.m.queueDrops.Inc()
			return fmt.Errorf("%w to %s: %w: %w", ErrQueueFull, p.id, wait.Err(), fabric.ErrUnavailable)
		}
		p.mu.Lock()
	}
	p.queue = append(p.queue, item{env, size})
	p.qbytes += size
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

func (p *Peer) spaceLocked() chan struct{} {
	if p.space == nil {
		p.space = make(chan struct{})
	}
	return p.space
}

func (p *Peer) signalSpaceLocked() {
	if p.space != nil {
		close(p.space)
		p.space = nil
	}
}

// Request sends env on this link with a fresh request_id and waits for its reply,
// bounded by ctx; ErrLinkDown when the link ends first.
func (p *Peer) Request(ctx context.Context, env *meshv1.Envelope) (*meshv1.Envelope, error) {
	id := p.nextReq.Add(1)
	env.RequestId = id
	env.ReplyTo = 0
	ch := make(chan *meshv1.Envelope, 1)
	p.mu.Lock()
	if p.err != nil {
		err := p.downErr()
		p.mu.Unlock()
		return nil, err
	}
	p.pending[id] = ch
	p.mu.Unlock()
	forget := func() {
		p.mu.Lock()
		delete(p.pending, id)
		p.mu.Unlock()
	}
	if err := p.Send(env); err != nil {
		forget()
		return nil, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-p.done:
		select {
		case r := <-ch:
			return r, nil
		default:
		}
		p.mu.Lock()
		err := p.downErr()
		p.mu.Unlock()
		return nil, err
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("peer request to %s: %w", p.id, ctx.Err())
	}
}

// start starts the writer and reader goroutines of an installed link.
func (p *Peer) start() {
	p.l.wg.Add(2)
	go p.writer()
	go p.reader()
}

func (p *Peer) writer() {
	defer p.l.wg.Done()
	defer close(p.writerDone)
	cfg := &p.l.cfg
	m := p.l.m
	batch := &meshv1.Batch{Sender: p.l.self}
	var buf []*meshv1.Envelope
	for {
		select {
		case <-p.wake:
		case <-p.done:
			return
		}
		for {
			p.mu.Lock()
			n, bytes := 0, 0
			for n < len(p.queue) && n < cfg.MaxBatchEnvelopes {
				s := p.queue[n].size
				if n > 0 && bytes+s > cfg.MaxBatchBytes {
					break
				}
				bytes += s
				buf = append(buf, p.queue[n].env)
				p.queue[n] = item{}
				n++
			}
			if n == len(p.queue) {
				p.queue = p.queue[:0]
			} else {
				p.queue = p.queue[n:]
			}
			p.qbytes -= bytes
			p.signalSpaceLocked()
			p.mu.Unlock()
			if n == 0 {
				break
			}
			batch.Envelopes = buf
			err := p.w.send(batch)
			clear(buf)
			buf = buf[:0]
			if err != nil {
				p.close(fmt.Errorf("write: %w", err))
				return
			}
			m.batchesSent.Inc()
			m.envelopesSent.Add(float64(n))
			m.bytesSent.Add(float64(bytes))
		}
	}
}

func (p *Peer) reader() {
	defer p.l.wg.Done()
	m := p.l.m
	h := p.l.cfg.Handler
	for {
		b, err := p.w.recv()
		if err != nil {
			p.close(fmt.Errorf("read: %w", err))
			return
		}
		if s := b.GetSender(); s.GetNode() != p.sender.GetNode() || s.GetIncarnation() != p.sender.GetIncarnation() {
			m.batchesDropped.Inc()
			p.l.log.Warn("peer batch from an unexpected sender dropped", "peer", p.id, "sender", ID(s.GetNode(), s.GetIncarnation()))
			continue
		}
		m.batchesReceived.Inc()
		m.envelopesReceived.Add(float64(len(b.Envelopes)))
		m.bytesReceived.Add(float64(proto.Size(b)))
		for _, env := range b.Envelopes {
			switch {
			case env.GetReplyTo() != 0:
				p.resolve(env)
			case env.GetHello() != nil || env.GetHelloAck() != nil:
				p.l.log.Warn("peer handshake envelope on an open link ignored", "peer", p.id)
			default:
				if env.GetGoodbye() != nil {
					// The peer is going away: hand the Goodbye over, then end the link
					// from this side, which is what the peer's Links.Goodbye waits for.
					p.goodbye.Store(true)
					h.Handle(p, env)
					p.close(fmt.Errorf("peer said goodbye: %s", env.GetGoodbye().GetReason()))
					return
				}
				h.Handle(p, env)
			}
		}
	}
}

func (p *Peer) resolve(env *meshv1.Envelope) {
	p.mu.Lock()
	ch := p.pending[env.GetReplyTo()]
	delete(p.pending, env.GetReplyTo())
	p.mu.Unlock()
	if ch == nil {
		p.l.m.lateReplies.Inc()
		return
	}
	ch <- env
}

// close ends the link once: fails pending requests, drops the queue, cancels the
// stream and tells Links.
func (p *Peer) close(err error) {
	p.closeOnce.Do(func() {
		if err == nil {
			err = errors.New("closed")
		}
		p.mu.Lock()
		p.err = err
		dropped := len(p.queue)
		p.queue = nil
		p.qbytes = 0
		p.pending = nil
		p.signalSpaceLocked()
		close(p.done)
		p.mu.Unlock()
		if dropped > 0 {
			p.l.m.queueDrops.Add(float64(dropped))
		}
		if p.cancel != nil {
			p.cancel()
		}
		p.l.detach(p, err, p.goodbye.Load())
	})
}
