package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The receive engine: a worker's WebSocket connections, once set up, are read by a few
// event loops instead of one goroutine each. On this class of machine every system
// call and every sleep/wake-up is expensive; a goroutine per connection costs two
// reads (the frame, then EAGAIN) and a scheduler wake-up per delivered message. A loop
// owns an epoll instance (level-triggered) over its share of the sockets, reads each
// ready socket once per wake-up into one reusable buffer, and parses the frames itself
// (rxframe.go), so a fan-out sweep costs one epoll_wait per batch and one read per
// socket. The epoll descriptor is itself registered with Go's poller and an idle loop
// parks there (see run). Sockets are taken over from the setup (rxdial.go) as raw
// descriptors, no longer in Go's poller, so their traffic wakes nothing but the loop.
//
// Measured here (2 vCPU, fan-out 1 room x 1,000 members): the tool's CPU per delivery
// went from ~10 µs (gorilla, goroutine per connection) to ~6 µs at 100 msg/s, and the
// tool keeps up at 1,000 msg/s (1M deliveries/s) at under 1 µs per delivery. What is
// left is mostly the read itself: ~1.1 µs per system call on this VM, and the ACK the
// kernel sends from a read that empties a socket (delivered over loopback in the
// reader's context: ~30 % of the tool's CPU).
//
// Concurrency: each loop is one goroutine, owned by the engine and ended by stop. A
// loop alone reads, writes and closes its sockets: adds and closes requested from
// other goroutines are queued to it and it is woken through an eventfd. A descriptor is
// removed from epoll before it is closed, and closed exactly once, by its loop, so a
// descriptor number reused by the kernel the instant it is closed never reaches the
// old connection's state.

const (
	rxReadBuffer = 64 << 10 // a loop's read buffer: one read per ready socket per wake-up
	rxEvents     = 512      // events taken per epoll_wait
	// rxFewEvents: a wake-up with fewer ready sockets than this is "few", after which
	// a loop with a batch wait configured pauses before polling again.
	rxFewEvents = 32
	// rxMaxBatchWait bounds the batch wait: it delays reads, so it may only be short.
	rxMaxBatchWait = time.Millisecond
	// rxWriteTimeout bounds a write (pongs, ping replies, close replies) to a socket
	// whose send buffer is full; past it the connection is dropped.
	rxWriteTimeout = 10 * time.Second
)

// errRxStopped is returned by add on a stopped engine.
var errRxStopped = errors.New("receive engine stopped")

// rxConfig configures a receive engine.
type rxConfig struct {
	// Loops is the number of event loops; connections are sharded over them by id.
	// Default: GOMAXPROCS.
	Loops int
	// BatchWait, when positive, makes a loop whose epoll_wait returned few ready sockets
	// wait this long before polling again, so the rest of a fan-out sweep is read in one
	// batch. Receive times are taken after each read, so the wait can only add to the
	// latencies measured, never hide any. At most rxMaxBatchWait; 0 is off.
	BatchWait time.Duration
	// Tally accounts the bench messages received (required).
	Tally *tally
	// Alive counts connections held (added and not yet closed); Dropped counts those
	// closed by the server or by an error rather than by us (both required).
	Alive, Dropped *atomic.Int64
}

// rxEngine is a set of event loops receiving on set-up WebSocket connections.
type rxEngine struct {
	cfg   rxConfig
	loops []*rxLoop
	wg    sync.WaitGroup // the loops' goroutines
	pings atomic.Int64   // pings answered (app-level and WebSocket)
}

// rxLoop is one event loop.
type rxLoop struct {
	e    *rxEngine
	epfd int
	evfd int // eventfd: wakes the loop for queued commands

	mu      sync.Mutex
	queue   []rxCmd
	stopped bool

	// Owned by the loop's goroutine.
	wait  *unix.Timespec // the batch wait; nil when off
	conns map[int32]*rxConn
	spare []rxCmd
	buf   []byte
	wbuf  []byte
}

type rxCmd struct {
	c     *rxConn
	close bool // close c; else add it
}

// rxConn is one connection handed to the engine.
type rxConn struct {
	id      int
	target  string
	closing atomic.Bool   // we asked to close it: not counted as dropped
	done    chan struct{} // closed once its descriptor is closed

	// Owned by the loop (by the adding goroutine until add).
	fd   int // -1 once closed
	in   wsIn
	seen roomSeq
	loop *rxLoop
	now  int64 // receive time of the bytes being parsed, µs since the epoch
}

// newRxConn wraps a set-up connection's descriptor and its stream state (bytes read past
// the setup included) for the engine.
func newRxConn(id int, target string, fd int, in wsIn) *rxConn {
	return &rxConn{id: id, target: target, fd: fd, in: in, seen: roomSeq{}, done: make(chan struct{})}
}

// newRxEngine starts the loops of an engine.
func newRxEngine(cfg rxConfig) (*rxEngine, error) {
	if cfg.Loops <= 0 {
		cfg.Loops = runtime.GOMAXPROCS(0)
	}
	if cfg.BatchWait < 0 || cfg.BatchWait > rxMaxBatchWait {
		return nil, fmt.Errorf("receive batch wait %v: want 0 (off) to %v", cfg.BatchWait, rxMaxBatchWait)
	}
	if cfg.Tally == nil || cfg.Alive == nil || cfg.Dropped == nil {
		return nil, errors.New("receive engine: Tally, Alive and Dropped are required")
	}
	e := &rxEngine{cfg: cfg}
	for range cfg.Loops {
		l, err := newRxLoop(e)
		if err != nil {
			e.stop()
			return nil, err
		}
		e.loops = append(e.loops, l)
		e.wg.Add(1)
		go l.run()
	}
	return e, nil
}

func newRxLoop(e *rxEngine) (*rxLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(evfd)
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	l := &rxLoop{e: e, epfd: epfd, evfd: evfd, conns: map[int32]*rxConn{}, buf: make([]byte, rxReadBuffer)}
	if w := e.cfg.BatchWait; w > 0 {
		ts := unix.NsecToTimespec(int64(w))
		l.wait = &ts
	}
	return l, nil
}

// add hands c to its loop, which then owns its descriptor. On error (the engine is
// stopped) the caller still owns it.
func (e *rxEngine) add(c *rxConn) error {
	n := len(e.loops)
	l := e.loops[(c.id%n+n)%n]
	c.loop = l
	e.cfg.Alive.Add(1) // before the loop may close it
	if !l.submit(rxCmd{c: c}) {
		e.cfg.Alive.Add(-1)
		return errRxStopped
	}
	return nil
}

// close closes c (once, however often called) and waits until its descriptor is
// closed. It does not count as dropped.
func (e *rxEngine) close(c *rxConn) {
	c.closing.Store(true)
	c.loop.submit(rxCmd{c: c, close: true}) // a stopped loop has closed it already
	<-c.done
}

// stop closes every connection (none counts as dropped) and ends the loops.
func (e *rxEngine) stop() {
	for _, l := range e.loops {
		l.mu.Lock()
		l.stopped = true
		l.wake()
		l.mu.Unlock()
	}
	e.wg.Wait()
}

// submit queues cmd for the loop; false when the loop is stopped.
func (l *rxLoop) submit(cmd rxCmd) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return false
	}
	if len(l.queue) == 0 {
		l.wake()
	}
	l.queue = append(l.queue, cmd)
	return true
}

// wake makes the loop's epoll_wait return to take the queue; l.mu is held, so the
// loop cannot close the eventfd meanwhile (a closed number may be reused at once). The
// loop resets the eventfd before it takes the queue, so a command queued after that
// wakes it again.
func (l *rxLoop) wake() {
	if l.evfd < 0 {
		return
	}
	var one = [8]byte{1}
	_, _ = unix.Write(l.evfd, one[:])
}

// run is the loop. It parks in Go's poller, on which the epoll descriptor is itself
// registered, rather than in a blocking epoll_wait: an idle loop then holds no thread,
// and the runtime's monitor has no processor in a system call to take back and hand to
// a new thread at every wake-up (measured: a quarter fewer context switches and less
// CPU per message than blocking epoll_wait calls, on this class of VM).
func (l *rxLoop) run() {
	defer l.e.wg.Done()
	events := make([]unix.EpollEvent, rxEvents)
	if err := unix.SetNonblock(l.epfd, true); err != nil {
		l.fail(err)
		unix.Close(l.epfd)
		return
	}
	f := os.NewFile(uintptr(l.epfd), "rx-epoll")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		l.fail(err)
		return
	}
	done := false
	err = rc.Read(func(uintptr) bool {
		for {
			n, err := epollPoll(l.epfd, events)
			switch {
			case err == unix.EINTR:
				continue
			case err != nil:
				l.fail(err)
				done = true
				return true
			case n == 0:
				return false // park until Go's poller sees the epoll descriptor ready
			}
			ready, drained, stop := l.dispatch(events[:n])
			if stop {
				done = true
				return true
			}
			// Parking at once is safe when every ready socket was read empty: data
			// arriving since makes the epoll descriptor ready again, which the poller
			// remembers until the next wait.
			if !l.pause(ready) && drained {
				return false
			}
		}
	})
	if err != nil && !done {
		l.fail(err)
	}
}

// dispatch handles one epoll_wait's events. drained says whether every ready socket
// was read empty (a read shorter than the buffer) and no event was left untaken; stop
// says the loop has shut down.
func (l *rxLoop) dispatch(events []unix.EpollEvent) (ready int, drained, stop bool) {
	drained = len(events) < rxEvents
	for i := range events {
		fd := events[i].Fd
		if fd == int32(l.evfd) {
			if !l.commands() {
				return ready, drained, true
			}
			continue
		}
		// A connection closed earlier in this batch is no longer in the map; its
		// number, if already reused, is a newer connection, read on its own behalf.
		if c := l.conns[fd]; c != nil {
			if l.receive(c) {
				drained = false
			}
			ready++
		}
	}
	return ready, drained, false
}

// pause waits the batch wait after a wake-up with few ready sockets; it reports
// whether it waited.
func (l *rxLoop) pause(ready int) bool {
	if l.wait == nil || ready == 0 || ready >= rxFewEvents {
		return false
	}
	// A raw call: the thread keeps its processor for this short, bounded sleep rather
	// than have the runtime hand it to another thread.
	unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(l.wait)), 0, 0)
	return true
}

// fail ends a loop whose epoll descriptor failed (not expected with valid arguments):
// visibly, with its connections counted as dropped, rather than spinning.
func (l *rxLoop) fail(err error) {
	fmt.Fprintln(os.Stderr, "roomcast-bench: receive loop:", err)
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
	l.shutdown(false)
}

// epollPoll is epoll_wait without waiting, as a raw system call (it never blocks).
func epollPoll(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// commands runs the queued commands; false when the loop has stopped.
func (l *rxLoop) commands() bool {
	var b [8]byte
	_, _ = unix.Read(l.evfd, b[:])
	l.mu.Lock()
	q := l.queue
	l.queue = l.spare
	stopped := l.stopped
	l.mu.Unlock()
	for _, cmd := range q {
		if cmd.close {
			l.closeConn(cmd.c)
		} else {
			l.register(cmd.c)
		}
	}
	clear(q)
	l.spare = q[:0]
	if stopped {
		l.shutdown(true)
		return false
	}
	return true
}

// shutdown closes every connection and the loop's descriptors; byUs says whether the
// connections count as closed by us (not dropped). The queue is closed for good (the
// caller set stopped), so commands still queued are run first.
func (l *rxLoop) shutdown(byUs bool) {
	l.mu.Lock()
	q := l.queue
	l.queue = nil
	unix.Close(l.evfd) // under l.mu: see wake; the caller closes the epoll descriptor
	l.evfd = -1
	l.mu.Unlock()
	for _, cmd := range q {
		if !cmd.close {
			l.register(cmd.c)
		}
	}
	for _, c := range l.conns {
		if byUs {
			c.closing.Store(true)
		}
		l.closeConn(c)
	}
}

// register adds c to the loop's epoll set and parses any bytes read during its setup.
func (l *rxLoop) register(c *rxConn) {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(c.fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		c.closeFD(l)
		return
	}
	l.conns[int32(c.fd)] = c
	if c.in.buffered() {
		c.now = time.Now().UnixMicro() // later than their read: never flattering
		l.parse(c, nil)
	}
}

// receive reads c once and parses what came. It reports whether the socket may hold
// more (the read filled the buffer, or was interrupted).
func (l *rxLoop) receive(c *rxConn) bool {
	n, err := rawRead(c.fd, l.buf)
	switch {
	case err == unix.EAGAIN:
		return false
	case err == unix.EINTR:
		return true
	case err != nil || n == 0:
		l.closeConn(c) // reset or EOF
		return false
	}
	c.now = time.Now().UnixMicro()
	l.parse(c, l.buf[:n])
	return n == len(l.buf)
}

func (l *rxLoop) parse(c *rxConn, data []byte) {
	if _, err := c.in.feed(data, c); err != nil {
		l.closeConn(c)
	}
}

// closeConn closes c unless it is closed already.
func (l *rxLoop) closeConn(c *rxConn) {
	if c.fd < 0 {
		return
	}
	// Out of epoll first: once closed, the number may belong to a new socket at once.
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	delete(l.conns, int32(c.fd))
	c.closeFD(l)
}

// closeFD closes c's descriptor and accounts it.
func (c *rxConn) closeFD(l *rxLoop) {
	_ = unix.Close(c.fd)
	c.fd = -1
	c.in = wsIn{}
	if !c.closing.Load() {
		l.e.cfg.Dropped.Add(1)
	}
	l.e.cfg.Alive.Add(-1)
	close(c.done)
}

// wsFrame accounts a received message or answers a control frame (wsHandler).
func (c *rxConn) wsFrame(op byte, payload []byte) (bool, error) {
	switch op {
	case wsText, wsBinary:
		if reply := pingReply(c.target, payload); reply != nil {
			c.loop.e.pings.Add(1)
			return false, c.write(wsText, reply)
		}
		if s, ok := parseStamp(payload); ok {
			c.loop.e.cfg.Tally.observe(c.id, c.seen, s, c.now)
		}
	case wsPing:
		c.loop.e.pings.Add(1)
		return false, c.write(wsPong, payload)
	case wsClose:
		if !c.closing.Load() {
			_ = c.write(wsClose, closeReply(payload))
		}
		return true, errRxClosed
	}
	return false, nil
}

// write sends one masked frame, waiting (bounded) when the socket's send buffer is full.
func (c *rxConn) write(op byte, payload []byte) error {
	l := c.loop
	l.wbuf = appendClientFrame(l.wbuf[:0], op, payload)
	return writeAll(c.fd, l.wbuf, rxWriteTimeout)
}

// writeAll writes b to the non-blocking descriptor fd, polling for room at most timeout
// in all.
func writeAll(fd int, b []byte, timeout time.Duration) error {
	deadline := time.Time{}
	for len(b) > 0 {
		n, err := rawWrite(fd, b)
		if n > 0 {
			b = b[n:]
		}
		switch {
		case err == nil || err == unix.EINTR:
		case err == unix.EAGAIN:
			if deadline.IsZero() {
				deadline = time.Now().Add(timeout)
			}
			left := time.Until(deadline)
			if left <= 0 {
				return errors.New("write timed out: send buffer full")
			}
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(pfd, int(left/time.Millisecond)+1); err != nil && err != unix.EINTR {
				return err
			}
		default:
			return err
		}
	}
	return nil
}

// rawRead and rawWrite are read(2) and write(2) without the scheduler hand-off of a
// blocking system call: the descriptors are non-blocking, so the calls never block.
func rawRead(fd int, b []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func rawWrite(fd int, b []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
