package wsio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestControlFramesAroundMessages(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newRecorder(false)
		ts := newTestServer(t, Config{Mode: mode}, func() Handler { return rec })
		ws, _ := ts.dial(t)
		pongs := make(chan string, 8)
		// Arrives with the fragmented message's frames in one write: all data,
		// interleaved control frames and trailing ones.
		ws.SetPongHandler(func(s string) error { pongs <- s; return nil })
		go func() {
			for {
				if _, _, err := ws.ReadMessage(); err != nil {
					return
				}
			}
		}()
		var b []byte
		b = append(b, rawFrame(true, opPing, []byte("1"), true)...)
		b = append(b, rawFrame(true, opText, []byte("a"), true)...)
		b = append(b, rawFrame(true, opPing, []byte("2"), true)...)
		b = append(b, rawFrame(true, opPong, []byte("unsolicited"), true)...)
		b = append(b, rawFrame(true, opBinary, []byte("b"), true)...)
		b = append(b, rawFrame(true, opPing, []byte("3"), true)...)
		writeRaw(t, ws, b)
		for _, want := range []string{"a", "b"} {
			if m := rec.next(t); m.data != want {
				t.Fatalf("got %q, want %q", m.data, want)
			}
		}
		// Pings answered before the flusher runs share a pong with the latest
		// payload: pongs come in order and the last one answers ping "3".
		last := ""
		for last != "3" {
			select {
			case p := <-pongs:
				if p <= last {
					t.Fatalf("pong %q after %q", p, last)
				}
				last = p
			case <-time.After(failBound):
				t.Fatalf("no pong for the last ping (last %q)", last)
			}
		}
	})
}

func TestBadClosePayload(t *testing.T) {
	tests := []struct {
		name    string
		payload []byte
	}{
		{"one byte", []byte{0x03}},
		{"reserved code", []byte{0x03, 0xee}}, // 1006
		{"invalid utf-8 reason", []byte{0x03, 0xe8, 0xff}},
	}
	forModes(t, func(t *testing.T, mode Mode) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				rec := newRecorder(false)
				ts := newTestServer(t, Config{Mode: mode}, func() Handler { return rec })
				ws, _ := ts.dial(t)
				writeRaw(t, ws, rawFrame(true, opClose, tt.payload, true))
				if code := readClose(t, ws); code != websocket.CloseProtocolError {
					t.Errorf("client saw close %d", code)
				}
				if code := closeCode(rec.waitClosed(t)); code != websocket.CloseProtocolError {
					t.Errorf("OnClose code %d", code)
				}
			})
		}
	})
}

func TestWriteTimeout(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newRecorder(false)
		ts := newTestServer(t, Config{Mode: mode, WriteTimeout: 200 * time.Millisecond}, func() Handler { return rec })
		_, c := ts.dial(t) // never reads
		m, _ := NewMessage(true, make([]byte, 60<<10))
		// Keep the queue topped up until the socket buffers are full and a write
		// stays stuck past WriteTimeout, which must close the conn.
		deadline := time.Now().Add(failBound)
		for !errors.Is(c.Send(m), ErrClosed) {
			if time.Now().After(deadline) {
				t.Fatal("conn never closed")
			}
			runtime.Gosched()
		}
		err := rec.waitClosed(t)
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("OnClose err = %v, want a timeout", err)
		}
	})
}

// TestWriteResumesAfterFullSocket fills the socket until a write has to wait, then
// reads: every message must arrive whole and in order, and writes must keep working
// after WriteTimeout has passed (the wait's deadline must not outlive it).
func TestWriteResumesAfterFullSocket(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		const writeTimeout = 2 * time.Second
		rec := newRecorder(false)
		// The default queue bound (1 MiB) keeps each batch small enough to be
		// read well within WriteTimeout.
		ts := newTestServer(t, Config{Mode: mode, WriteTimeout: writeTimeout}, func() Handler { return rec })
		ws, c := ts.dial(t)
		payload := make([]byte, 16<<10)
		send := func(seq uint32) error {
			binary.BigEndian.PutUint32(payload, seq)
			m, err := NewMessage(true, payload)
			if err != nil {
				t.Fatal(err)
			}
			return c.Send(m)
		}
		var sent uint32
		deadline := time.Now().Add(failBound)
		for counterValue(t, ts.s.met.blockedWrites) == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the socket never filled up")
			}
			switch err := send(sent); {
			case err == nil:
				sent++
			case errors.Is(err, ErrQueueFull):
				runtime.Gosched() // the flusher is behind: let it run into the full socket
			default:
				t.Fatalf("send %d: %v", sent, err)
			}
		}
		read := func(want uint32) {
			t.Helper()
			_ = ws.SetReadDeadline(time.Now().Add(failBound))
			_, got, err := ws.ReadMessage()
			if err != nil {
				t.Fatalf("read %d: %v", want, err)
			}
			if len(got) != len(payload) || binary.BigEndian.Uint32(got) != want {
				t.Fatalf("message %d: %d bytes, seq %d", want, len(got), binary.BigEndian.Uint32(got))
			}
		}
		for i := range sent {
			read(i)
		}
		// Not synchronisation: the deadline of the blocked write must lie in the
		// past before the next write, which must still succeed.
		<-time.After(writeTimeout + 200*time.Millisecond)
		if err := send(sent); err != nil {
			t.Fatal(err)
		}
		read(sent)
		if c.isClosed() {
			t.Fatal("connection closed")
		}
	})
}

func TestStartErrors(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		rec := newRecorder(false)
		ts := newTestServer(t, Config{Mode: mode}, func() Handler { return rec })
		_, c := ts.dial(t)
		if err := c.Start(rec); err == nil {
			t.Error("second Start succeeded")
		}
		if err := c.Start(nil); err == nil {
			t.Error("Start(nil) succeeded")
		}
		c.CloseNow(websocket.CloseNormalClosure, "")
		rec.waitClosed(t)
		if err := c.Start(rec); !errors.Is(err, ErrClosed) {
			t.Errorf("Start after close: %v", err)
		}
		if err := c.Ping(); !errors.Is(err, ErrClosed) {
			t.Errorf("Ping after close: %v", err)
		}
	})
}

func TestUpgradeFailure(t *testing.T) {
	s, err := NewServer(Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := s.Upgrade(w, r, nil, nil); err == nil {
			t.Error("upgrade of a plain request succeeded")
		}
	}))
	t.Cleanup(hs.Close)
	resp, err := http.Get(hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if s.Len() != 0 {
		t.Fatalf("%d conns", s.Len())
	}
}

// TestConcurrentUse races senders, pings, a reading client and closes; the race
// detector and the handler contract checks do the asserting.
func TestConcurrentUse(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		const conns = 20
		recs := make(chan *recorder, conns)
		ts := newTestServer(t, Config{Mode: mode, CloseWait: 200 * time.Millisecond}, func() Handler {
			r := newRecorder(true)
			recs <- r
			return r
		})
		var wg sync.WaitGroup
		for i := range conns {
			ws, c := ts.dial(t)
			wg.Add(3)
			go func() { // client: writes and reads until closed
				defer wg.Done()
				for j := range 50 {
					if ws.WriteMessage(websocket.TextMessage, []byte(fmt.Sprint(j))) != nil {
						return
					}
				}
			}()
			go func() {
				defer wg.Done()
				for {
					if _, _, err := ws.ReadMessage(); err != nil {
						return
					}
				}
			}()
			go func() { // server side: sends, pings, then closes one way or another
				defer wg.Done()
				m, _ := NewMessage(false, []byte("server"))
				for range 100 {
					_ = c.Send(m)
					_ = c.Ping()
				}
				if i%2 == 0 {
					c.Close(websocket.CloseNormalClosure, "bye")
				} else {
					c.CloseNow(4001, "slow")
				}
			}()
		}
		for range conns {
			rec := <-recs
			rec.waitClosed(t)
		}
		wg.Wait()
	})
}

func TestModeString(t *testing.T) {
	for m, want := range map[Mode]string{ModeAuto: "auto", ModeEpoll: "epoll", ModeGoroutine: "goroutine", Mode(7): "mode(7)"} {
		if got := m.String(); got != want {
			t.Errorf("%d: %q", int(m), got)
		}
	}
	s, err := NewServer(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !strings.Contains("epoll goroutine", s.Mode().String()) || s.Mode() == ModeAuto {
		t.Errorf("auto resolved to %v", s.Mode())
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	rec := newRecorder(true)
	ts := newTestServer(t, Config{Registerer: reg}, func() Handler { return rec })
	ws, _ := ts.dial(t)
	if err := ws.WriteMessage(websocket.TextMessage, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ws.ReadMessage(); err != nil {
		t.Fatal(err)
	}
	writeRaw(t, ws, rawFrame(true, opText, []byte{0xff}, true))
	rec.waitClosed(t)
	if got := counterValue(t, ts.s.met.violations.WithLabelValues("1007")); got != 1 {
		t.Errorf("violations{1007} = %v", got)
	}
	if got := counterValue(t, ts.s.met.messages); got != 1 {
		t.Errorf("messages written = %v", got)
	}
	if got := counterValue(t, ts.s.met.socketWrites); got < 2 {
		t.Errorf("socket writes = %v", got)
	}
	// A second server on the same registry is refused, not panicking.
	if _, err := NewServer(Config{Registerer: reg}); err == nil {
		t.Error("duplicate registration accepted")
	}
}

func counterValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

func TestServerCloseUnstarted(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		s, err := NewServer(Config{Mode: mode})
		if err != nil {
			t.Fatal(err)
		}
		upgraded := make(chan *Conn, 1)
		hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if c, err := s.Upgrade(w, r, nil, nil); err == nil {
				upgraded <- c // never started
			}
		}))
		t.Cleanup(hs.Close)
		ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(hs.URL, "http"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		<-upgraded
		if s.Len() != 1 {
			t.Fatalf("Len = %d", s.Len())
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if code := readClose(t, ws); code != websocket.CloseGoingAway {
			t.Fatalf("client saw %d", code)
		}
	})
}
