package wsio

import (
	"bytes"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// batchServer is a test server whose io_uring batching is required: the test skips
// where the kernel does not allow it (CI runs on one that does).
func batchServer(t *testing.T, cfg Config, mk func() Handler) *testServer {
	t.Helper()
	ts := newTestServer(t, cfg, mk)
	if !ts.s.Batching() {
		t.Skip("io_uring is not available here")
	}
	return ts
}

// dialN dials n clients and returns them with their server-side Conns, in order.
func (ts *testServer) dialN(t *testing.T, n int) ([]*websocket.Conn, []*Conn) {
	t.Helper()
	wss, cs := make([]*websocket.Conn, 0, n), make([]*Conn, 0, n)
	for range n {
		ws, c := ts.dial(t)
		wss, cs = append(wss, ws), append(cs, c)
	}
	return wss, cs
}

// closeRecorder records OnClose errors of many connections.
type closeRecorder struct{ closed chan error }

func newCloseRecorder() *closeRecorder { return &closeRecorder{closed: make(chan error, 1024)} }

func (*closeRecorder) OnMessage(*Conn, bool, []byte) {}
func (r *closeRecorder) OnClose(_ *Conn, err error)  { r.closed <- err }

// queueDirect puts m on c's queue the way Send does, but hands c to the caller
// instead of a flush worker, so a test decides which connections share a batch.
func queueDirect(t *testing.T, c *Conn, m *Message) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateOpen || c.flushing {
		t.Fatalf("conn %d: state %d, flushing %v", c.id, c.state, c.flushing)
	}
	if c.queue == nil {
		c.queue = c.s.pools.getQueue()
	}
	*c.queue = append(*c.queue, m)
	c.qBytes += len(m.frame)
	c.flushing = true
	c.s.wg.Add(1)
}

func readText(t *testing.T, ws *websocket.Conn) string {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(failBound))
	_, data, err := ws.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(data)
}

// One submission writes every connection's round; a socket closed between taking
// the round and submitting it fails alone; a round larger than the socket's buffer
// is finished by the blocking path, intact.
func TestBatchSubmission(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newCloseRecorder()
		ts := batchServer(t, Config{Mode: mode, MaxQueueBytes: 16 << 20}, func() Handler { return rec })
		const n = 40
		wss, cs := ts.dialN(t, n)
		b := ts.s.newFlushBatch()
		defer b.close()
		before := counterValue(t, ts.s.met.writeBatches)

		hello, err := NewMessage(false, []byte("hello"))
		if err != nil {
			t.Fatal(err)
		}
		bigData := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
		big, err := NewMessage(true, bigData)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range cs {
			m := hello
			if i == 1 {
				m = big
			}
			queueDirect(t, c, m)
			b.add(c)
		}
		// The socket of conn 0 closes after its round was taken.
		if err := cs[0].nc.Close(); err != nil {
			t.Fatal(err)
		}
		b.flush()

		if got := counterValue(t, ts.s.met.writeBatches) - before; got != 1 {
			t.Fatalf("submissions = %v, want 1", got)
		}
		for i := 2; i < n; i++ {
			if got := readText(t, wss[i]); got != "hello" {
				t.Fatalf("conn %d got %q", i, got)
			}
		}
		_ = wss[1].SetReadDeadline(time.Now().Add(failBound))
		typ, data, err := wss[1].ReadMessage()
		if err != nil || typ != websocket.BinaryMessage || !bytes.Equal(data, bigData) {
			t.Fatalf("big message: type %d, %d bytes, err %v", typ, len(data), err)
		}
		select {
		case err := <-rec.closed:
			if err == nil {
				t.Fatal("closed socket reported no error")
			}
		case <-time.After(failBound):
			t.Fatal("no OnClose for the closed socket")
		}
		if counterValue(t, ts.s.met.blockedWrites) == 0 {
			t.Error("the 4 MiB round did not take the blocking path")
		}
	})
}

// A fan-out through Send, with and without batching, reaches every connection in
// order while connections close in the middle of it.
func TestBatchedFanout(t *testing.T) {
	for wb, name := range map[WriteBatching]string{BatchAuto: "batched", BatchOff: "unbatched"} {
		t.Run(name, func(t *testing.T) {
			forModes(t, func(t *testing.T, mode Mode) {
				rec := newCloseRecorder()
				ts := newTestServer(t, Config{Mode: mode, WriteBatching: wb, FlushWorkers: 1}, func() Handler { return rec })
				if wb == BatchOff && ts.s.Batching() {
					t.Fatal("batching on with BatchOff")
				}
				const n, msgs, closers = 120, 50, 10
				wss, cs := ts.dialN(t, n)
				var readers sync.WaitGroup
				errs := make(chan error, n)
				for i, ws := range wss[closers:] {
					readers.Add(1)
					go func() {
						defer readers.Done()
						_ = ws.SetReadDeadline(time.Now().Add(failBound))
						for k := range msgs {
							_, data, err := ws.ReadMessage()
							if err != nil {
								errs <- fmt.Errorf("conn %d: message %d: %v", i+closers, k, err)
								return
							}
							if want := fmt.Sprintf("m%03d", k); string(data) != want {
								errs <- fmt.Errorf("conn %d: got %q, want %q", i+closers, data, want)
								return
							}
						}
					}()
				}
				for k := range msgs {
					m, err := NewMessage(false, fmt.Appendf(nil, "m%03d", k))
					if err != nil {
						t.Fatal(err)
					}
					for i, c := range cs {
						if i < closers && k == msgs/2 {
							c.CloseNow(websocket.CloseNormalClosure, "bye")
						}
						if err := c.Send(m); err != nil && i >= closers {
							t.Fatalf("send to %d: %v", i, err)
						}
					}
				}
				readers.Wait()
				close(errs)
				for err := range errs {
					t.Error(err)
				}
				if wb == BatchAuto && ts.s.Batching() {
					t.Logf("%v submissions for %v socket writes", counterValue(t, ts.s.met.writeBatches), counterValue(t, ts.s.met.socketWrites))
				}
			})
		})
	}
}

// refusingSender is a ring that refuses every operation, as a kernel whose io_uring
// lacks an opcode or flag would.
type refusingSender struct{ calls int }

func (r *refusingSender) send(fds []int32, _ [][]byte, res []int32) error {
	r.calls++
	for i := range fds {
		res[i] = -int32(syscall.EINVAL)
	}
	return nil
}
func (*refusingSender) capacity() int { return batchMax }
func (*refusingSender) close()        {}

// When the ring refuses the sends themselves (nothing was sent), the rounds are
// written without it, nobody is disconnected, and the worker stops batching.
func TestBatchRefusedFallsBack(t *testing.T) {
	rec := newCloseRecorder()
	ts := newTestServer(t, Config{Mode: ModeEpoll}, func() Handler { return rec })
	const n = 5
	wss, cs := ts.dialN(t, n)
	ring := &refusingSender{}
	rings := ts.s.rings.Load()
	b := ts.s.newBatchWith(ring)
	m, err := NewMessage(false, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		queueDirect(t, c, m)
		b.add(c)
	}
	b.flush()
	if ring.calls != 1 || b.ring != nil || ts.s.rings.Load() != rings {
		t.Fatalf("calls %d, ring %v, rings %d (was %d): want one refused call and batching off", ring.calls, b.ring, ts.s.rings.Load(), rings)
	}
	for i, ws := range wss {
		if got := readText(t, ws); got != "hello" {
			t.Fatalf("conn %d got %q", i, got)
		}
	}
	select {
	case err := <-rec.closed:
		t.Fatalf("a connection closed: %v", err)
	default:
	}
}
