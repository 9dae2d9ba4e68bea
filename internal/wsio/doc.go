// Package wsio is roomcast's WebSocket connection core: the transport under the
// node. It upgrades HTTP requests with gorilla/websocket, reads complete data
// messages into a Handler, and writes shared, pre-encoded Messages through a bounded
// per-connection queue with one coalesced socket write per batch.
//
// # Reading
//
// In ModeEpoll (Linux) no goroutine waits on an idle connection. Server.Upgrade gives
// gorilla a ResponseWriter whose Hijack returns our own net.Conn (connIO) and a tiny
// bufio.ReadWriter, so gorilla keeps only a 125-byte read buffer and no write buffer
// (it draws from an unused pool). One epoll instance watches every socket with
// EPOLLIN|EPOLLRDHUP|EPOLLONESHOT, keyed by a connection id rather than a pointer;
// descriptor operations (read, re-arm, removal) run only inside
// SyscallConn().Control, so a descriptor can never be closed and reused underneath
// them. A worker from a small pool reads the non-blocking socket into a pooled buffer
// that exists only while bytes are pending, parses frame headers itself and exposes
// to gorilla only the bytes up to the end of the last complete data message: gorilla
// never sees EAGAIN or a short stream, because its read errors are permanent. Size
// limits are checked on each header (1009 before any payload is read), reserved bits
// and opcodes, unmasked frames and bad fragmentation close with 1002, text that is not
// UTF-8 with 1007 (checked per fragment as each completes, so an invalid fragmented
// message fails without waiting for its end). Control frames between messages are
// answered here (ping: pong; pong: activity; close: echo and shut down); pings and
// pongs inside a fragmented message reach gorilla with the message, and its handlers
// do the same. A sweeper
// closes with 1008 a connection whose partial input is older than PartialTimeout.
// There are no read deadlines: idle and heartbeat timeouts belong to the owner of the
// connection, through LastRead.
//
// Each readiness event reads until the socket reports EAGAIN or a read comes back
// short; the level-triggered re-arm (EPOLL_CTL_MOD) reports anything that arrived
// since, so nothing is missed and a busy connection yields to others after a few
// buffers.
//
// In ModeGoroutine (the portable fallback, also used per connection when the socket
// exposes no descriptor, e.g. in-process TLS) one reader goroutine per connection
// runs gorilla's NextReader (text is checked for UTF-8 read by read, failing fast);
// a byte-stream tracker under gorilla watches frame boundaries for LastRead and sets
// a read deadline only while a frame or fragmented message is pending
// (PartialTimeout). The Handler sees the same semantics in both modes.
//
// # Writing
//
// Each socket has exactly one writer. Send appends to a bounded queue (messages and
// bytes) and, when no flush is running, starts a flush goroutine that exits once the
// queue is drained: there is no idle writer goroutine. A Message is framed once by
// NewMessage (header and payload, unmasked), so a flush takes everything queued and
// appends the frames to a pooled batch buffer without gorilla and without any lock
// shared between receivers of a fan-out; a round that holds a single message
// writes that message's bytes as they are. Control frames written meanwhile (pings,
// and close frames, through gorilla's WriteControl into connIO, whose Write appends
// to the connection's buffer) go first, in order; our close frame goes last, through
// gorilla too, so that gorilla writes nothing after it, and no data follows a close
// frame gorilla wrote itself. Pings that arrive before the flusher runs are answered
// by one pong with the latest payload (RFC 6455 allows it), so a peer that pings
// without reading cannot grow the buffer.
//
// Where the socket exposes its descriptor (both modes, unless TLS is terminated
// in-process), a batch is first written with one non-blocking write(2): with room
// in the socket buffer that is the whole cost, with no deadline to arm (a runtime
// timer per write otherwise). Only when the buffer is full does the flusher fall back
// to a blocking write under WriteTimeout (counted in
// roomcast_wsio_blocked_writes_total) and clear the deadline afterwards. A write
// error closes the connection.
//
// Flushes are run by a pool of GOMAXPROCS flush workers. With WriteBatching BatchAuto
// (the default) and a kernel that allows io_uring, a worker takes every connection
// waiting in its queue (up to 64 at a time: a fan-out's) and submits all their non-blocking
// sends with one io_uring_enter instead of one write(2) each (batch.go; measured:
// half the CPU per send on our VMs, where a system call costs as much as a small
// loopback send). Nothing waits to fill a batch. The descriptors stay held during
// the submission by nesting RawConn.Write callbacks, the same guarantee a single raw
// write has; a send that finds the buffer full continues on the blocking path.
//
// # Closing
//
// A connection moves open → closing → closed under Conn.mu and never back. Close
// writes the queue, then the close frame, then waits for the peer's close frame (at
// most CloseWait); CloseNow, a protocol violation or the peer's close frame drop the
// queue and close the socket right after the close frame (or after CloseWait at the
// latest). The first cause is kept and given to OnClose. Handler calls for one
// connection never overlap and come in order; OnClose comes exactly once, after the
// last OnMessage (from the worker that was reading, the reader goroutine, or a
// goroutine started by the close). Input that arrives once closing has begun is
// discarded.
//
// # Concurrency contract
//
// Server and Conn methods are safe for concurrent use and never block, except
// Server.Close, which waits for every connection and goroutine to finish and must not
// be called from a Handler. Handler methods run on shared workers and must not block.
//
// Ownership: Conn.mu guards the state, the queue, the outgoing batch and the close
// bookkeeping. The epoll read state (input buffer and scan positions) belongs to the
// one worker holding readBusy, which EPOLLONESHOT guarantees; the goroutine-mode read
// state belongs to the reader goroutine. Lock order: gorilla's internal write lock →
// Conn.mu; Server.pmu → Conn.mu. Server.mu is never held together with another lock.
// Gorilla is never called with Conn.mu held. Every goroutine (poller, workers,
// sweeper, readers, flushers, close timers, OnClose deliveries) is counted in a
// Server WaitGroup and ends by Server.Close.
package wsio
