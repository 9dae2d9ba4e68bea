package wsio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// failBound is how long a test waits for something that should happen at once; it
// only bounds a failure, it never paces the test.
const failBound = 10 * time.Second

var modes = []Mode{ModeEpoll, ModeGoroutine}

type inMsg struct {
	binary bool
	data   string
}

// recorder is a Handler that records input and can echo it.
type recorder struct {
	echo   bool
	msgs   chan inMsg
	closed chan error
	mu     sync.Mutex
	closes int
	busy   bool // detects overlapping calls
	overlp bool
	after  bool // a message came after OnClose
}

func newRecorder(echo bool) *recorder {
	return &recorder{echo: echo, msgs: make(chan inMsg, 100000), closed: make(chan error, 4)}
}

func (r *recorder) enter() {
	r.mu.Lock()
	if r.busy {
		r.overlp = true
	}
	r.busy = true
	r.mu.Unlock()
}

func (r *recorder) leave() {
	r.mu.Lock()
	r.busy = false
	r.mu.Unlock()
}

func (r *recorder) OnMessage(c *Conn, binary bool, data []byte) {
	r.enter()
	defer r.leave()
	r.mu.Lock()
	if r.closes > 0 {
		r.after = true
	}
	r.mu.Unlock()
	if r.echo {
		m, err := NewMessage(binary, data)
		if err == nil {
			_ = c.Send(m)
		}
	}
	r.msgs <- inMsg{binary, string(data)}
}

func (r *recorder) OnClose(c *Conn, err error) {
	r.enter()
	defer r.leave()
	r.mu.Lock()
	r.closes++
	r.mu.Unlock()
	r.closed <- err
}

// waitClosed returns the error OnClose got, and checks the handler contract.
func (r *recorder) waitClosed(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.closed:
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.overlp || r.after {
			t.Errorf("handler contract broken: overlapping=%v message after close=%v", r.overlp, r.after)
		}
		return err
	case <-time.After(failBound):
		t.Fatal("OnClose not called")
		return nil
	}
}

func (r *recorder) next(t *testing.T) inMsg {
	t.Helper()
	select {
	case m := <-r.msgs:
		return m
	case <-time.After(failBound):
		t.Fatal("no message delivered")
		return inMsg{}
	}
}

type testServer struct {
	s     *Server
	url   string
	conns chan *Conn
}

// newTestServer starts a Server behind an httptest server; every upgraded conn is
// started with the handler mk returns and sent on conns.
func newTestServer(t *testing.T, cfg Config, mk func() Handler) *testServer {
	t.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{s: s, conns: make(chan *Conn, 4096)}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := s.Upgrade(w, r, &websocket.Upgrader{Subprotocols: []string{"roomcast.v1.json"}}, nil)
		if err != nil {
			return
		}
		if err := c.Start(mk()); err != nil {
			t.Errorf("start: %v", err)
			return
		}
		ts.conns <- c
	}))
	ts.url = "ws" + strings.TrimPrefix(hs.URL, "http")
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		hs.Close()
	})
	return ts
}

func (ts *testServer) dial(t *testing.T) (*websocket.Conn, *Conn) {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"roomcast.v1.json"}}
	ws, _, err := d.Dial(ts.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	select {
	case c := <-ts.conns:
		return ws, c
	case <-time.After(failBound):
		t.Fatal("no server conn")
		return nil, nil
	}
}

// rawFrame encodes a client frame; mask says whether to mask it (clients must).
func rawFrame(fin bool, op byte, payload []byte, mask bool) []byte {
	var b []byte
	b0 := op
	if fin {
		b0 |= 0x80
	}
	b = append(b, b0)
	var mbit byte
	if mask {
		mbit = 0x80
	}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, mbit|byte(n))
	case n <= 0xffff:
		b = append(b, mbit|126, byte(n>>8), byte(n))
	default:
		b = append(b, mbit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if mask {
		key := [4]byte{0x12, 0x34, 0x56, 0x78}
		b = append(b, key[:]...)
		start := len(b)
		b = append(b, payload...)
		unmask(key, b[start:])
	} else {
		b = append(b, payload...)
	}
	return b
}

func writeRaw(t *testing.T, ws *websocket.Conn, b []byte) {
	t.Helper()
	if _, err := ws.NetConn().Write(b); err != nil {
		t.Fatal(err)
	}
}

// readClose reads until the peer's close frame and returns its code.
func readClose(t *testing.T, ws *websocket.Conn) int {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(failBound))
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		t.Fatalf("read: %v, want a close frame", err)
		return 0
	}
}

func closeCode(err error) int {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return -1
}

func forModes(t *testing.T, f func(t *testing.T, mode Mode)) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) { f(t, mode) })
	}
}

func TestEcho(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newRecorder(true)
		ts := newTestServer(t, Config{Mode: mode}, func() Handler { return rec })
		ws, c := ts.dial(t)
		if got := c.Subprotocol(); got != "roomcast.v1.json" {
			t.Errorf("subprotocol = %q", got)
		}
		if c.RemoteAddr() == nil || c.LastRead() == 0 {
			t.Errorf("remote addr %v, last read %d", c.RemoteAddr(), c.LastRead())
		}
		tests := []struct {
			name   string
			binary bool
			size   int
		}{
			{"empty text", false, 0},
			{"small text", false, 5},
			{"125 binary", true, 125},
			{"126 binary", true, 126},
			{"64k-1 text", false, 65535},
			{"max binary", true, 65536},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				payload := bytes.Repeat([]byte("abcdefghij"), tt.size/10+1)[:tt.size]
				typ := websocket.TextMessage
				if tt.binary {
					typ = websocket.BinaryMessage
				}
				if err := ws.WriteMessage(typ, payload); err != nil {
					t.Fatal(err)
				}
				_ = ws.SetReadDeadline(time.Now().Add(failBound))
				gt, got, err := ws.ReadMessage()
				if err != nil {
					t.Fatal(err)
				}
				if gt != typ || !bytes.Equal(got, payload) {
					t.Fatalf("echo: type %d len %d, want type %d len %d", gt, len(got), typ, len(payload))
				}
				if m := rec.next(t); m.binary != tt.binary || m.data != string(payload) {
					t.Fatalf("handler got binary=%v len %d", m.binary, len(m.data))
				}
			})
		}
	})
}

func TestOrdering(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		const n = 3000
		rec := newRecorder(false)
		ts := newTestServer(t, Config{Mode: mode}, func() Handler { return rec })
		ws, c := ts.dial(t)

		// Client to server, many messages in a few writes.
		go func() {
			for i := range n {
				if err := ws.WriteMessage(websocket.TextMessage, []byte(fmt.Sprint(i))); err != nil {
					return
				}
			}
		}()
		for i := range n {
			if m := rec.next(t); m.data != fmt.Sprint(i) {
				t.Fatalf("message %d = %q", i, m.data)
			}
		}

		// Server to client, in Send order.
		for i := range n {
			m, err := NewMessage(true, []byte(fmt.Sprint(i)))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Send(m); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
		}
		_ = ws.SetReadDeadline(time.Now().Add(failBound))
		for i := range n {
			_, got, err := ws.ReadMessage()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != fmt.Sprint(i) {
				t.Fatalf("client message %d = %q", i, got)
			}
		}
	})
}

func TestFragmentedWithInterleavedPing(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newRecorder(true)
		ts := newTestServer(t, Config{Mode: mode}, func() Handler { return rec })
		ws, _ := ts.dial(t)
		pongs := make(chan string, 1)
		ws.SetPongHandler(func(s string) error { pongs <- s; return nil })

		var b []byte
		b = append(b, rawFrame(false, opText, []byte("hel"), true)...)
		b = append(b, rawFrame(true, opPing, []byte("p1"), true)...)
		b = append(b, rawFrame(false, opContinuation, []byte("lo "), true)...)
		b = append(b, rawFrame(false, opContinuation, nil, true)...)
		b = append(b, rawFrame(true, opContinuation, []byte("world"), true)...)
		// Send it in two pieces, cut inside the ping, so the message is partial at
		// first in epoll mode.
		writeRaw(t, ws, b[:7])
		writeRaw(t, ws, b[7:])

		if m := rec.next(t); m.binary || m.data != "hello world" {
			t.Fatalf("got %+v", m)
		}
		_ = ws.SetReadDeadline(time.Now().Add(failBound))
		_, got, err := ws.ReadMessage()
		if err != nil || string(got) != "hello world" {
			t.Fatalf("echo %q, %v", got, err)
		}
		select {
		case p := <-pongs:
			if p != "p1" {
				t.Fatalf("pong %q", p)
			}
		default:
			t.Fatal("no pong before the echo")
		}
	})
}

func TestPingAlone(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newRecorder(false)
		ts := newTestServer(t, Config{Mode: mode}, func() Handler { return rec })
		ws, c := ts.dial(t)
		before := c.LastRead()
		pongs := make(chan string, 1)
		ws.SetPongHandler(func(s string) error { pongs <- s; return nil })
		readDone := make(chan struct{})
		go func() {
			defer close(readDone)
			for {
				if _, _, err := ws.ReadMessage(); err != nil {
					return
				}
			}
		}()
		if err := ws.WriteControl(websocket.PingMessage, []byte("alone"), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-pongs:
			if p != "alone" {
				t.Fatalf("pong %q", p)
			}
		case <-time.After(failBound):
			t.Fatal("no pong")
		}
		if c.LastRead() <= before {
			t.Errorf("LastRead did not advance on a ping")
		}
		// The connection still works after a ping with nothing behind it.
		if err := ws.WriteMessage(websocket.TextMessage, []byte("after")); err != nil {
			t.Fatal(err)
		}
		if m := rec.next(t); m.data != "after" {
			t.Fatalf("got %+v", m)
		}
		ws.Close()
		<-readDone
	})
}

func TestServerPing(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newRecorder(false)
		ts := newTestServer(t, Config{Mode: mode}, func() Handler { return rec })
		ws, c := ts.dial(t)
		pings := make(chan string, 1)
		ws.SetPingHandler(func(s string) error { pings <- s; return nil })
		go func() {
			for {
				if _, _, err := ws.ReadMessage(); err != nil {
					return
				}
			}
		}()
		if err := c.Ping(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-pings:
		case <-time.After(failBound):
			t.Fatal("no ping")
		}
	})
}

func TestClientClose(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newRecorder(false)
		ts := newTestServer(t, Config{Mode: mode}, func() Handler { return rec })
		ws, c := ts.dial(t)
		msg := websocket.FormatCloseMessage(4321, "bye")
		if err := ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		err := rec.waitClosed(t)
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 4321 || ce.Text != "bye" {
			t.Fatalf("OnClose err = %v", err)
		}
		if code := readClose(t, ws); code != 4321 {
			t.Fatalf("echoed close code %d", code)
		}
		m, _ := NewMessage(false, []byte("x"))
		if err := c.Send(m); !errors.Is(err, ErrClosed) {
			t.Fatalf("send after close: %v", err)
		}
	})
}

func TestAbruptClose(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newRecorder(false)
		ts := newTestServer(t, Config{Mode: mode}, func() Handler { return rec })
		ws, _ := ts.dial(t)
		if err := ws.WriteMessage(websocket.TextMessage, []byte("last")); err != nil {
			t.Fatal(err)
		}
		ws.NetConn().Close()
		if m := rec.next(t); m.data != "last" {
			t.Fatalf("got %+v", m)
		}
		err := rec.waitClosed(t)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("OnClose err = %v, want unexpected EOF", err)
		}
	})
}

func TestSlowPartialSender(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		t.Run("delivered", func(t *testing.T) {
			rec := newRecorder(false)
			ts := newTestServer(t, Config{Mode: mode, PartialTimeout: 5 * time.Second}, func() Handler { return rec })
			ws, _ := ts.dial(t)
			b := rawFrame(true, opText, []byte("slowly"), true)
			for i := range b {
				writeRaw(t, ws, b[i:i+1])
				time.Sleep(5 * time.Millisecond) // pacing the sender, not synchronisation
			}
			if m := rec.next(t); m.data != "slowly" {
				t.Fatalf("got %+v", m)
			}
		})
		t.Run("abandoned", func(t *testing.T) {
			rec := newRecorder(false)
			ts := newTestServer(t, Config{Mode: mode, PartialTimeout: 200 * time.Millisecond}, func() Handler { return rec })
			ws, _ := ts.dial(t)
			b := rawFrame(true, opText, []byte("never finished"), true)
			writeRaw(t, ws, b[:8])
			if code := closeCode(rec.waitClosed(t)); code != websocket.ClosePolicyViolation {
				t.Fatalf("OnClose code %d", code)
			}
			if code := readClose(t, ws); code != websocket.ClosePolicyViolation {
				t.Fatalf("client saw close %d", code)
			}
		})
	})
}

func TestViolations(t *testing.T) {
	big := make([]byte, 2048)
	tests := []struct {
		name  string
		input func() []byte
		code  int
	}{
		{"header announces too much", func() []byte {
			// Only the header (and mask key) are sent: the close must not wait
			// for the payload.
			return rawFrame(true, opBinary, big, true)[:2+2+4]
		}, websocket.CloseMessageTooBig},
		{"fragments add up to too much", func() []byte {
			var b []byte
			b = append(b, rawFrame(false, opBinary, big[:800], true)...)
			b = append(b, rawFrame(true, opContinuation, big[:800], true)...)
			return b
		}, websocket.CloseMessageTooBig},
		{"invalid utf-8 text", func() []byte {
			return rawFrame(true, opText, []byte{'o', 'k', 0xff, 0xfe}, true)
		}, websocket.CloseInvalidFramePayloadData},
		{"invalid utf-8 across fragments", func() []byte {
			var b []byte
			b = append(b, rawFrame(false, opText, []byte{0xe2, 0x82}, true)...)
			b = append(b, rawFrame(true, opContinuation, []byte{'x'}, true)...)
			return b
		}, websocket.CloseInvalidFramePayloadData},
		{"unmasked frame", func() []byte {
			return rawFrame(true, opText, []byte("plain"), false)
		}, websocket.CloseProtocolError},
		{"reserved bits", func() []byte {
			b := rawFrame(true, opText, []byte("rsv"), true)
			b[0] |= 0x40
			return b
		}, websocket.CloseProtocolError},
		{"reserved opcode", func() []byte {
			return rawFrame(true, 0x3, []byte("op"), true)
		}, websocket.CloseProtocolError},
		{"fragmented ping", func() []byte {
			return rawFrame(false, opPing, []byte("p"), true)
		}, websocket.CloseProtocolError},
		{"continuation without message", func() []byte {
			return rawFrame(true, opContinuation, []byte("c"), true)
		}, websocket.CloseProtocolError},
		{"bad close code", func() []byte {
			return rawFrame(true, opClose, []byte{0x03, 0xed}, true) // 1005
		}, websocket.CloseProtocolError},
	}
	forModes(t, func(t *testing.T, mode Mode) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				rec := newRecorder(false)
				ts := newTestServer(t, Config{Mode: mode, MaxMessageBytes: 1024}, func() Handler { return rec })
				ws, _ := ts.dial(t)
				writeRaw(t, ws, tt.input())
				if code := readClose(t, ws); code != tt.code {
					t.Errorf("client saw close %d, want %d", code, tt.code)
				}
				if code := closeCode(rec.waitClosed(t)); code != tt.code {
					t.Errorf("OnClose code %d, want %d", code, tt.code)
				}
			})
		}
	})
}

func TestQueueOverflow(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newRecorder(false)
		ts := newTestServer(t, Config{Mode: mode, MaxQueueBytes: 256 << 10, MaxQueueMessages: 64}, func() Handler { return rec })
		_, c := ts.dial(t) // the client never reads
		m, err := NewMessage(true, make([]byte, 32<<10))
		if err != nil {
			t.Fatal(err)
		}
		full := false
		for range 100000 {
			err := c.Send(m)
			if errors.Is(err, ErrQueueFull) {
				full = true
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if !full {
			t.Fatal("queue never filled against a client that does not read")
		}
		if err := c.Send(m); !errors.Is(err, ErrQueueFull) {
			t.Fatalf("conn should stay open with a full queue: %v", err)
		}
		c.CloseNow(4001, "slow")
		if code := closeCode(rec.waitClosed(t)); code != 4001 {
			t.Fatalf("OnClose code %d", code)
		}
	})
}

func TestQueueBounds(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		size     int
		wantSent int
	}{
		{"messages", Config{MaxQueueMessages: 3, MaxQueueBytes: 1 << 20}, 10, 3},
		{"bytes", Config{MaxQueueMessages: 100, MaxQueueBytes: 100}, 30, 3}, // 32 bytes each
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewServer(Config{Mode: ModeGoroutine, MaxQueueMessages: tt.cfg.MaxQueueMessages, MaxQueueBytes: tt.cfg.MaxQueueBytes})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			// A conn whose flusher is held: flushing is set, so Sends only queue.
			c := &Conn{s: s}
			c.flushing = true
			m, _ := NewMessage(true, make([]byte, tt.size))
			sent := 0
			for range 10 {
				if err := c.Send(m); err != nil {
					if !errors.Is(err, ErrQueueFull) {
						t.Fatal(err)
					}
					break
				}
				sent++
			}
			if sent != tt.wantSent {
				t.Fatalf("sent %d before full, want %d", sent, tt.wantSent)
			}
		})
	}
}

func TestCloseFlushesQueue(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newRecorder(false)
		ts := newTestServer(t, Config{Mode: mode}, func() Handler { return rec })
		ws, c := ts.dial(t)
		const n = 500
		for i := range n {
			m, _ := NewMessage(false, []byte(fmt.Sprint(i)))
			if err := c.Send(m); err != nil {
				t.Fatal(err)
			}
		}
		c.Close(websocket.CloseNormalClosure, "done")
		c.Close(websocket.CloseNormalClosure, "again") // idempotent
		m, _ := NewMessage(false, []byte("late"))
		if err := c.Send(m); !errors.Is(err, ErrClosed) {
			t.Fatalf("send after Close: %v", err)
		}
		_ = ws.SetReadDeadline(time.Now().Add(failBound))
		for i := range n {
			_, got, err := ws.ReadMessage()
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			if string(got) != fmt.Sprint(i) {
				t.Fatalf("message %d = %q", i, got)
			}
		}
		_, _, err := ws.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure || ce.Text != "done" {
			t.Fatalf("after the queue: %v, want close 1000 done", err)
		}
		// gorilla's client echoed the close; the server finishes at once.
		if code := closeCode(rec.waitClosed(t)); code != websocket.CloseNormalClosure {
			t.Fatalf("OnClose code %d", code)
		}
	})
}

func TestCloseWaitBounded(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newRecorder(false)
		ts := newTestServer(t, Config{Mode: mode, CloseWait: 100 * time.Millisecond}, func() Handler { return rec })
		_, c := ts.dial(t) // the client never answers the close
		c.Close(4000, "draining")
		if code := closeCode(rec.waitClosed(t)); code != 4000 {
			t.Fatalf("OnClose code %d", code)
		}
	})
}

func TestServerClose(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newRecorder(false)
		ts := newTestServer(t, Config{Mode: mode}, func() Handler { return rec })
		ws, _ := ts.dial(t)
		codes := make(chan int, 1)
		go func() {
			_, _, err := ws.ReadMessage()
			codes <- closeCode(err)
		}()
		if err := ts.s.Close(); err != nil {
			t.Fatal(err)
		}
		if code := closeCode(rec.waitClosed(t)); code != websocket.CloseGoingAway {
			t.Fatalf("OnClose code %d", code)
		}
		if code := <-codes; code != websocket.CloseGoingAway {
			t.Fatalf("client saw %d", code)
		}
		if ts.s.Len() != 0 {
			t.Fatalf("%d conns left", ts.s.Len())
		}
		// Upgrades after Close are refused.
		if _, resp, err := websocket.DefaultDialer.Dial(ts.url, nil); err == nil {
			t.Fatal("dial after close succeeded")
		} else if resp != nil && resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
}

func TestNewMessage(t *testing.T) {
	tests := []struct {
		name    string
		binary  bool
		data    []byte
		wantLen int
		wantErr bool
	}{
		{"small", false, []byte("hi"), 4, false},
		{"medium", true, make([]byte, 200), 204, false},
		{"large", true, make([]byte, 70000), 70010, false},
		{"invalid text", false, []byte{0xff}, 0, true},
		{"binary needs no utf-8", true, []byte{0xff}, 3, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewMessage(tt.binary, tt.data)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil && m.Len() != tt.wantLen {
				t.Fatalf("Len = %d, want %d", m.Len(), tt.wantLen)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"zero is fine", Config{Mode: ModeGoroutine}, false},
		{"negative queue", Config{Mode: ModeGoroutine, MaxQueueBytes: -1}, true},
		{"negative timeout", Config{Mode: ModeGoroutine, WriteTimeout: -time.Second}, true},
		{"unknown mode", Config{Mode: Mode(9)}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewServer(tt.cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if s != nil {
				s.Close()
			}
		})
	}
}
