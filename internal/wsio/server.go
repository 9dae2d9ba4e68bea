package wsio

import (
	"bufio"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// Server owns the connections it upgrades, the epoll poller and its workers.
type Server struct {
	cfg   Config
	log   *slog.Logger
	poll  *poller // nil in goroutine mode
	met   *metrics
	pools pools
	wpool sync.Pool // gorilla's write buffer pool; our write path never draws from it

	mu     sync.RWMutex
	closed bool
	conns  map[uint32]*Conn
	nextID uint32

	// wg counts every connection from Upgrade to shutdown and every goroutine or
	// timer working for one (reader, flusher, OnClose delivery, close timer). Adds
	// happen only while the connection's own count is held.
	wg sync.WaitGroup

	pmu      sync.Mutex
	partials map[*Conn]struct{} // epoll conns with a partial frame or message pending

	// flushq hands connections with something to write to the flush workers; fwg
	// counts the workers, which end when Close closes flushq after wg is done.
	flushq chan *Conn
	fwg    sync.WaitGroup

	rings     atomic.Int32 // flush workers that submit writes through io_uring
	uringOnce sync.Once    // logs once why io_uring is not used
}

// flushQueueLen bounds the flush workers' queue: a fan-out to a room this large
// needs no goroutine per connection.
const flushQueueLen = 8192

// NewServer validates cfg, fills defaults and, in epoll mode, starts the poller, the
// read workers and the partial-input sweeper.
func NewServer(cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		conns:    make(map[uint32]*Conn),
		partials: make(map[*Conn]struct{}),
	}
	if s.met, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	s.flushq = make(chan *Conn, flushQueueLen)
	if cfg.Mode == ModeEpoll {
		p, err := newPoller(s)
		if err != nil {
			return nil, err
		}
		s.poll = p
	}
	s.fwg.Add(cfg.FlushWorkers)
	for range cfg.FlushWorkers {
		go s.flushWorker(s.newFlushBatch())
	}
	return s, nil
}

// Batching reports whether socket writes are submitted in io_uring batches
// (Config.WriteBatching is BatchAuto and the kernel allows it).
func (s *Server) Batching() bool { return s.rings.Load() > 0 }

// Mode reports the read mode in effect (ModeAuto resolved).
func (s *Server) Mode() Mode { return s.cfg.Mode }

// Len reports how many connections are open (upgraded and not yet closed).
func (s *Server) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.conns)
}

// Upgrade performs the handshake with up (gorilla's Upgrader; nil means its
// defaults) and returns a Conn that is not reading yet. Errors are as gorilla's (it
// has already written the HTTP error response); ErrClosed after Close. up is copied:
// its read and write buffer settings and compression are overridden, since the
// transport manages buffers itself and compression is not supported.
func (s *Server) Upgrade(w http.ResponseWriter, r *http.Request, up *websocket.Upgrader, h http.Header) (*Conn, error) {
	s.mu.RLock()
	closed := s.closed
	s.mu.RUnlock()
	if closed {
		http.Error(w, "server closing", http.StatusServiceUnavailable)
		return nil, ErrClosed
	}
	var u websocket.Upgrader
	if up != nil {
		u = *up
	}
	// The smallest read buffer gorilla accepts (a control frame's payload), and no
	// write buffer at rest: an idle connection holds neither.
	u.ReadBufferSize = maxControlPayload
	u.WriteBufferSize = 0
	u.WriteBufferPool = &s.wpool
	u.EnableCompression = false

	c := &Conn{s: s, handshake: true}
	c.nio.c = c
	hw := hijackWriter{ResponseWriter: w, c: c}
	ws, err := u.Upgrade(&hw, r, h)
	if err != nil {
		return nil, err
	}
	c.ws = ws
	c.handshake = false
	ws.SetReadLimit(int64(s.cfg.MaxMessageBytes))
	ws.SetPingHandler(c.onPing)
	ws.SetPongHandler(c.onPong)
	ws.SetCloseHandler(c.onClose)
	c.lastRead.Store(time.Now().UnixNano())
	// The descriptor serves non-blocking writes in both modes, and reads in epoll
	// mode.
	if sc, ok := c.nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			c.rc, c.epoll = rc, s.poll != nil
		}
	}
	if !c.epoll {
		c.done = make(chan struct{})
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = c.nc.Close()
		return nil, ErrClosed
	}
	for {
		s.nextID++
		if _, used := s.conns[s.nextID]; s.nextID != 0 && !used {
			break
		}
	}
	c.id = s.nextID
	s.conns[c.id] = c
	s.wg.Add(1)
	s.mu.Unlock()
	return c, nil
}

// Close closes every connection still open with 1001 (going away) — each started
// one gets OnClose — waits for them and for their goroutines, then stops the poller
// and the workers. Upgrades after Close fail with ErrClosed.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	conns := make([]*Conn, 0, len(s.conns))
	for _, c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.CloseNow(websocket.CloseGoingAway, "server shutting down")
	}
	s.wg.Wait()
	// Every connection is closed and every flush has ended: nothing kicks any more.
	close(s.flushq)
	s.fwg.Wait()
	if s.poll != nil {
		s.poll.close()
	}
	return nil
}

func (s *Server) lookup(id uint32) *Conn {
	s.mu.RLock()
	c := s.conns[id]
	s.mu.RUnlock()
	return c
}

// forget removes a closed connection from the server's indexes.
func (s *Server) forget(c *Conn) {
	s.mu.Lock()
	if s.conns[c.id] == c {
		delete(s.conns, c.id)
	}
	s.mu.Unlock()
	s.pmu.Lock()
	if c.inPartials {
		delete(s.partials, c)
		c.inPartials = false
	}
	s.pmu.Unlock()
}

// hijackWriter hands gorilla our connIO instead of the raw socket, with a tiny
// bufio.ReadWriter that becomes garbage after the handshake.
type hijackWriter struct {
	http.ResponseWriter
	c *Conn
}

// Hijack implements http.Hijacker.
func (hw *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := hw.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("wsio: response does not implement http.Hijacker")
	}
	nc, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	hw.c.nc = nc
	if brw.Reader.Buffered() > 0 {
		// gorilla refuses a client that sent data before the handshake completed;
		// showing it the original reader lets it say so (and close the socket).
		return &hw.c.nio, brw, nil
	}
	const tiny = 16
	return &hw.c.nio, bufio.NewReadWriter(bufio.NewReaderSize(&hw.c.nio, tiny), bufio.NewWriterSize(&hw.c.nio, tiny)), nil
}

// gorilla's control-frame handlers, the same in both modes. In epoll mode gorilla
// only sees pings and pongs interleaved in a fragmented message; the read path
// handles the others itself the same way.

func (c *Conn) onPing(data string) error {
	c.writePong(data)
	return nil
}

func (c *Conn) onPong(string) error { return nil }

func (c *Conn) onClose(code int, text string) error {
	if !c.epoll && c.trk.badClose {
		c.fail(websocket.CloseProtocolError, "close frame payload of one byte")
		return nil
	}
	c.peerClose(code, text)
	return nil
}
