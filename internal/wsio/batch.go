package wsio

import (
	"os"
	"syscall"
)

// Batched flushing. A fan-out kicks many connections at once; a flush worker takes
// every connection waiting in flushq (up to batchMax), builds each one's round, and
// hands all their writes to the kernel in one io_uring submission instead of one
// write(2) each. Nothing waits to fill a batch: a worker takes what is already
// queued, so a lone message is written as soon as before.
//
// A descriptor must stay open while the kernel may use it. Go's net package
// guarantees that only inside RawConn callbacks, so the batch nests them: the
// callback for connection i records its descriptor and calls RawConn.Write for
// connection i+1, and the innermost one submits. Every descriptor of the batch is
// thus held (and cannot be closed and reused) during the submission, exactly as
// for a single raw write; all results are handled after the chain unwinds.

// batchMax is the most writes one submission carries (the ring's size). The chain
// of callbacks is as deep, a few hundred bytes of stack per level. A submission
// keeps its thread in the kernel for all its sends, holding one of GOMAXPROCS
// processors meanwhile: at 256 (about 1 ms of sends) the p99 of a 1M deliveries/s
// fan-out was 110–250 ms, at 64 it was 55–100 ms in alternating runs, with 16 and
// 32 no better and the system call still paid once per 64 sends.
const batchMax = 64

// batchSender makes many non-blocking sends in one system call (uring; tests use
// a fake): res[i] gets send i's count or negative errno.
type batchSender interface {
	send(fds []int32, bufs [][]byte, res []int32) error
	capacity() int
	close()
}

// flushBatch is one flush worker's batching state, reused from batch to batch.
type flushBatch struct {
	s     *Server
	ring  batchSender // nil once closed: the worker writes connection by connection
	items []batchItem
	fds   []int32
	bufs  [][]byte
	res   []int32
	i     int   // the item whose descriptor the chain is taking
	err   error // the submission failed: results unknown
	hold  func(fd uintptr) bool
}

type batchItem struct {
	c    *Conn
	r    round
	fd   int32 // its descriptor, while held
	held bool  // its descriptor was held for the submission
	err  error // RawConn.Write refused (the socket is closed)
}

// newFlushBatch returns a worker's batch state, or nil when io_uring cannot be used
// (then the worker writes connection by connection).
func (s *Server) newFlushBatch() *flushBatch {
	if s.cfg.WriteBatching != BatchAuto {
		return nil
	}
	r, err := newUring(batchMax)
	if err != nil {
		s.uringOnce.Do(func() {
			s.log.Info("wsio: writing with one system call per socket", "why", err)
		})
		return nil
	}
	return s.newBatchWith(r)
}

// newBatchWith returns batch state submitting through r.
func (s *Server) newBatchWith(r batchSender) *flushBatch {
	s.rings.Add(1)
	n := r.capacity()
	b := &flushBatch{
		s:     s,
		ring:  r,
		items: make([]batchItem, 0, n),
		fds:   make([]int32, 0, n),
		bufs:  make([][]byte, 0, n),
		res:   make([]int32, n),
	}
	b.hold = b.holdFD
	return b
}

func (b *flushBatch) close() {
	if b.ring != nil {
		b.s.rings.Add(-1)
		b.ring.close()
		b.ring = nil
	}
}

// run flushes first and every connection queued behind it, up to the ring's size.
func (b *flushBatch) run(first *Conn) {
	b.add(first)
	for taken, most := 1, b.ring.capacity(); taken < most; taken++ {
		select {
		case c, ok := <-b.s.flushq:
			if !ok {
				taken = most
				continue
			}
			b.add(c)
		default:
			taken = most
		}
	}
	b.flush()
}

// flush writes the rounds added: one alone with a plain write, several in one
// submission.
func (b *flushBatch) flush() {
	switch len(b.items) {
	case 0:
	case 1:
		it := b.items[0]
		rest, err := it.c.writeFast(it.r.buf)
		it.c.afterWrite(it.r, rest, err)
	default:
		b.submit()
	}
	clear(b.items)
	b.items = b.items[:0]
}

// add takes c's round into the batch; a connection without a raw descriptor is
// written at once, as in an unbatched turn.
func (b *flushBatch) add(c *Conn) {
	r, ok := c.takeRound()
	if !ok {
		c.s.wg.Done()
		return
	}
	if c.rc == nil || len(r.buf) == 0 {
		rest, err := c.writeFast(r.buf)
		c.afterWrite(r, rest, err)
		return
	}
	b.items = append(b.items, batchItem{c: c, r: r})
}

// submit sends every item's round in one submission and moves each connection on.
func (b *flushBatch) submit() {
	b.i = -1
	b.err = nil
	b.next()
	k := 0
	refused := false
	for j := range b.items {
		it := &b.items[j]
		var rest []byte
		err := it.err
		switch {
		case !it.held:
		case b.err != nil:
			// What the kernel did with these buffers is unknown: they do not go
			// back to the pool, and the connections close (their clients
			// reconnect and recover).
			it.r.out = nil
			err = b.err
		case opRefused(b.res[k]):
			// The ring refused the operation itself, so nothing was sent: write
			// as without batching, and stop batching.
			refused = true
			rest, err = it.c.writeFast(it.r.buf)
		default:
			rest, err = sendResult(it.r.buf, b.res[k])
		}
		if it.held {
			k++
		}
		it.c.afterWrite(it.r, rest, err)
	}
	switch {
	case b.err != nil:
		b.s.log.Error("wsio: io_uring submission failed; writing with one system call per socket from now on", "err", b.err)
		b.close()
	case refused:
		b.s.log.Error("wsio: io_uring refused socket sends; writing with one system call per socket from now on")
		b.close()
	}
	clear(b.bufs)
	b.fds, b.bufs = b.fds[:0], b.bufs[:0]
}

// next holds the descriptor of the next item, which goes on down the chain; past
// the last item it submits, with every descriptor held.
func (b *flushBatch) next() {
	for b.i+1 < len(b.items) {
		b.i++
		it := &b.items[b.i]
		err := it.c.rc.Write(b.hold)
		if it.held {
			return // the rest of the chain ran inside
		}
		it.err = err
	}
	for j := range b.items {
		if it := &b.items[j]; it.held {
			b.fds = append(b.fds, it.fd)
			b.bufs = append(b.bufs, it.r.buf)
		}
	}
	b.err = b.ring.send(b.fds, b.bufs, b.res)
	b.s.met.writeBatches.Inc()
}

// holdFD runs inside RawConn.Write for item b.i: its descriptor cannot be closed
// until the chain below returns.
func (b *flushBatch) holdFD(fd uintptr) bool {
	it := &b.items[b.i]
	it.held = true
	it.fd = int32(fd)
	b.next()
	return true
}

// opRefused reports a result that says the ring did not run the operation at all
// (an unsupported opcode or flag), rather than a send that failed.
func opRefused(res int32) bool {
	errno := syscall.Errno(-res)
	return res < 0 && (errno == syscall.EINVAL || errno == syscall.EOPNOTSUPP || errno == syscall.ENOSYS)
}

// sendResult turns a send's result into what writeFast would have returned.
func sendResult(buf []byte, res int32) ([]byte, error) {
	switch {
	case int(res) == len(buf):
		return nil, nil
	case res >= 0:
		return buf[res:], nil
	}
	errno := syscall.Errno(-res)
	if errno == syscall.EAGAIN || errno == syscall.EINTR {
		return buf, nil // the blocking path waits for room
	}
	return nil, os.NewSyscallError("send", errno)
}
