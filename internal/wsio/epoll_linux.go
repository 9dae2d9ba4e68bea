//go:build linux

package wsio

import (
	"errors"
	"io"
	"os"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"
)

const epollSupported = true

// wakeID is the epoll key of the eventfd that wakes the poller for shutdown;
// connection ids are never 0.
const wakeID = 0

// poller is the epoll readiness loop of ModeEpoll. Connections are registered
// EPOLLONESHOT and keyed by their id, so an event can never reach a recycled
// descriptor's new owner and only one worker at a time reads a connection; every
// descriptor operation runs inside RawConn.Control, so the descriptor cannot be
// closed and reused underneath it.
type poller struct {
	s    *Server
	epfd int
	efd  int
	work chan uint32
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

func newPoller(s *Server) (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeID}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		_ = unix.Close(efd)
		_ = unix.Close(epfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	p := &poller{
		s:    s,
		epfd: epfd,
		efd:  efd,
		work: make(chan uint32, 1024),
		stop: make(chan struct{}),
	}
	p.wg.Add(2 + s.cfg.Workers)
	go p.loop()
	for range s.cfg.Workers {
		go p.worker()
	}
	go p.sweep()
	return p, nil
}

// close stops the loop, the workers (after the work already handed out) and the
// sweeper, then releases the epoll and eventfd descriptors.
func (p *poller) close() {
	p.once.Do(func() {
		close(p.stop)
		var one = [8]byte{1}
		_, _ = unix.Write(p.efd, one[:])
		p.wg.Wait()
		_ = unix.Close(p.efd)
		_ = unix.Close(p.epfd)
	})
}

func (p *poller) loop() {
	defer p.wg.Done()
	defer close(p.work)
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			p.s.log.Error("wsio: epoll_wait failed; reading stops", "err", err)
			return
		}
		for i := range n {
			id := uint32(events[i].Fd)
			if id == wakeID {
				return
			}
			p.work <- id
		}
	}
}

func (p *poller) worker() {
	defer p.wg.Done()
	for id := range p.work {
		if c := p.s.lookup(id); c != nil {
			c.serveEpoll()
		}
	}
}

// sweep closes connections whose partial input is older than PartialTimeout: an
// abandoned partial frame produces no more readiness events, so only a sweep sees it.
func (p *poller) sweep() {
	defer p.wg.Done()
	period := min(max(p.s.cfg.PartialTimeout/4, 5*time.Millisecond), time.Second)
	t := time.NewTicker(period)
	defer t.Stop()
	var expired []*Conn
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			limit := now.UnixNano() - int64(p.s.cfg.PartialTimeout)
			p.s.pmu.Lock()
			for c := range p.s.partials {
				if since := c.partialSince.Load(); since != 0 && since < limit {
					expired = append(expired, c)
				}
			}
			p.s.pmu.Unlock()
			for i, c := range expired {
				c.fail(websocket.ClosePolicyViolation, "partial message timeout")
				expired[i] = nil
			}
			expired = expired[:0]
		}
	}
}

func (p *poller) ctl(c *Conn, op int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(c.id)}
	var cerr error
	if err := c.rc.Control(func(fd uintptr) {
		cerr = unix.EpollCtl(p.epfd, op, int(fd), &ev)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return os.NewSyscallError("epoll_ctl", cerr)
	}
	return nil
}

// rawWrite makes one non-blocking write of b to the socket behind rc. It returns
// errWouldBlock, with the count written so far, when the socket's buffer is full.
func rawWrite(rc syscall.RawConn, b []byte) (int, error) {
	w, _ := rawWriters.Get().(*rawWriter)
	if w == nil {
		w = &rawWriter{}
		w.fn = w.write
	}
	w.b = b
	err := rc.Write(w.fn)
	n, werr := w.n, w.err
	*w = rawWriter{fn: w.fn}
	rawWriters.Put(w)
	switch {
	case err != nil:
		return 0, err
	case werr == unix.EAGAIN:
		return 0, errWouldBlock
	case werr != nil:
		return 0, os.NewSyscallError("write", werr)
	case n < len(b):
		return n, errWouldBlock
	}
	return n, nil
}

// rawWriter carries one raw write's arguments and results, so that the function
// given to RawConn.Write is bound once per pooled rawWriter instead of a closure
// allocated per write.
type rawWriter struct {
	b   []byte
	n   int
	err error
	fn  func(fd uintptr) bool
}

// rawWriters pools rawWriters; immutable after init, like a constant.
var rawWriters sync.Pool

func (w *rawWriter) write(fd uintptr) bool {
	for {
		w.n, w.err = unix.Write(int(fd), w.b)
		if w.err != unix.EINTR {
			return true
		}
	}
}

func (p *poller) add(c *Conn) error { return p.ctl(c, unix.EPOLL_CTL_ADD) }

func (p *poller) rearm(c *Conn) error { return p.ctl(c, unix.EPOLL_CTL_MOD) }

func (p *poller) remove(c *Conn) { _ = p.ctl(c, unix.EPOLL_CTL_DEL) }

// serveEpoll runs on a worker when c is readable.
func (c *Conn) serveEpoll() {
	c.mu.Lock()
	if c.state == stateClosed || c.readDone || c.readBusy || c.h == nil {
		c.mu.Unlock()
		return
	}
	if c.stopRead {
		c.readDone = true
		c.mu.Unlock()
		return
	}
	c.readBusy = true
	c.mu.Unlock()

	cont := c.readEpoll()
	c.settleInput(cont)

	c.mu.Lock()
	c.readBusy = false
	closed := c.state == stateClosed
	if !cont || closed {
		c.readDone = true
	}
	notify := closed && !c.notified
	if notify {
		c.notified = true
	}
	c.mu.Unlock()
	if notify {
		c.h.OnClose(c, c.reason())
		return
	}
	if cont && !closed {
		// readBusy is already false: the next event may go to any worker.
		if err := c.s.poll.rearm(c); err != nil {
			c.shutdown(err)
		}
	}
}

// maxPending bounds the raw bytes one connection may hold while a message is
// incomplete: the message itself plus room for frame headers and interleaved
// control frames.
func (c *Conn) maxPending() int { return 2*c.s.cfg.MaxMessageBytes + 4096 }

// readEpoll reads what the socket holds (until EAGAIN or a few buffers' worth, for
// fairness; EPOLLONESHOT re-arming brings the rest) and delivers complete messages.
// It reports whether reading should go on.
func (c *Conn) readEpoll() bool {
	for range 8 {
		if !c.makeRoom() {
			return false
		}
		var n int
		var rerr error
		buf := c.in[len(c.in):cap(c.in)]
		if err := c.rc.Control(func(fd uintptr) {
			for {
				n, rerr = unix.Read(int(fd), buf)
				if rerr != unix.EINTR {
					return
				}
			}
		}); err != nil {
			c.shutdown(err)
			return false
		}
		switch {
		case rerr == unix.EAGAIN:
			return true
		case rerr != nil:
			c.shutdown(os.NewSyscallError("read", rerr))
			return false
		case n == 0:
			c.shutdown(io.ErrUnexpectedEOF)
			return false
		}
		c.in = c.in[:len(c.in)+n]
		if !c.process() {
			return false
		}
		if n < len(buf) {
			return true // most likely drained; a spurious wake-up costs one EAGAIN
		}
	}
	return true
}

// makeRoom ensures c.in has free space, compacting or growing it within maxPending.
func (c *Conn) makeRoom() bool {
	if c.in == nil {
		b := c.s.pools.in.Get()
		if bp, ok := b.(*[]byte); ok {
			c.in = (*bp)[:0]
		} else {
			c.in = make([]byte, 0, inBufSize)
		}
		c.inPool = true
		return true
	}
	if len(c.in) < cap(c.in) {
		return true
	}
	if c.r > 0 {
		c.compact()
		if len(c.in) < cap(c.in) {
			return true
		}
	}
	if cap(c.in) >= c.maxPending() {
		c.fail(websocket.CloseMessageTooBig, "message too big")
		return false
	}
	nb := make([]byte, len(c.in), min(2*cap(c.in), c.maxPending()))
	copy(nb, c.in)
	r, lim, scan := c.r, c.lim, c.scan
	c.releaseIn()
	c.in, c.r, c.lim, c.scan = nb, r, lim, scan
	return true
}

func (c *Conn) compact() {
	n := copy(c.in, c.in[c.r:])
	c.in = c.in[:n]
	c.lim -= c.r
	c.scan -= c.r
	c.r = 0
}

func (c *Conn) releaseIn() {
	if c.in != nil && c.inPool {
		b := c.in[:cap(c.in)]
		c.s.pools.in.Put(&b)
	}
	c.in, c.inPool = nil, false
	c.r, c.lim, c.scan = 0, 0, 0
}

// settleInput runs when a worker leaves the read path: it frees the input buffer
// when nothing is pending and keeps the partial-input bookkeeping for the sweeper.
func (c *Conn) settleInput(cont bool) {
	pending := cont && c.in != nil && c.r < len(c.in)
	if !pending {
		c.releaseIn()
		c.inMsg, c.msgLen = false, 0
		c.partialSince.Store(0)
	} else {
		if c.r > 0 {
			c.compact()
		}
		if c.partialSince.Load() == 0 {
			c.partialSince.Store(time.Now().UnixNano())
		}
	}
	c.s.pmu.Lock()
	if pending && c.isClosed() {
		// forget has run or will find nothing: never re-add a closed conn.
		pending = false
	}
	switch {
	case pending && !c.inPartials:
		c.s.partials[c] = struct{}{}
		c.inPartials = true
	case !pending && c.inPartials:
		delete(c.s.partials, c)
		c.inPartials = false
	}
	c.s.pmu.Unlock()
}

// process scans the frames in c.in from c.scan. Complete data messages are exposed to
// gorilla and delivered; control frames between messages are handled here, so
// gorilla never waits for a header that has not arrived. It reports whether reading
// should go on.
func (c *Conn) process() bool {
	frames := 0
	defer func() {
		if frames > 0 {
			c.lastRead.Store(time.Now().UnixNano())
		}
	}()
	for len(c.in)-c.scan >= 2 {
		b := c.in[c.scan:]
		h, hl, perr := parseHeader(b)
		if perr != nil {
			c.fail(perr.Code, perr.Text)
			return false
		}
		if !h.control() {
			// Checked on the header, before any payload is read.
			switch {
			case h.op == opContinuation && !c.inMsg:
				c.fail(websocket.CloseProtocolError, "continuation frame without a message")
				return false
			case h.op != opContinuation && c.inMsg:
				c.fail(websocket.CloseProtocolError, "new message inside a fragmented message")
				return false
			case c.msgLen+h.length > int64(c.s.cfg.MaxMessageBytes):
				c.fail(websocket.CloseMessageTooBig, "message too big")
				return false
			}
		}
		if hl == 0 || int64(len(b)) < int64(hl)+h.length {
			break
		}
		total := hl + int(h.length)
		frames++
		switch {
		case h.op == opClose:
			p := b[hl:total]
			unmask(h.mask, p)
			code, text, perr := parseClosePayload(p)
			if perr != nil {
				c.fail(perr.Code, perr.Text)
				return false
			}
			c.peerClose(code, text)
			return false
		case h.control() && !c.inMsg:
			// A control frame between messages: ours to answer, hidden from gorilla.
			if h.op == opPing {
				var p [maxControlPayload]byte
				n := copy(p[:], b[hl:total])
				unmask(h.mask, p[:n])
				c.writePong(string(p[:n]))
			}
			c.scan += total
			c.lim, c.r = c.scan, c.scan
		case h.control():
			// Inside a fragmented message: gorilla's handlers answer it.
			c.scan += total
		default:
			if !c.inMsg {
				c.msgOp, c.msgLen = h.op, 0
				c.msgUTF8.reset()
			}
			if c.msgOp == opText && (c.inMsg || !h.fin) && !c.textFrameValid(b[hl:total], h.mask) {
				// A fragment of a text message: invalid UTF-8 fails now, without
				// waiting for the rest (a whole message is checked in deliver).
				c.fail(websocket.CloseInvalidFramePayloadData, "text message is not valid utf-8")
				return false
			}
			c.msgLen += h.length
			c.inMsg = !h.fin
			c.scan += total
			if h.fin {
				c.lim = c.scan
				if !c.deliver() {
					return false
				}
			}
		}
	}
	return true
}

// textFrameValid feeds a text fragment's masked payload to the message's UTF-8
// check, unmasking a copy piece by piece (gorilla unmasks the original later).
func (c *Conn) textFrameValid(p []byte, mask [4]byte) bool {
	var buf [256]byte
	for off := 0; off < len(p); off += len(buf) {
		n := copy(buf[:], p[off:])
		for i := range n {
			buf[i] ^= mask[(off+i)&3]
		}
		if !c.msgUTF8.feed(buf[:n]) {
			return false
		}
	}
	return true
}

// deliver has gorilla read the complete message now exposed in c.in[c.r:c.lim] and
// hands it to the handler.
func (c *Conn) deliver() bool {
	n := int(c.msgLen)
	c.inMsg, c.msgLen = false, 0
	c.partialSince.Store(0)
	typ, r, err := c.ws.NextReader()
	if err != nil {
		return c.internalError(err)
	}
	buf := c.s.pools.getData(n)
	defer c.s.pools.putData(buf)
	data := (*buf)[:n]
	if _, err := io.ReadFull(r, data); err != nil {
		return c.internalError(err)
	}
	// Consume trailing empty frames of the message and confirm its end.
	var one [1]byte
	if k, err := r.Read(one[:]); k != 0 || err != io.EOF {
		return c.internalError(errors.New("message longer than its frames"))
	}
	if c.r != c.lim {
		return c.internalError(errors.New("message shorter than its frames"))
	}
	if !c.accepting() {
		return true // closing: input is discarded
	}
	if typ == websocket.TextMessage && !utf8.Valid(data) {
		c.fail(websocket.CloseInvalidFramePayloadData, "text message is not valid utf-8")
		return false
	}
	c.h.OnMessage(c, typ == websocket.BinaryMessage, data)
	return true
}

func (c *Conn) internalError(err error) bool {
	c.s.log.Error("wsio: framing out of step with gorilla", "conn", c.id, "err", err)
	c.fail(websocket.CloseInternalServerErr, "internal error")
	return false
}
