package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/roomcast/roomcast/fabric"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/wsio"
)

// Verifier checks client tokens. *jwtauth.Verifier implements it; its errors wrap
// jwtauth.ErrExpired when the token has expired.
type Verifier interface {
	Verify(token string) (*jwtauth.Claims, error)
}

// Defaults for Config fields left zero.
const (
	DefaultAuthTimeout     = 5 * time.Second
	DefaultPingInterval    = 25 * time.Second
	DefaultPongTimeout     = 10 * time.Second
	DefaultMaxRoomsPerConn = 128
	DefaultMaxConnsPerUser = 64
	DefaultCommandRate     = 50
	DefaultCommandBurst    = 100
	DefaultConnectRate     = 1000
	DefaultDrainTimeout    = 10 * time.Second
	// DefaultReleaseAfterConnects is the connect burst after which the node hands
	// the handshakes' garbage back to the operating system (see
	// Config.ReleaseAfterConnects).
	DefaultReleaseAfterConnects = 1000
	defaultMaxMessageBytes      = 65536
	// maxPendingCommands bounds a connection's command queue; beyond it commands are
	// refused with RATE_LIMITED, because a client that far ahead is not waiting for
	// its replies.
	maxPendingCommands = 64
	// commandTimeout bounds one command's calls into the fabric.
	commandTimeout = 10 * time.Second
	// sweepEvery is how often the sweeper walks the connections.
	sweepEvery = time.Second
)

// Config configures a Node. Name, Fabric, Verifier and Namespaces are required; the
// other fields have defaults.
type Config struct {
	// Name is the node's name; connection ids are fabric.ConnID(Name, seq). It must
	// not contain '@'.
	Name string
	// Fabric is the rest of the cluster (the mesh).
	Fabric Fabric
	// Verifier checks client tokens.
	Verifier Verifier
	// Namespaces is the live namespace table.
	Namespaces *fabric.Namespaces
	// Transport configures the node's own wsio server.
	Transport wsio.Config
	// AllowedOrigins lists the exact origins (e.g. "https://app.example.com") whose
	// browsers may connect; a request with another Origin header gets 403 before any
	// upgrade. Requests without an Origin header (non-browser clients) are allowed.
	// "*" allows every origin (development only; New logs a warning).
	AllowedOrigins []string
	// AuthTimeout is how long a new connection may take to send connect (default 5s);
	// then it is closed with 4501.
	AuthTimeout time.Duration
	// PingInterval is how often the node pushes an app-level ping and sends a
	// WebSocket ping (default 25s).
	PingInterval time.Duration
	// PongTimeout is the grace after PingInterval: a connection from which no frame
	// arrived for PingInterval+PongTimeout is closed with 4002 (default 10s).
	PongTimeout time.Duration
	// MaxRoomsPerConn caps the rooms one connection is in (default 128).
	MaxRoomsPerConn int
	// MaxConnsPerUser caps one user's connections across the cluster (default 64;
	// negative means unlimited).
	MaxConnsPerUser int
	// CommandRate is the sustained commands per second per connection (default 50).
	CommandRate float64
	// CommandBurst is the per-connection command burst (default 100). Commands beyond
	// it get RATE_LIMITED; 2*CommandBurst refused in a row close the connection
	// with 4005.
	CommandBurst int
	// ConnectRate is the node-wide rate of new connections per second (default 1000,
	// burst twice that); beyond it upgrades get HTTP 503.
	ConnectRate float64
	// DrainTimeout bounds Drain (default 10s).
	DrainTimeout time.Duration
	// ReleaseAfterConnects makes the node return freed memory to the operating
	// system (a garbage collection and debug.FreeOSMemory, a few tens of
	// milliseconds of CPU) once a burst of at least this many upgrades is followed by
	// a quiet sweep period (1s with fewer than a hundredth as many upgrades). Each handshake leaves several kilobytes of
	// garbage (net/http's hijacked buffers, the request, token parsing) against about
	// 2 KB that an idle connection keeps; without the release, a node that has just
	// accepted many connections holds two to three times their live memory until
	// the runtime's scavenger slowly returns it. Default 1000; negative disables it.
	ReleaseAfterConnects int
	// Logger receives the node's logs (default slog.Default()).
	Logger *slog.Logger
	// Registerer receives the node's metrics; nil means do not register.
	Registerer prometheus.Registerer

	// now is the clock (tests replace it).
	now func() time.Time
}

// Node is the WebSocket edge of one roomcast node. Create it with New, serve it as an
// http.Handler on the client port, give it to the mesh as its Edge, and end it with
// Drain and Close.
type Node struct {
	cfg      Config
	log      *slog.Logger
	fab      Fabric
	srv      *wsio.Server
	upgrader websocket.Upgrader
	connRate *rate.Limiter
	anyOrig  bool
	origins  map[string]struct{}
	met      *metrics
	now      func() time.Time

	ctx      context.Context // lifetime of the node: cancelled by Close
	cancel   context.CancelFunc
	seq      atomic.Uint64
	upgrades atomic.Uint64 // successful upgrades, for the sweeper's burst detection
	releases atomic.Uint64 // memory releases after connect bursts (tests read it)

	// mu guards conns, open, draining, closed, stopped and drained.
	mu       sync.Mutex
	conns    map[string]*conn // every open connection by id
	open     int              // connections not yet reported closed by wsio
	draining bool
	closed   bool
	stopped  bool          // no more goroutines may be started
	drained  chan struct{} // closed when open reaches 0 during Drain
	wg       sync.WaitGroup

	roomsMu sync.RWMutex
	rooms   map[string]*room

	sweepStop chan struct{}
	sweepDone chan struct{}
	closeOnce sync.Once
}

// New validates cfg, fills defaults and starts the node's sweeper and transport.
func New(cfg Config) (*Node, error) {
	if cfg.Name == "" || strings.Contains(cfg.Name, "@") {
		return nil, errors.New("node: name is required and must not contain '@'")
	}
	if cfg.Fabric == nil || cfg.Verifier == nil || cfg.Namespaces == nil {
		return nil, errors.New("node: fabric, verifier and namespaces are required")
	}
	if cfg.AuthTimeout <= 0 {
		cfg.AuthTimeout = DefaultAuthTimeout
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = DefaultPingInterval
	}
	if cfg.PongTimeout <= 0 {
		cfg.PongTimeout = DefaultPongTimeout
	}
	if cfg.MaxRoomsPerConn <= 0 {
		cfg.MaxRoomsPerConn = DefaultMaxRoomsPerConn
	}
	switch {
	case cfg.MaxConnsPerUser == 0:
		cfg.MaxConnsPerUser = DefaultMaxConnsPerUser
	case cfg.MaxConnsPerUser < 0:
		cfg.MaxConnsPerUser = 0 // the fabric's "no limit"
	}
	if cfg.CommandRate <= 0 {
		cfg.CommandRate = DefaultCommandRate
	}
	if cfg.CommandBurst <= 0 {
		cfg.CommandBurst = DefaultCommandBurst
	}
	if cfg.ConnectRate <= 0 {
		cfg.ConnectRate = DefaultConnectRate
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	if cfg.ReleaseAfterConnects == 0 {
		cfg.ReleaseAfterConnects = DefaultReleaseAfterConnects
	}
	if cfg.Transport.MaxMessageBytes <= 0 {
		cfg.Transport.MaxMessageBytes = defaultMaxMessageBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.Transport.Logger == nil {
		cfg.Transport.Logger = cfg.Logger
	}
	log := cfg.Logger.With("node", cfg.Name)
	n := &Node{
		cfg:       cfg,
		log:       log,
		fab:       cfg.Fabric,
		now:       cfg.now,
		connRate:  rate.NewLimiter(rate.Limit(cfg.ConnectRate), max(1, int(2*cfg.ConnectRate))),
		origins:   make(map[string]struct{}, len(cfg.AllowedOrigins)),
		conns:     make(map[string]*conn),
		rooms:     make(map[string]*room),
		sweepStop: make(chan struct{}),
		sweepDone: make(chan struct{}),
	}
	for _, o := range cfg.AllowedOrigins {
		if o == "*" {
			n.anyOrig = true
			continue
		}
		n.origins[o] = struct{}{}
	}
	if n.anyOrig {
		log.Warn("allowing websocket upgrades from any origin; use only in development")
	}
	met, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	n.met = met
	n.upgrader = websocket.Upgrader{
		Subprotocols: []string{SubprotocolJSON, SubprotocolProto},
		// Origins are checked in ServeHTTP, before the rate limiter and the token.
		CheckOrigin:      func(*http.Request) bool { return true },
		HandshakeTimeout: 10 * time.Second,
	}
	srv, err := wsio.NewServer(cfg.Transport)
	if err != nil {
		return nil, fmt.Errorf("node: transport: %w", err)
	}
	n.srv = srv
	n.ctx, n.cancel = context.WithCancel(context.Background())
	go n.sweeper()
	return n, nil
}

// ServeHTTP upgrades a client request to a WebSocket connection (the /ws endpoint).
// It refuses disallowed origins (403), overload and draining (503) and an invalid
// Authorization bearer token (401) before the upgrade.
func (n *Node) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if origin := r.Header.Get("Origin"); origin != "" && !n.anyOrig {
		if _, ok := n.origins[origin]; !ok {
			n.log.Debug("refused upgrade from origin", "origin", origin, "remote", r.RemoteAddr)
			http.Error(w, "origin not allowed", http.StatusForbidden)
			return
		}
	}
	n.mu.Lock()
	refuse := n.draining || n.closed
	n.mu.Unlock()
	if refuse {
		http.Error(w, "node is draining", http.StatusServiceUnavailable)
		return
	}
	if !n.connRate.Allow() {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many new connections", http.StatusServiceUnavailable)
		return
	}
	var claims *jwtauth.Claims
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			http.Error(w, "authorization must be a bearer token", http.StatusUnauthorized)
			return
		}
		c, err := n.cfg.Verifier.Verify(strings.TrimSpace(tok))
		if err != nil {
			n.log.Debug("refused upgrade with invalid token", "remote", r.RemoteAddr, "err", err)
			http.Error(w, "invalid token", http.StatusUnauthorized)
			return
		}
		claims = c
	}
	ws, err := n.srv.Upgrade(w, r, &n.upgrader, nil)
	if err != nil {
		n.log.Debug("upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	n.upgrades.Add(1)
	c := n.newConn(ws, claims)
	n.mu.Lock()
	if n.draining || n.closed {
		n.mu.Unlock()
		ws.CloseNow(int(fabric.CloseShutdown), "draining")
		return
	}
	n.conns[c.id] = c
	n.open++
	n.mu.Unlock()
	n.met.conns.Inc()
	if claims != nil {
		// The header authenticated the connection: establish it now (before any
		// client command can be queued), so the backend can reach it even before the
		// client's first command.
		c.enqueue(implicitConnect)
	}
	if err := ws.Start(c); err != nil {
		n.log.Debug("start failed", "conn", c.id, "err", err)
		c.closeWith(fabric.CloseInternalError, "internal error", closeDrop)
		c.gone()
	}
}

// gone accounts, once, for the end of the connection's transport.
func (c *conn) gone() {
	if c.ended.CompareAndSwap(false, true) {
		c.n.connGone()
	}
}

// connGone accounts for a connection whose transport has ended.
func (n *Node) connGone() {
	n.met.conns.Dec()
	n.mu.Lock()
	n.open--
	if n.open == 0 && n.drained != nil {
		close(n.drained)
		n.drained = nil
	}
	n.mu.Unlock()
}

// spawn runs f on a goroutine the node owns (Close waits for it). It reports false,
// without running f, once the node has stopped.
func (n *Node) spawn(f func()) bool {
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return false
	}
	n.wg.Add(1)
	n.mu.Unlock()
	go func() {
		defer n.wg.Done()
		f()
	}()
	return true
}

// snapshot returns the open connections.
func (n *Node) snapshot() []*conn {
	n.mu.Lock()
	out := make([]*conn, 0, len(n.conns))
	for _, c := range n.conns {
		out = append(out, c)
	}
	n.mu.Unlock()
	return out
}

// Drain stops accepting connections (503), then pushes disconnect{4000,
// reconnect:true} to every connection and closes it with 4000, spreading the closes
// over half the drain time so the clients do not all reconnect elsewhere at once. It
// returns when every connection is closed, or with the context's error when ctx or
// DrainTimeout ends first.
func (n *Node) Drain(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.DrainTimeout)
	defer cancel()
	n.mu.Lock()
	n.draining = true
	done := make(chan struct{})
	if n.open == 0 {
		close(done)
	} else {
		if n.drained != nil {
			close(n.drained) // an earlier Drain's waiter: let it finish too
		}
		n.drained = done
	}
	n.mu.Unlock()

	conns := n.snapshot()
	n.log.Info("draining", "conns", len(conns))
	const maxSteps = 100
	steps := min(len(conns), maxSteps)
	if steps > 0 {
		per := (len(conns) + steps - 1) / steps
		interval := n.cfg.DrainTimeout / 2 / time.Duration(steps)
		var timer *time.Timer
		for i := 0; i < len(conns); i += per {
			for _, c := range conns[i:min(i+per, len(conns))] {
				c.closeWith(fabric.CloseShutdown, "node shutting down", closePush)
			}
			if i+per >= len(conns) {
				break
			}
			if timer == nil {
				timer = time.NewTimer(interval)
				defer timer.Stop()
			} else {
				timer.Reset(interval)
			}
			select {
			case <-timer.C:
			case <-done:
			case <-ctx.Done():
				// Out of time: close the rest at once.
				for _, c := range conns[i+per:] {
					c.closeWith(fabric.CloseShutdown, "node shutting down", closePush)
				}
				return ctx.Err()
			}
		}
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close closes every connection (with 4000), stops the sweeper and the transport, and
// waits for the node's goroutines. It is idempotent.
func (n *Node) Close() error {
	var err error
	n.closeOnce.Do(func() {
		n.mu.Lock()
		n.closed = true
		n.mu.Unlock()
		close(n.sweepStop)
		<-n.sweepDone
		for _, c := range n.snapshot() {
			c.closeWith(fabric.CloseShutdown, "node shutting down", closePush)
		}
		err = n.srv.Close()
		n.cancel()
		n.mu.Lock()
		n.stopped = true
		n.mu.Unlock()
		n.wg.Wait()
	})
	return err
}

// conn returns the connected connection with id, or fabric.ErrNotFound.
func (n *Node) connected(id string) (*conn, error) {
	n.mu.Lock()
	c := n.conns[id]
	n.mu.Unlock()
	if c == nil || !c.isConnected() {
		return nil, fabric.Errorf(fabric.CodeNotFound, "connection %q not found", id)
	}
	return c, nil
}

// Stats reports the node's connection and room counts (mesh.Edge).
func (n *Node) Stats() (conns, rooms int) {
	n.mu.Lock()
	conns = len(n.conns)
	n.mu.Unlock()
	n.roomsMu.RLock()
	rooms = len(n.rooms)
	n.roomsMu.RUnlock()
	return conns, rooms
}
