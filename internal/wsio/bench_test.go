package wsio

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

type nopHandler struct{}

func (nopHandler) OnMessage(*Conn, bool, []byte) {}
func (nopHandler) OnClose(*Conn, error)          {}

// fanoutRig is n WebSocket clients of one Server, each draining and counting
// what it is sent: done gets a value when the count across all clients reaches
// want. b.Cleanup closes the clients, waits for their readers, then closes the
// Server and the HTTP server.
type fanoutRig struct {
	server    []*Conn // the server side of each connection
	got, want atomic.Int64
	done      chan struct{}
}

func newFanoutRig(b *testing.B, cfg Config, n int) *fanoutRig {
	b.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		b.Fatal(err)
	}
	conns := make(chan *Conn, n)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := s.Upgrade(w, r, nil, nil)
		if err != nil {
			return
		}
		if err := c.Start(nopHandler{}); err == nil {
			conns <- c
		}
	}))
	b.Cleanup(hs.Close)
	b.Cleanup(func() { _ = s.Close() })
	url := "ws" + strings.TrimPrefix(hs.URL, "http")

	rig := &fanoutRig{done: make(chan struct{}, 1)}
	rig.want.Store(-1)
	var wg sync.WaitGroup
	clients := make([]*websocket.Conn, 0, n)
	b.Cleanup(func() {
		for _, ws := range clients {
			ws.Close()
		}
		wg.Wait()
	})
	for range n {
		ws, _, err := websocket.DefaultDialer.Dial(url, nil)
		if err != nil {
			b.Fatal(err)
		}
		clients = append(clients, ws)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, r, err := ws.NextReader()
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, r)
				if rig.got.Add(1) == rig.want.Load() {
					rig.done <- struct{}{}
				}
			}
		}()
	}
	rig.server = make([]*Conn, 0, n)
	for range n {
		rig.server = append(rig.server, <-conns)
	}
	return rig
}

// sendAll sends one Message of payload to every connection.
func (rig *fanoutRig) sendAll(b *testing.B, payload []byte) {
	m, err := NewMessage(true, payload)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range rig.server {
		if err := c.Send(m); err != nil {
			b.Fatal(err)
		}
	}
}

// wait returns once the clients have received want messages in all, failing
// after a generous bound.
func (rig *fanoutRig) wait(b *testing.B) {
	select {
	case <-rig.done:
	case <-time.After(time.Minute):
		b.Fatalf("delivered %d of %d", rig.got.Load(), rig.want.Load())
	}
}

// BenchmarkFanout sends one Message to 1000 connections per iteration and reports
// the server-side cost per delivery (receivers share the CPU: it is an upper bound).
func BenchmarkFanout(b *testing.B) {
	for _, mode := range modes {
		b.Run(mode.String(), func(b *testing.B) {
			const n = 1000
			rig := newFanoutRig(b, Config{Mode: mode, MaxQueueMessages: 1 << 20, MaxQueueBytes: 1 << 30}, n)
			payload := bytes.Repeat([]byte("x"), 64)

			b.ResetTimer()
			rig.want.Store(int64(b.N) * n)
			start := time.Now()
			for range b.N {
				rig.sendAll(b, payload)
			}
			rig.wait(b)
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(el.Nanoseconds())/float64(int64(b.N)*n), "ns/delivery")
			b.ReportMetric(float64(int64(b.N)*n)/el.Seconds(), "deliveries/s")
		})
	}
}

// BenchmarkFanoutSweep is the low-rate fan-out: one Message to 1000 connections,
// then wait until every client has it, so each connection gets one message per
// flush (one socket write per delivery), as at 100 messages/s in a room of 1000. It
// reports ns per delivery and the sweep time (first Send to last receipt) at p50 and
// p99: the floor under publish→deliver latency for a room that size. Clients share
// the CPU, so both are upper bounds; compare runs made on the same machine.
//
// "unbatched" is the epoll mode with WriteBatching off: one write(2) per socket
// instead of io_uring submissions.
func BenchmarkFanoutSweep(b *testing.B) {
	variants := []struct {
		name string
		cfg  Config
	}{
		{"epoll", Config{Mode: ModeEpoll}},
		{"unbatched", Config{Mode: ModeEpoll, WriteBatching: BatchOff}},
		{"goroutine", Config{Mode: ModeGoroutine}},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			const n = 1000
			rig := newFanoutRig(b, v.cfg, n)
			payload := bytes.Repeat([]byte("x"), 64)
			sweeps := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			began, cpu := time.Now(), processCPU()
			for i := range b.N {
				rig.want.Store(int64(i+1) * n)
				start := time.Now()
				rig.sendAll(b, payload)
				rig.wait(b)
				sweeps = append(sweeps, time.Since(start))
			}
			el, cpu := time.Since(began), processCPU()-cpu
			b.StopTimer()
			slices.Sort(sweeps)
			b.ReportMetric(float64(el.Nanoseconds())/float64(int64(b.N)*n), "ns/delivery")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(int64(b.N)*n), "cpu-ns/delivery")
			b.ReportMetric(float64(sweeps[len(sweeps)/2].Microseconds()), "p50-µs/sweep")
			b.ReportMetric(float64(sweeps[len(sweeps)*99/100].Microseconds()), "p99-µs/sweep")
		})
	}
}

// BenchmarkIdleMemory opens 2000 idle connections in-process and reports heap plus
// goroutine stack bytes per connection pair (the client side is a bare TCP socket
// with a hand-made handshake). "bare" is the same with the server just holding the
// hijacked socket, so ws − bare is what the transport adds to a TCP connection.
// Run with -benchtime=1x.
func BenchmarkIdleMemory(b *testing.B) {
	const n = 2000
	for _, variant := range []string{"bare", "epoll", "goroutine"} {
		b.Run(variant, func(b *testing.B) {
			for range b.N {
				b.ReportMetric(idleBytesPerConn(b, variant, n), "B/conn")
			}
		})
	}
}

func idleBytesPerConn(b *testing.B, variant string, n int) float64 {
	var s *Server
	var err error
	switch variant {
	case "epoll":
		s, err = NewServer(Config{Mode: ModeEpoll})
	case "goroutine":
		s, err = NewServer(Config{Mode: ModeGoroutine})
	}
	if err != nil {
		b.Fatal(err)
	}
	ready := make(chan struct{}, n)
	var mu sync.Mutex
	var bare []net.Conn
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s == nil {
			nc, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			_, _ = nc.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"))
			mu.Lock()
			bare = append(bare, nc)
			mu.Unlock()
			ready <- struct{}{}
			return
		}
		c, err := s.Upgrade(w, r, nil, nil)
		if err != nil {
			return
		}
		if err := c.Start(nopHandler{}); err == nil {
			ready <- struct{}{}
		}
	}))
	defer hs.Close()
	addr := strings.TrimPrefix(hs.URL, "http://")

	dialOne := func() net.Conn {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		req := "GET / HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
		if _, err := nc.Write([]byte(req)); err != nil {
			b.Fatal(err)
		}
		br := bufio.NewReaderSize(nc, 512)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			b.Fatalf("handshake: %v", err)
		}
		return nc
	}
	// Warm up pools and the HTTP server before measuring.
	warm := dialOne()
	<-ready
	warm.Close()

	measure := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc + ms.StackInuse
	}
	before := measure()
	clients := make([]net.Conn, 0, n)
	for range n {
		clients = append(clients, dialOne())
	}
	for range n {
		<-ready
	}
	// Let net/http's per-connection goroutines finish after the hijack.
	deadline := time.Now().Add(failBound)
	for runtime.NumGoroutine() > n+50 && variant != "goroutine" && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	after := measure()
	per := float64(after-before) / float64(n)
	runtime.KeepAlive(clients)

	for _, nc := range clients {
		nc.Close()
	}
	for _, nc := range bare {
		nc.Close()
	}
	if s != nil {
		s.Close()
	}
	fmt.Fprintf(io.Discard, "%v", per)
	return per
}

// countHandler counts messages and signals when want have arrived.
type countHandler struct {
	got  atomic.Int64
	want int64
	done chan struct{}
}

func (h *countHandler) OnMessage(*Conn, bool, []byte) {
	if h.got.Add(1) == h.want {
		close(h.done)
	}
}
func (h *countHandler) OnClose(*Conn, error) {}

// BenchmarkInbound measures the read path: 100 clients send 64-byte messages, the
// server delivers them to a counting handler.
func BenchmarkInbound(b *testing.B) {
	for _, mode := range modes {
		b.Run(mode.String(), func(b *testing.B) {
			const clients = 100
			per := b.N/clients + 1
			h := &countHandler{want: int64(per * clients), done: make(chan struct{})}
			s, err := NewServer(Config{Mode: mode})
			if err != nil {
				b.Fatal(err)
			}
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				c, err := s.Upgrade(w, r, nil, nil)
				if err == nil {
					_ = c.Start(h)
				}
			}))
			defer hs.Close()
			defer s.Close()
			url := "ws" + strings.TrimPrefix(hs.URL, "http")
			conns := make([]*websocket.Conn, clients)
			for i := range conns {
				if conns[i], _, err = websocket.DefaultDialer.Dial(url, nil); err != nil {
					b.Fatal(err)
				}
				defer conns[i].Close()
			}
			payload := bytes.Repeat([]byte("y"), 64)
			pm, _ := websocket.NewPreparedMessage(websocket.BinaryMessage, payload)
			b.ResetTimer()
			var wg sync.WaitGroup
			for _, ws := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range per {
						if ws.WritePreparedMessage(pm) != nil {
							return
						}
					}
				}()
			}
			wg.Wait()
			select {
			case <-h.done:
			case <-time.After(time.Minute):
				b.Fatalf("got %d of %d", h.got.Load(), h.want)
			}
		})
	}
}
