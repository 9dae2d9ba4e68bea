package peer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/roomcast/roomcast/fabric"
	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
)

// Protocol numbers of the PeerService this package speaks.
const (
	// ProtocolMin is the lowest protocol number this package speaks.
	ProtocolMin uint32 = 1
	// ProtocolMax is the highest protocol number this package speaks.
	ProtocolMax uint32 = 1
)

// Errors returned by this package. They are also fabric errors of the code given, so
// fabric.CodeOf and errors.Is(err, fabric.ErrUnavailable) work on them.
var (
	// ErrQueueFull means a link's send queue is at its bound (fabric.CodeUnavailable).
	ErrQueueFull = errors.New("peer link queue full")
	// ErrLinkDown means there is no established link to the node, or it broke while
	// the call was pending (fabric.CodeUnavailable).
	ErrLinkDown = errors.New("peer link down")
	// ErrClosed means Links was closed (fabric.CodeUnavailable).
	ErrClosed = errors.New("peer links closed")
	// ErrBadPeer means a gossip ID that does not name a node (fabric.CodeBadRequest).
	ErrBadPeer = errors.New("invalid peer id")
)

func unavailable(err error) error { return fmt.Errorf("%w: %w", err, fabric.ErrUnavailable) }

// Handler receives the envelopes of every link that are not replies.
type Handler interface {
	// Handle is called on the link's reader goroutine, in the order the peer sent the
	// envelopes. It must not block for long: nothing else is read from the link (not
	// even replies) until it returns. Use from.Reply to answer a request.
	Handle(from *Peer, env *meshv1.Envelope)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(from *Peer, env *meshv1.Envelope)

// Handle calls f(from, env).
func (f HandlerFunc) Handle(from *Peer, env *meshv1.Envelope) { f(from, env) }

// Resolver returns the peer-link address (host:port) of a node by gossip ID. It is
// called before every dial, so an address change is picked up on redial.
type Resolver func(ctx context.Context, id string) (addr string, err error)

// Config configures Links.
type Config struct {
	// Cluster is the cluster name; links between clusters are refused. Required.
	Cluster string
	// Node is this node's stable name. Required.
	Node string
	// Incarnation is this process's incarnation. Required (non-zero).
	Incarnation uint64
	// Version is the roomcast release, sent in the handshake for logs.
	Version string
	// Secrets are the cluster link secrets: Hellos are signed with the first, any of
	// them is accepted. At least one, each at least 16 bytes. Required.
	Secrets [][]byte
	// Resolve finds a node's peer address. Required.
	Resolve Resolver
	// Handler receives incoming envelopes. Required.
	Handler Handler

	// ProtocolMin and ProtocolMax bound the protocols this node speaks (defaults
	// ProtocolMin and ProtocolMax); tests use them to simulate other releases.
	ProtocolMin, ProtocolMax uint32

	// MaxQueueEnvelopes bounds a link's send queue in envelopes (default 65536).
	MaxQueueEnvelopes int
	// MaxQueueBytes bounds a link's send queue in encoded bytes (default 64 MiB).
	MaxQueueBytes int
	// MaxBatchEnvelopes bounds the envelopes of one Batch (default 1024).
	MaxBatchEnvelopes int
	// MaxBatchBytes bounds the encoded size of one Batch (default 1 MiB); a larger
	// single envelope still goes alone. Keep it under the gRPC message size limit.
	MaxBatchBytes int

	// MaxEnvelopeBytes refuses larger envelopes at Send with fabric.ErrTooLarge
	// (default 4 MiB − 64 KiB), so one oversized envelope cannot exceed the gRPC
	// message limit and break the link for everybody.
	MaxEnvelopeBytes int

	// KeepaliveTime and KeepaliveTimeout are the dialer's gRPC keepalive pings
	// (defaults 10 s, gRPC's minimum for clients, and 3 s): they end a link over a
	// silently dead network path. Crashed peers are noticed at once (the connection
	// is reset); memberlist remains the primary detector of partitions. Serve the
	// PeerService with ServerOptions so the listener accepts these pings.
	KeepaliveTime, KeepaliveTimeout time.Duration

	// HandshakeTimeout bounds a dial plus handshake (default 5 s).
	HandshakeTimeout time.Duration
	// BackoffMin and BackoffMax bound the redial backoff (defaults 50 ms and 5 s).
	BackoffMin, BackoffMax time.Duration
	// Backoff returns the delay before redial attempt n (n ≥ 1). Default:
	// FullJitter(BackoffMin, BackoffMax). Tests inject a deterministic one.
	Backoff func(attempt int) time.Duration
	// DialOptions are added to the gRPC client options (for example TLS credentials;
	// the default is plaintext).
	DialOptions []grpc.DialOption

	// EventBuffer is the capacity of the Events channel (default 1024).
	EventBuffer int
	// Logger logs link changes (default slog.Default()).
	Logger *slog.Logger
	// Registerer registers the metrics; nil means do not register.
	Registerer prometheus.Registerer
}

// FullJitter returns exponential backoff with full jitter: attempt n waits a uniformly
// random duration in [0, min(max, base·2^(n-1))].
func FullJitter(base, maxDelay time.Duration) func(attempt int) time.Duration {
	return func(attempt int) time.Duration {
		ceil := maxDelay
		if attempt < 1 {
			attempt = 1
		}
		if attempt < 32 {
			if d := base << (attempt - 1); d > 0 && d < maxDelay {
				ceil = d
			}
		}
		return time.Duration(rand.Int64N(int64(ceil) + 1))
	}
}

func (c *Config) fill() error {
	if c.Cluster == "" || c.Node == "" || c.Incarnation == 0 {
		return errors.New("peer: cluster, node and incarnation are required")
	}
	if strings.ContainsAny(c.Node, " \t\n") {
		return errors.New("peer: node name must not contain spaces")
	}
	if len(c.Secrets) == 0 {
		return errors.New("peer: at least one secret is required")
	}
	for _, s := range c.Secrets {
		if len(s) < 16 {
			return errors.New("peer: secrets must be at least 16 bytes")
		}
	}
	if c.Resolve == nil || c.Handler == nil {
		return errors.New("peer: resolve and handler are required")
	}
	if c.ProtocolMin == 0 {
		c.ProtocolMin = ProtocolMin
	}
	if c.ProtocolMax == 0 {
		c.ProtocolMax = ProtocolMax
	}
	if c.ProtocolMin > c.ProtocolMax {
		return errors.New("peer: protocol min above max")
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.MaxQueueEnvelopes, 65536)
	def(&c.MaxQueueBytes, 64<<20)
	def(&c.MaxBatchEnvelopes, 1024)
	def(&c.MaxBatchBytes, 1<<20)
	def(&c.EventBuffer, 1024)
	def(&c.MaxEnvelopeBytes, 4<<20-64<<10)
	if c.MaxBatchBytes > c.MaxEnvelopeBytes {
		c.MaxBatchBytes = c.MaxEnvelopeBytes
	}
	if c.KeepaliveTime <= 0 {
		c.KeepaliveTime = 10 * time.Second
	}
	if c.KeepaliveTimeout <= 0 {
		c.KeepaliveTimeout = 3 * time.Second
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.BackoffMin <= 0 {
		c.BackoffMin = 50 * time.Millisecond
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 5 * time.Second
	}
	if c.BackoffMax < c.BackoffMin {
		return errors.New("peer: backoff max below min")
	}
	if c.Backoff == nil {
		c.Backoff = FullJitter(c.BackoffMin, c.BackoffMax)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// EventKind is the kind of a link Event.
type EventKind int

// Event kinds.
const (
	// LinkUp: a link to the node was established (by either side).
	LinkUp EventKind = iota + 1
	// LinkDown: the established link to the node ended. Err says why; Goodbye is set
	// when the peer announced it was going away.
	LinkDown
	// DialFailed: an attempt to dial the node failed; a redial follows after backoff.
	DialFailed
)

// String names the kind.
func (k EventKind) String() string {
	switch k {
	case LinkUp:
		return "up"
	case LinkDown:
		return "down"
	case DialFailed:
		return "dial_failed"
	}
	return "unknown"
}

// Event reports a change of the link to one node.
type Event struct {
	// Kind is what happened.
	Kind EventKind
	// Peer is the node's gossip ID.
	Peer string
	// Outbound is true when this node dialed the link concerned.
	Outbound bool
	// Goodbye is set on LinkDown when the peer said Goodbye before the link ended.
	Goodbye bool
	// Err is the cause of LinkDown or DialFailed.
	Err error
}

// ID returns the gossip ID of a node name and incarnation, "<name>.<incarnation>".
func ID(node string, incarnation uint64) string {
	return node + "." + strconv.FormatUint(incarnation, 10)
}

// ParseID splits a gossip ID into node name and incarnation.
func ParseID(id string) (node string, incarnation uint64, ok bool) {
	i := strings.LastIndexByte(id, '.')
	if i <= 0 {
		return "", 0, false
	}
	inc, err := strconv.ParseUint(id[i+1:], 10, 64)
	if err != nil || inc == 0 {
		return "", 0, false
	}
	return id[:i], inc, true
}

// remote is what Links knows about one node. All fields are guarded by Links.mu.
type remote struct {
	id        string
	sender    *meshv1.Sender
	active    *Peer
	dialing   bool // an outbound dial or handshake is in progress
	backoff   bool // the last dial failed and the maintainer is waiting to redial
	lastErr   error
	running   bool          // a maintainer goroutine exists
	forgotten bool          // Forget was called or the peer said Goodbye
	changed   chan struct{} // closed and replaced on every change of the above
}

func (r *remote) notify() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// Links manages this node's peer links: one per remote node, dialed on demand, kept up
// with backoff, torn down by Close.
type Links struct {
	cfg    Config
	self   *meshv1.Sender
	selfID string
	log    *slog.Logger
	m      *metrics
	events chan Event
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	leaving bool // Goodbye was called: no new links
	remotes map[string]*remote
}

// New validates cfg, fills its defaults and returns Links with no link yet.
func New(cfg Config) (*Links, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Links{
		cfg:     cfg,
		self:    &meshv1.Sender{Node: cfg.Node, Incarnation: cfg.Incarnation},
		selfID:  ID(cfg.Node, cfg.Incarnation),
		log:     cfg.Logger.With("component", "peer", "self", ID(cfg.Node, cfg.Incarnation)),
		m:       m,
		events:  make(chan Event, cfg.EventBuffer),
		ctx:     ctx,
		cancel:  cancel,
		remotes: make(map[string]*remote),
	}
	return l, nil
}

// ID returns this node's gossip ID.
func (l *Links) ID() string { return l.selfID }

// Events returns the channel of link events. It is never closed; stop reading after
// Close.
func (l *Links) Events() <-chan Event { return l.events }

func (l *Links) emit(ev Event) {
	select {
	case l.events <- ev:
	default:
		l.m.eventDrops.Inc()
	}
}

// Server returns the PeerService implementation that accepts inbound links for these
// Links; register it with meshv1.RegisterPeerServiceServer (or Register).
func (l *Links) Server() *Server { return &Server{l: l} }

// MaxMessageBytes bounds one batch on a link, both ways. gRPC's 4 MiB default is too
// small for a shard handover (history of many rooms in one envelope); callers still
// split large transfers (a rebuild asks for a few shards at a time).
const MaxMessageBytes = 64 << 20

// ServerOptions returns the gRPC server options the peer port should use: keepalive
// enforcement that accepts the dialers' pings (without it the server answers them
// with GOAWAY "too_many_pings" and links break), and the listener's own keepalive
// pings every second, so a listener notices a silently dead dialer quickly too.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageBytes), grpc.MaxSendMsgSize(MaxMessageBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Second, Timeout: 3 * time.Second}),
	}
}

// Register registers the PeerService for these Links on a gRPC server the caller owns.
func (l *Links) Register(s grpc.ServiceRegistrar) { meshv1.RegisterPeerServiceServer(s, l.Server()) }

// remoteLocked returns (creating it) the remote of a gossip ID and makes sure a
// maintainer keeps a link to it. l.mu must be held.
func (l *Links) remoteLocked(id string) (*remote, error) {
	if r, ok := l.remotes[id]; ok {
		return r, nil
	}
	node, inc, ok := ParseID(id)
	if !ok {
		return nil, fmt.Errorf("%w %q: %w", ErrBadPeer, id, fabric.ErrBadRequest)
	}
	if id == l.selfID {
		return nil, fmt.Errorf("%w: %q is this node: %w", ErrBadPeer, id, fabric.ErrBadRequest)
	}
	r := &remote{id: id, sender: &meshv1.Sender{Node: node, Incarnation: inc}, changed: make(chan struct{})}
	l.remotes[id] = r
	r.running = true
	l.wg.Add(1)
	go l.maintain(r)
	return r, nil
}

// Link returns the established link to a node, dialing it if needed and waiting for
// the first attempt, bounded by ctx. While the link is down and the next redial is
// pending it fails at once with ErrLinkDown.
func (l *Links) Link(ctx context.Context, id string) (*Peer, error) {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, unavailable(ErrClosed)
		}
		r, err := l.remoteLocked(id)
		if err != nil {
			l.mu.Unlock()
			return nil, err
		}
		if r.active != nil {
			p := r.active
			l.mu.Unlock()
			return p, nil
		}
		if r.backoff || r.forgotten || l.leaving {
			err := r.lastErr
			l.mu.Unlock()
			if err == nil {
				err = errors.New("not linking: forgotten or leaving")
			}
			return nil, fmt.Errorf("%w to %s (%v): %w", ErrLinkDown, id, err, fabric.ErrUnavailable)
		}
		ch := r.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w to %s: %w: %w", ErrLinkDown, id, ctx.Err(), fabric.ErrUnavailable)
		}
	}
}

// Send queues env for the node and returns without waiting for room: a full queue is
// ErrQueueFull. ctx bounds only the wait for a link being dialed.
func (l *Links) Send(ctx context.Context, id string, env *meshv1.Envelope) error {
	p, err := l.Link(ctx, id)
	if err != nil {
		return err
	}
	return p.Send(env)
}

// SendWait is Send that waits, bounded by ctx, for room in a full queue.
func (l *Links) SendWait(ctx context.Context, id string, env *meshv1.Envelope) error {
	p, err := l.Link(ctx, id)
	if err != nil {
		return err
	}
	return p.SendWait(ctx, env)
}

// Request sends env to the node as a request (setting its request_id) and waits for
// the reply, bounded by ctx. It fails with ErrLinkDown when the link breaks first.
func (l *Links) Request(ctx context.Context, id string, env *meshv1.Envelope) (*meshv1.Envelope, error) {
	p, err := l.Link(ctx, id)
	if err != nil {
		return nil, err
	}
	return p.Request(ctx, env)
}

// Forget stops keeping a link to the node: the link, if any, is closed (pending
// requests fail) and it is not redialed. A later Send dials it afresh.
func (l *Links) Forget(id string) {
	l.mu.Lock()
	r, ok := l.remotes[id]
	var p *Peer
	if ok {
		delete(l.remotes, id)
		r.forgotten = true
		p = r.active
		r.notify()
	}
	l.mu.Unlock()
	if p != nil {
		p.close(errors.New("forgotten"))
	}
}

// Peers returns the gossip IDs of the nodes with an established link, sorted.
func (l *Links) Peers() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for id, r := range l.remotes {
		if r.active != nil {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// Goodbye tells every linked node that this node is going away, so that they treat
// the disconnect as a departure rather than a failure and do not redial it. From then
// on this node dials nobody and accepts no link; Goodbye waits, bounded by ctx, until
// each peer has closed its link (which it does after reading everything queued before
// the Goodbye). Call it before Close when draining.
func (l *Links) Goodbye(ctx context.Context, reason string) {
	l.mu.Lock()
	l.leaving = true
	for _, r := range l.remotes {
		r.notify()
	}
	var ps []*Peer
	for _, r := range l.remotes {
		if r.active != nil {
			ps = append(ps, r.active)
		}
	}
	l.mu.Unlock()
	for _, p := range ps {
		_ = p.Send(&meshv1.Envelope{Body: &meshv1.Envelope_Goodbye{Goodbye: &meshv1.Goodbye{Reason: reason}}})
	}
	for _, p := range ps {
		select {
		case <-p.done:
		case <-ctx.Done():
			return
		}
	}
}

// Close ends every link, fails pending requests, stops dialing and waits for the
// goroutines it owns. It does not stop the caller's gRPC server. It is idempotent.
func (l *Links) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	var ps []*Peer
	for _, r := range l.remotes {
		if r.active != nil {
			ps = append(ps, r.active)
		}
		r.notify()
	}
	l.mu.Unlock()
	l.cancel()
	for _, p := range ps {
		p.close(unavailable(ErrClosed))
	}
	l.wg.Wait()
	return nil
}

// install makes p the link to its node, applying the tie-break. It returns false when
// p lost (the caller then closes it) and starts nothing itself.
func (l *Links) install(p *Peer, dialer *remote) (bool, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false, ErrClosed
	}
	r, err := l.remoteLocked(p.id)
	if err != nil {
		l.mu.Unlock()
		return false, err
	}
	if r.forgotten || l.leaving || (dialer != nil && dialer != r) {
		l.mu.Unlock()
		return false, errors.New("peer forgotten")
	}
	var old *Peer
	switch {
	case r.active != nil:
		if !p.beats(r.active) {
			l.mu.Unlock()
			return false, errors.New("a link dialed by the smaller id exists")
		}
		old = r.active
	case !p.outbound && r.dialing && l.selfID < p.id:
		l.mu.Unlock()
		return false, errors.New("this node, the smaller id, is dialing")
	}
	r.active = p
	p.installed.Store(true)
	r.backoff = false
	r.lastErr = nil
	r.notify()
	l.mu.Unlock()
	if old != nil {
		old.close(errors.New("superseded by a newer link"))
	}
	l.m.linksUp.Inc()
	l.log.Info("peer link up", "peer", p.id, "outbound", p.outbound, "protocol", p.protocol, "peer_version", p.version)
	l.emit(Event{Kind: LinkUp, Peer: p.id, Outbound: p.outbound})
	return true, nil
}

// detach is called once by Peer.close after p ended.
func (l *Links) detach(p *Peer, err error, goodbye bool) {
	l.mu.Lock()
	wasActive := false
	if r, ok := l.remotes[p.id]; ok && r.active == p {
		wasActive = true
		r.active = nil
		r.lastErr = err
		if goodbye {
			r.forgotten = true
			delete(l.remotes, p.id)
		}
		r.notify()
	}
	l.mu.Unlock()
	if !p.installed.Load() {
		return
	}
	l.m.linksUp.Dec()
	if wasActive || goodbye {
		l.log.Info("peer link down", "peer", p.id, "outbound", p.outbound, "goodbye", goodbye, "err", err)
	}
	l.emit(Event{Kind: LinkDown, Peer: p.id, Outbound: p.outbound, Goodbye: goodbye, Err: err})
}

// maintain keeps a link to r up until r is forgotten or Links closes.
func (l *Links) maintain(r *remote) {
	defer l.wg.Done()
	var cc *grpc.ClientConn
	var ccAddr string
	defer func() {
		if cc != nil {
			_ = cc.Close()
		}
	}()
	attempt := 0
	for {
		l.mu.Lock()
		for r.active != nil && !r.forgotten && !l.closed {
			ch := r.changed
			l.mu.Unlock()
			attempt = 0
			<-ch
			l.mu.Lock()
		}
		if r.forgotten || l.closed || l.leaving {
			r.running = false
			l.mu.Unlock()
			return
		}
		r.dialing = true
		r.notify()
		l.mu.Unlock()

		if attempt > 0 {
			l.m.reconnects.Inc()
		}
		p, err := func() (*Peer, error) {
			ctx, cancel := context.WithTimeout(l.ctx, l.cfg.HandshakeTimeout)
			defer cancel()
			addr, err := l.cfg.Resolve(ctx, r.id)
			if err != nil {
				return nil, fmt.Errorf("resolve: %w", err)
			}
			if cc == nil || addr != ccAddr {
				if cc != nil {
					_ = cc.Close()
				}
				opts := append([]grpc.DialOption{
					grpc.WithTransportCredentials(insecure.NewCredentials()),
					grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
					grpc.WithKeepaliveParams(keepalive.ClientParameters{
						Time: l.cfg.KeepaliveTime, Timeout: l.cfg.KeepaliveTimeout, PermitWithoutStream: true,
					}),
				}, l.cfg.DialOptions...)
				if cc, err = grpc.NewClient(addr, opts...); err != nil {
					return nil, fmt.Errorf("dial %s: %w", addr, err)
				}
				ccAddr = addr
			}
			return l.dial(cc, r.sender, r.id)
		}()
		installed := false
		if err == nil {
			if installed, err = l.install(p, r); installed {
				p.start()
			} else {
				p.close(err)
			}
		}

		l.mu.Lock()
		r.dialing = false
		if err != nil && r.active == nil {
			r.backoff = true
			r.lastErr = err
		}
		r.notify()
		l.mu.Unlock()
		if installed || err == nil {
			continue
		}
		attempt++
		l.m.dialFailures.Inc()
		l.log.Debug("peer dial failed", "peer", r.id, "attempt", attempt, "err", err)
		l.emit(Event{Kind: DialFailed, Peer: r.id, Outbound: true, Err: err})
		t := time.NewTimer(l.cfg.Backoff(attempt))
		l.mu.Lock()
		ch := r.changed
		l.mu.Unlock()
		// Wait out the backoff; an inbound link or Forget ends the wait early (the
		// loop then waits on the link instead of dialing).
		for waiting := true; waiting; {
			select {
			case <-t.C:
				waiting = false
			case <-l.ctx.Done():
				t.Stop()
				waiting = false
			case <-ch:
				l.mu.Lock()
				if r.active != nil || r.forgotten || l.closed || l.leaving {
					waiting = false
					t.Stop()
				}
				ch = r.changed
				l.mu.Unlock()
			}
		}
		l.mu.Lock()
		r.backoff = false
		r.notify()
		l.mu.Unlock()
	}
}
