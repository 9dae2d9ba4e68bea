package wsio

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

var (
	// ErrQueueFull is returned by Send when the message would exceed the connection's
	// send queue bounds. The connection stays open: the caller decides what to do,
	// normally CloseNow with the "slow" close code.
	ErrQueueFull = errors.New("wsio: send queue full")
	// ErrClosed is returned when a connection (or the server) is closing or closed.
	ErrClosed = errors.New("wsio: connection closed")
)

// errCloseTimeout closes a connection whose peer did not answer our close frame.
var errCloseTimeout = errors.New("wsio: close handshake timed out")

// Connection states. A connection only moves forward.
const (
	stateOpen    uint8 = iota // reading and writing
	stateClosing              // a close frame is queued or written; no new Sends
	stateClosed               // the socket is closed
)

// Handler receives a connection's input. Calls for one connection never overlap and
// come in order; OnClose comes exactly once, after the last OnMessage.
type Handler interface {
	// OnMessage gets one complete data message (text is valid UTF-8). data is valid
	// only during the call. It runs on a shared worker: it must not block (hand slow
	// work off).
	OnMessage(c *Conn, binary bool, data []byte)
	// OnClose reports the end of the connection; err says why (a
	// *websocket.CloseError for a peer close or a protocol violation we closed for,
	// io.ErrUnexpectedEOF when the peer vanished without a close frame, net errors
	// otherwise).
	OnClose(c *Conn, err error)
}

// Conn is one server-side WebSocket connection. Its methods are safe for concurrent
// use; see the package documentation for who owns which field.
type Conn struct {
	s     *Server
	id    uint32
	nc    net.Conn        // the hijacked socket
	rc    syscall.RawConn // fd access (only inside Control, Read or Write): epoll reads, non-blocking writes
	ws    *websocket.Conn // frames messages (reads and writes) over nio
	nio   connIO          // the net.Conn gorilla sees; an interior pointer, no allocation
	epoll bool

	lastRead atomic.Int64 // unix nanos of the last complete frame received

	// handshake is true only while Server.Upgrade runs gorilla's handshake; gorilla's
	// writes then go straight to the socket. Written before the Conn is published.
	handshake bool

	mu          sync.Mutex // guards everything below up to the read state
	state       uint8
	h           Handler
	flushing    bool        // a flush goroutine owns the socket's write side
	queue       *[]*Message // messages not yet taken by the flusher (pooled)
	qBytes      int
	out         *[]byte // bytes gorilla framed, waiting for the flusher (pooled)
	closeReq    bool    // a close frame must be written after the queue
	closeTaken  bool    // the flusher has taken the close request
	closeDone   bool    // our close frame has reached the socket
	closeNow    bool    // close the socket right after our close frame
	closeFramed bool    // a close frame (ours or gorilla's) has been appended to out
	peerClosed  bool    // the peer's close frame was received
	stopRead    bool    // stop reading: a close frame was received or we failed the conn
	pongWanted  bool    // the flusher owes the peer a pong carrying pongData
	pongData    string  // payload of the most recent ping not yet answered
	closeCode   int
	closeText   string
	closeErr    error       // why the connection ended (first cause wins)
	timer       *time.Timer // bounds the closing handshake
	readBusy    bool        // epoll: a worker is inside the read path
	readDone    bool        // epoll: the read path will not be armed again
	notified    bool        // OnClose was delivered or handed to a goroutine
	done        chan struct{}

	// Read state of epoll mode, owned by the worker that holds readBusy (EPOLLONESHOT
	// lets only one worker in at a time).
	in           []byte // raw bytes read and not yet consumed by gorilla (pooled)
	inPool       bool   // in came from the pool
	r, lim, scan int    // in[r:lim] is exposed to gorilla; in[lim:scan] holds whole frames of an open message
	inMsg        bool
	msgOp        byte
	msgLen       int64
	msgUTF8      utf8Stream   // fragmented text: validated frame by frame, to fail fast
	partialSince atomic.Int64 // unix nanos since a partial frame/message is pending; 0 when none
	inPartials   bool         // guarded by Server.pmu

	// Read state of goroutine mode, owned by the reader goroutine.
	trk            tracker
	deadlineSet    bool
	deadlineAt     int64
	partialExpired bool
	trackSince     int64
}

// Subprotocol returns the negotiated subprotocol ("" when none).
func (c *Conn) Subprotocol() string { return c.ws.Subprotocol() }

// RemoteAddr returns the peer's network address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// LastRead returns the time (unix nanoseconds) the last frame of any kind, pings and
// pongs included, was received, or the upgrade time before that. The owner of the
// connection uses it for idle and heartbeat timeouts, since the transport sets no
// read deadlines.
func (c *Conn) LastRead() int64 { return c.lastRead.Load() }

// Start begins reading and delivering input to h. It returns ErrClosed when the
// connection is already closed, and an error when called twice. When Start fails,
// h.OnClose is not called: the caller cleans up.
func (c *Conn) Start(h Handler) error {
	if h == nil {
		return errors.New("wsio: nil handler")
	}
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return ErrClosed
	}
	if c.h != nil {
		c.mu.Unlock()
		return errors.New("wsio: connection already started")
	}
	c.h = h
	if !c.epoll {
		// The conn's own WaitGroup count is held (state is not closed), so Add is safe.
		c.s.wg.Add(1)
		c.mu.Unlock()
		go c.readLoop()
		return nil
	}
	c.mu.Unlock()
	if err := c.s.poll.add(c); err != nil {
		c.mu.Lock()
		c.h = nil // the caller learns of the failure here, not through OnClose
		c.mu.Unlock()
		c.shutdown(err)
		return err
	}
	return nil
}

// Send enqueues m. It never blocks: it returns ErrQueueFull when the queue bounds
// would be exceeded (the connection stays open) and ErrClosed once Close, CloseNow or
// a failure has begun closing the connection. Messages are written in Send order.
func (c *Conn) Send(m *Message) error {
	c.mu.Lock()
	if c.state != stateOpen {
		c.mu.Unlock()
		return ErrClosed
	}
	if c.queue == nil {
		c.queue = c.s.pools.getQueue()
	}
	if len(*c.queue)+1 > c.s.cfg.MaxQueueMessages || c.qBytes+len(m.frame) > c.s.cfg.MaxQueueBytes {
		c.mu.Unlock()
		return ErrQueueFull
	}
	*c.queue = append(*c.queue, m)
	c.qBytes += len(m.frame)
	c.kickLocked()
	c.mu.Unlock()
	return nil
}

// Ping queues a ping control frame. Control frames may overtake queued data
// messages, as RFC 6455 allows.
func (c *Conn) Ping() error {
	c.mu.Lock()
	open := c.state == stateOpen
	c.mu.Unlock()
	if !open {
		return ErrClosed
	}
	return c.writeControl(websocket.PingMessage, nil)
}

// Close writes everything queued, then a close frame with code and reason, then
// closes the socket once the peer's close frame arrives or Config.CloseWait has
// passed. Input arriving after Close is discarded. It is idempotent and does not
// block.
func (c *Conn) Close(code int, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen {
		return
	}
	c.beginCloseLocked(code, reason, &websocket.CloseError{Code: code, Text: reason})
	c.kickLocked()
}

// CloseNow discards the queue, writes a close frame with code and reason (best
// effort, bounded by Config.CloseWait) and closes the socket. It is idempotent and
// does not block.
func (c *Conn) CloseNow(code int, reason string) {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	if c.state == stateOpen {
		c.beginCloseLocked(code, reason, &websocket.CloseError{Code: code, Text: reason})
	}
	now := c.hurryLocked()
	c.mu.Unlock()
	if now {
		c.shutdown(nil)
	}
}

// fail closes the connection for a violation we detected: the close frame carries
// code and text, and OnClose gets a *websocket.CloseError with them.
func (c *Conn) fail(code int, text string) {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	if c.state == stateOpen {
		c.beginCloseLocked(code, text, &websocket.CloseError{Code: code, Text: text})
		c.s.met.violation(code)
		c.s.log.Debug("wsio: closing for a violation", "conn", c.id, "remote", c.nc.RemoteAddr(), "code", code, "reason", text)
	}
	c.stopRead = true
	now := c.hurryLocked()
	c.mu.Unlock()
	if now {
		c.shutdown(nil)
	}
}

// peerClose handles the peer's close frame: it answers with the same code (unless
// we already sent ours) and closes the socket once that is written.
func (c *Conn) peerClose(code int, text string) {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	c.peerClosed = true
	c.stopRead = true
	if c.state == stateOpen {
		c.beginCloseLocked(code, "", &websocket.CloseError{Code: code, Text: text})
	}
	now := c.hurryLocked()
	c.mu.Unlock()
	if now {
		c.shutdown(nil)
	}
}

// beginCloseLocked moves an open connection to closing with a close frame to write.
func (c *Conn) beginCloseLocked(code int, reason string, why error) {
	c.state = stateClosing
	c.closeReq = true
	c.closeCode, c.closeText = code, reason
	if c.closeErr == nil {
		c.closeErr = why
	}
}

// hurryLocked makes a closing connection drop its queue, write its close frame and
// close the socket soon: right after the close frame, and after CloseWait at the
// latest. It reports true when the close frame is already out, so the caller should
// shut down at once (after unlocking).
func (c *Conn) hurryLocked() bool {
	c.dropQueueLocked()
	c.closeNow = true
	if c.closeDone {
		return true
	}
	c.armTimerLocked()
	c.kickLocked()
	return false
}

func (c *Conn) armTimerLocked() {
	if c.timer != nil {
		return
	}
	c.s.wg.Add(1)
	c.timer = time.AfterFunc(c.s.cfg.CloseWait, func() {
		defer c.s.wg.Done()
		c.shutdown(errCloseTimeout)
	})
}

func (c *Conn) dropQueueLocked() {
	if c.queue != nil {
		c.s.pools.putQueue(c.queue)
		c.queue = nil
	}
	c.qBytes = 0
}

// kickLocked hands the connection to a flush worker unless a flush is running.
// There is no idle writer goroutine per connection: a small pool of flush workers
// serves every connection, and a connection leaves the pool's queue once nothing is
// left to write. When the queue is full (a fan-out to more connections than it
// holds), a goroutine of its own flushes the connection instead.
func (c *Conn) kickLocked() {
	if c.flushing || c.state == stateClosed {
		return
	}
	c.flushing = true
	c.s.wg.Add(1) // the conn's own count is held while not closed
	select {
	case c.s.flushq <- c:
	default:
		go c.flush()
	}
}

// round is what one flush round writes: buf, backed by out (pooled) or by the only
// message of batch.
type round struct {
	buf       []byte
	out       *[]byte
	batch     *[]*Message
	sendClose bool
}

// flushWorker serves connections handed over by kickLocked until the server closes
// the queue. It writes one round per turn and puts a connection with more to write
// back at the end of the queue, so one busy connection cannot hold a worker while
// others wait. With b (io_uring available), a turn takes every connection waiting
// and submits their writes together (batch.go).
func (s *Server) flushWorker(b *flushBatch) {
	defer s.fwg.Done()
	for c := range s.flushq {
		if b == nil || b.ring == nil {
			c.flushTurn()
			continue
		}
		b.run(c)
	}
	if b != nil {
		b.close()
	}
}

// flushTurn is one worker turn for c (flushing is set and a wg count is held for it).
func (c *Conn) flushTurn() {
	r, ok := c.takeRound()
	if !ok {
		c.s.wg.Done()
		return
	}
	rest, err := c.writeFast(r.buf)
	c.afterWrite(r, rest, err)
}

// afterWrite moves a worker's turn on once the round's write returned rest (what
// the socket's buffer had no room for) or err: the connection goes to the back of
// the queue while it has more to write.
func (c *Conn) afterWrite(r round, rest []byte, err error) {
	if err == nil && len(rest) > 0 {
		// The socket's buffer is full: wait on a goroutine of its own, never on a
		// worker that other connections share. It carries on with the flush.
		go c.finishBlocked(r, rest)
		return
	}
	c.endRound(r, err)
	if !c.morePending() {
		c.s.wg.Done()
		return
	}
	select {
	case c.s.flushq <- c:
	default:
		go c.flush()
	}
}

// flush writes rounds until nothing is left, on a goroutine of its own (the count
// taken for it in wg is released at the end).
func (c *Conn) flush() {
	defer c.s.wg.Done()
	for {
		r, ok := c.takeRound()
		if !ok {
			return
		}
		rest, err := c.writeFast(r.buf)
		if err == nil && len(rest) > 0 {
			err = c.writeBlocking(rest)
		}
		c.endRound(r, err)
	}
}

// finishBlocked completes a round whose write found the socket's buffer full, then
// goes on flushing (the wg count of the turn carries over to flush).
func (c *Conn) finishBlocked(r round, rest []byte) {
	c.endRound(r, c.writeBlocking(rest))
	c.flush()
}

// morePending reports whether c has something to write; when not, the flush ends
// (flushing is cleared) in the same critical section, so a later Send kicks again.
func (c *Conn) morePending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateClosed && (c.queue != nil || c.out != nil || c.pongWanted || (c.closeReq && !c.closeTaken)) {
		return true
	}
	c.flushing = false
	return false
}

// takeRound takes everything queued and the control frames written meanwhile and
// builds the round's bytes: control frames first, in order, then the data frames
// (already framed by NewMessage: gorilla is not involved, so no shared lock is taken
// per receiver), then the close frame when one is due. A round with one data message
// and nothing else writes the message's bytes as they are, without a copy. It
// reports false, clearing flushing, when there is nothing to write or the
// connection is closed.
func (c *Conn) takeRound() (round, bool) {
	c.mu.Lock()
	if c.state == stateClosed {
		c.flushing = false
		c.mu.Unlock()
		return round{}, false
	}
	batch := c.queue
	c.queue, c.qBytes = nil, 0
	sendClose := c.closeReq && !c.closeTaken
	if sendClose {
		c.closeTaken = true
	}
	code, text := c.closeCode, c.closeText
	pong, pongData := c.pongWanted, c.pongData
	c.pongWanted, c.pongData = false, ""
	// Once a close frame is among the control frames (gorilla may write one
	// itself), data must not follow it.
	out := c.out
	c.out = nil
	afterClose := c.closeFramed
	if batch == nil && out == nil && !sendClose && !pong {
		c.flushing = false
		c.mu.Unlock()
		return round{}, false
	}
	c.mu.Unlock()

	r := round{batch: batch, sendClose: sendClose}
	if pong && !afterClose { // control frames may go ahead of queued data
		if out == nil {
			out = c.s.pools.getOut()
		}
		*out = appendControlFrame(*out, opPong, pongData)
	}
	if batch != nil {
		msgs := *batch
		if afterClose {
			msgs = nil
		}
		c.s.met.messages.Add(float64(len(msgs)))
		if len(msgs) == 1 && out == nil && !sendClose {
			r.buf = msgs[0].frame
		} else if len(msgs) > 0 {
			if out == nil {
				out = c.s.pools.getOut()
			}
			for _, m := range msgs {
				*out = append(*out, m.frame...)
			}
		}
	}
	if sendClose {
		// Through gorilla, so that it writes nothing after it (connIO.Write
		// appends the frame to c.out).
		_ = c.ws.WriteControl(websocket.CloseMessage, closePayload(code, text), time.Now().Add(c.s.cfg.WriteTimeout))
		c.mu.Lock()
		if c.out != nil {
			if out == nil {
				out, c.out = c.out, nil
			} else {
				*out = append(*out, *c.out...)
				c.s.pools.putOut(c.out)
				c.out = nil
			}
		}
		c.mu.Unlock()
	}
	if out != nil {
		r.buf = *out
	}
	r.out = out
	return r, true
}

// endRound accounts for a written round, releases its buffers and moves the
// connection on: shutdown after a write error, closeWritten after our close frame.
func (c *Conn) endRound(r round, err error) {
	if len(r.buf) > 0 {
		c.s.met.socketWrites.Inc()
		c.s.met.writeBytes.Add(float64(len(r.buf)))
	}
	// The batch's messages are not referenced any more (buf may point into one).
	if r.batch != nil {
		c.s.pools.putQueue(r.batch)
	}
	if r.out != nil {
		c.s.pools.putOut(r.out)
	}
	if err != nil {
		c.s.met.writeErrors.Inc()
		c.s.log.Debug("wsio: write failed", "conn", c.id, "remote", c.nc.RemoteAddr(), "err", err)
		c.shutdown(err)
		return
	}
	if r.sendClose {
		c.closeWritten()
	}
}

// writeFast writes b with one non-blocking write where the socket exposes its
// descriptor, which is all a write to a socket with buffer space takes, so the
// common case arms no deadline (a runtime timer per write otherwise). It returns
// what is left to write: all of b where raw writes are not available, the tail when
// the socket's buffer is full.
func (c *Conn) writeFast(b []byte) ([]byte, error) {
	if c.rc == nil || len(b) == 0 {
		return b, nil
	}
	n, err := rawWrite(c.rc, b)
	switch {
	case err == nil && n == len(b):
		return nil, nil
	case err != nil && !errors.Is(err, errWouldBlock):
		return nil, err
	}
	return b[n:], nil
}

// writeBlocking writes b completely, waiting at most WriteTimeout.
func (c *Conn) writeBlocking(b []byte) error {
	if c.rc != nil {
		c.s.met.blockedWrites.Inc()
	}
	if err := c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout)); err != nil {
		return err
	}
	_, err := c.nc.Write(b)
	if err == nil && c.rc != nil {
		// A deadline left in the past would fail the next raw write.
		err = c.nc.SetWriteDeadline(time.Time{})
	}
	return err
}

// errWouldBlock reports that a non-blocking write found the socket's buffer full (or
// that raw writes are not available on this platform).
var errWouldBlock = errors.New("wsio: write would block")

// appendControlFrame appends an unmasked control frame (payload at most 125 bytes).
func appendControlFrame(b []byte, op byte, payload string) []byte {
	b = append(b, 0x80|op, byte(len(payload)))
	return append(b, payload...)
}

// closeWritten runs once our close frame is on the socket.
func (c *Conn) closeWritten() {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	c.closeDone = true
	now := c.closeNow || c.peerClosed
	if !now {
		c.armTimerLocked()
	}
	c.mu.Unlock()
	if now {
		c.shutdown(nil)
	}
}

// writeControl has gorilla frame a control frame into the outgoing batch.
func (c *Conn) writeControl(typ int, payload []byte) error {
	err := c.ws.WriteControl(typ, payload, time.Now().Add(c.s.cfg.WriteTimeout))
	if errors.Is(err, websocket.ErrCloseSent) {
		return ErrClosed
	}
	return err
}

// writePong has the flusher answer a ping. Pings that arrive before the flusher gets
// to it share one pong carrying the latest payload, as RFC 6455 allows, so a peer
// that pings without reading cannot grow the outgoing buffer.
func (c *Conn) writePong(payload string) {
	c.mu.Lock()
	if c.state != stateClosed && !c.closeTaken && !c.closeFramed {
		c.pongWanted, c.pongData = true, payload
		c.kickLocked()
	}
	c.mu.Unlock()
}

// shutdown closes the socket and records why (err is used only if no cause was
// recorded before). It hands OnClose to a goroutine when no reader will deliver it.
func (c *Conn) shutdown(err error) {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	c.state = stateClosed
	if c.closeErr == nil {
		if err == nil {
			err = net.ErrClosed
		}
		c.closeErr = err
	}
	c.dropQueueLocked()
	if c.out != nil {
		c.s.pools.putOut(c.out)
		c.out = nil
	}
	if c.timer != nil && c.timer.Stop() {
		c.s.wg.Done()
	}
	notify := c.epoll && c.h != nil && !c.readBusy && !c.notified
	if notify {
		c.notified = true
		c.s.wg.Add(1)
	}
	done := c.done
	c.mu.Unlock()

	if c.epoll {
		c.s.poll.remove(c)
	}
	_ = c.nc.Close()
	if done != nil {
		close(done)
	}
	c.s.forget(c)
	if notify {
		go func() {
			defer c.s.wg.Done()
			c.h.OnClose(c, c.closeErr)
		}()
	}
	c.s.wg.Done() // the conn's own count, taken in Upgrade
}

// accepting reports whether input should still reach the handler.
func (c *Conn) accepting() bool {
	c.mu.Lock()
	ok := c.state == stateOpen
	c.mu.Unlock()
	return ok
}

// isClosed reports whether the socket is closed.
func (c *Conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateClosed
}

// reason returns the recorded cause of the end. Call only after shutdown.
func (c *Conn) reason() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeErr
}

// Buffer pool sizes. Only standard-sized buffers go back to the pools, so a burst of
// large messages does not pin memory.
const (
	outBufSize   = 4 << 10
	maxPooledOut = 64 << 10
	queueCap     = 16
	inBufSize    = 4 << 10
	maxPooledBuf = 128 << 10
)

// pools holds a server's reusable buffers; idle connections hold none of them.
type pools struct {
	out   sync.Pool // *[]byte: outgoing batches
	queue sync.Pool // *[]*Message: send queues
	in    sync.Pool // *[]byte: epoll read buffers
	data  sync.Pool // *[]byte: assembled incoming messages
}

func (p *pools) getOut() *[]byte {
	if b, ok := p.out.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, outBufSize)
	return &b
}

func (p *pools) putOut(b *[]byte) {
	if cap(*b) > maxPooledOut {
		return
	}
	*b = (*b)[:0]
	p.out.Put(b)
}

func (p *pools) getQueue() *[]*Message {
	if q, ok := p.queue.Get().(*[]*Message); ok {
		return q
	}
	q := make([]*Message, 0, queueCap)
	return &q
}

func (p *pools) putQueue(q *[]*Message) {
	if cap(*q) > 16*queueCap {
		return
	}
	clear((*q)[:cap(*q)])
	*q = (*q)[:0]
	p.queue.Put(q)
}

func (p *pools) getData(n int) *[]byte {
	b, ok := p.data.Get().(*[]byte)
	if !ok {
		nb := make([]byte, 0, max(n, inBufSize))
		b = &nb
	}
	if cap(*b) < n {
		*b = make([]byte, 0, n)
	}
	*b = (*b)[:0]
	return b
}

func (p *pools) putData(b *[]byte) {
	if cap(*b) > maxPooledBuf {
		return
	}
	p.data.Put(b)
}
