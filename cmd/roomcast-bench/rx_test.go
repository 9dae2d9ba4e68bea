package main

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/testnode"
	"go.uber.org/goleak"
)

// fakeWS is a scripted WebSocket server on a real socket: each test drives its side of
// every connection byte by byte.
type fakeWS struct {
	ln    net.Listener
	conns chan net.Conn
	done  chan struct{}
}

func startFakeWS(t *testing.T) *fakeWS {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeWS{ln: ln, conns: make(chan net.Conn, 256), done: make(chan struct{})}
	go func() {
		defer close(f.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.conns <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-f.done
		close(f.conns)
		for c := range f.conns {
			c.Close()
		}
	})
	return f
}

// fakeConn is the server side of one connection.
type fakeConn struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func (f *fakeWS) next(t *testing.T) *fakeConn {
	t.Helper()
	select {
	case c := <-f.conns:
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(30 * time.Second)) // a failure bound only
		return &fakeConn{t: t, nc: c, br: bufio.NewReader(c)}
	case <-time.After(30 * time.Second):
		t.Fatal("no connection")
		return nil
	}
}

// upgrade answers the handshake, sending extra in the same write as the response.
func (c *fakeConn) upgrade(wantPath string, extra []byte) {
	c.t.Helper()
	req, err := http.ReadRequest(c.br)
	if err != nil {
		c.t.Fatal(err)
	}
	if req.URL.RequestURI() != wantPath || req.Header.Get("Sec-WebSocket-Version") != "13" {
		c.t.Fatalf("handshake request %s %v", req.URL, req.Header)
	}
	sum := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + wsGUID))
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n"
	c.write(append([]byte(resp), extra...))
}

func (c *fakeConn) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// read reads one client frame, which must be masked, and unmasks it.
func (c *fakeConn) read() (byte, []byte, error) {
	var h [14]byte
	if _, err := io.ReadFull(c.br, h[:2]); err != nil {
		return 0, nil, err
	}
	n, ext := int(h[1]&0x7f), 0
	switch n {
	case 126:
		ext = 2
	case 127:
		ext = 8
	}
	if _, err := io.ReadFull(c.br, h[2:2+ext+4]); err != nil {
		return 0, nil, err
	}
	switch ext {
	case 2:
		n = int(binary.BigEndian.Uint16(h[2:]))
	case 8:
		n = int(binary.BigEndian.Uint64(h[2:]))
	}
	frame := append([]byte(nil), h[:2+ext+4]...)
	payload := make([]byte, n)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		return 0, nil, err
	}
	op, p := unmask(c.t, append(frame, payload...))
	return op, p, nil
}

// expect reads a client frame and checks it.
func (c *fakeConn) expect(op byte, payload string) {
	c.t.Helper()
	gotOp, got, err := c.read()
	if err != nil || gotOp != op || string(got) != payload {
		c.t.Fatalf("client sent op %d %q (%v), want op %d %q", gotOp, got, err, op, payload)
	}
}

// expectEOF checks that the client closed the socket.
func (c *fakeConn) expectEOF() {
	c.t.Helper()
	if op, p, err := c.read(); !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		c.t.Fatalf("client sent op %d %q (%v), want the socket closed", op, p, err)
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "connection reset") }

func text(s string) []byte { return serverFrame(true, wsText, []byte(s)) }

func benchMsg(seq int64) string {
	return string(appendPayload(nil, stamp{t: time.Now().UnixMicro(), seq: seq, step: 1}, 64))
}

// waitFor polls cond; the deadline is a failure bound only.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition; the deadline bounds it
	}
}

func newTestWorker(d dialSpec) *worker {
	w := &worker{tally: newTally()}
	w.dial = d
	w.tally.begin(1)
	return w
}

// sioOpen opens connection id of w against srv, playing the Socket.IO server's side of
// the setup, joined to no room.
func sioOpen(t *testing.T, w *worker, srv *fakeWS, id int) *fakeConn {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- w.open(context.Background(), connSpec{ID: id, User: "u"}) }()
	c := srv.next(t)
	c.upgrade("/socket.io/?EIO=4&transport=websocket", text(`0{"sid":"e"}`))
	c.expect(wsText, "40")
	c.write(text(`40{"sid":"s"}`))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRxSocketIO plays a Socket.IO server: the setup (with a ping during it and
// deliveries arriving in the same segment as the last reply), then fragmented messages
// with control frames between fragments, app and WebSocket pings, and a close.
func TestRxSocketIO(t *testing.T) {
	srv := startFakeWS(t)
	w := newTestWorker(dialSpec{Target: targetSocketIO, URL: "http://" + srv.ln.Addr().String(), Sources: 1})
	t.Cleanup(w.closeAll)
	errc := make(chan error, 1)
	go func() { errc <- w.open(context.Background(), connSpec{ID: 7, User: "u", Rooms: []string{"room-a"}}) }()
	c := srv.next(t)
	c.upgrade("/socket.io/?EIO=4&transport=websocket", text(`0{"sid":"e","pingInterval":25000}`))
	c.expect(wsText, "40")
	c.write(append(text("2"), text(`40{"sid":"s"}`)...)) // an Engine.IO ping during the setup
	c.expect(wsText, "3")
	c.expect(wsText, `421["join","room-a"]`)
	// The join ack and the first delivery in one write: the delivery must not be lost.
	c.write(append(text(`431[]`), text(`42["m",`+benchMsg(1)+`]`)...))
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	m2 := []byte(`42["m",` + benchMsg(2) + `]`)
	var seg []byte
	seg = append(seg, serverFrame(false, wsText, m2[:10])...)
	seg = append(seg, serverFrame(true, wsPing, []byte("p!"))...)
	seg = append(seg, serverFrame(true, wsContinuation, m2[10:])...)
	seg = append(seg, text("2")...)
	c.write(seg)
	c.expect(wsPong, "p!")
	c.expect(wsText, "3")
	m3 := text(`42["m",` + benchMsg(3) + `]`)
	c.write(m3[:5]) // a frame split over writes (and, likely, reads)
	c.write(m3[5:])
	waitFor(t, "3 deliveries", func() bool { tot, _ := w.tally.snapshot(false); return tot.Delivered == 3 })
	if tot, _ := w.tally.snapshot(false); tot.Dups != 0 || tot.Gaps != 0 {
		t.Fatalf("accounting %+v, want 3 delivered, no dup or gap", tot)
	}
	if w.alive.Load() != 1 || w.dropped.Load() != 0 {
		t.Fatalf("alive %d dropped %d, want 1 and 0", w.alive.Load(), w.dropped.Load())
	}

	// The server closes: the client answers with the same status and closes.
	c.write(serverFrame(true, wsClose, []byte{0x03, 0xe9, 'b', 'y', 'e'}))
	c.expect(wsClose, "\x03\xe9")
	c.expectEOF()
	waitFor(t, "the drop", func() bool { return w.alive.Load() == 0 })
	if w.dropped.Load() != 1 {
		t.Fatalf("dropped %d, want 1", w.dropped.Load())
	}
}

// TestRxDrops: whatever a server does wrong ends that connection, counted as dropped,
// and leaves the others alone; closeAll then closes the rest and ends the engine.
func TestRxDrops(t *testing.T) {
	srv := startFakeWS(t)
	before := goleak.IgnoreCurrent()
	w := newTestWorker(dialSpec{Target: targetSocketIO, URL: "http://" + srv.ln.Addr().String(), Sources: 1})
	t.Cleanup(w.closeAll)
	bad := map[string]func(c *fakeConn){
		"masked frame":   func(c *fakeConn) { c.write(appendClientFrame(nil, wsText, []byte("x"))) },
		"oversize":       func(c *fakeConn) { c.write([]byte{0x81, 127, 0, 0, 1, 0, 0, 0, 0, 0}) },
		"garbage":        func(c *fakeConn) { c.write([]byte("\x00\x00garbage")) },
		"tcp close":      func(c *fakeConn) { c.nc.Close() },
		"bad opcode":     func(c *fakeConn) { c.write(serverFrame(true, 0xb, nil)) },
		"long control":   func(c *fakeConn) { c.write(serverFrame(true, wsPing, make([]byte, 200))) },
		"stray fragment": func(c *fakeConn) { c.write(serverFrame(true, wsContinuation, []byte("x"))) },
	}
	good := sioOpen(t, w, srv, 0)
	id := 1
	for name, act := range bad {
		c := sioOpen(t, w, srv, id)
		id++
		act(c)
		if name != "tcp close" {
			c.expectEOF()
		}
	}
	waitFor(t, "the drops", func() bool { return w.dropped.Load() == int64(len(bad)) })
	good.write(text(`42["m",` + benchMsg(1) + `]`))
	waitFor(t, "a delivery on the good connection", func() bool { tot, _ := w.tally.snapshot(false); return tot.Delivered == 1 })
	if w.alive.Load() != 1 {
		t.Fatalf("alive %d, want the good connection only", w.alive.Load())
	}
	w.closeAll()
	good.expectEOF()
	if w.alive.Load() != 0 || w.dropped.Load() != int64(len(bad)) {
		t.Fatalf("after closeAll: alive %d dropped %d", w.alive.Load(), w.dropped.Load())
	}
	goleak.VerifyNone(t, before) // the engine's loops have ended
}

// TestRxCloseRaces closes connections from several goroutines at once, twice each,
// while the server floods them and new connections are added: each socket is closed
// once, none counts as dropped, and the fresh ones keep receiving.
func TestRxCloseRaces(t *testing.T) {
	srv := startFakeWS(t)
	w := newTestWorker(dialSpec{Target: targetSocketIO, URL: "http://" + srv.ln.Addr().String(), Sources: 1})
	t.Cleanup(w.closeAll)
	const n = 24
	var olds []*fakeConn
	for i := range n {
		olds = append(olds, sioOpen(t, w, srv, i))
	}
	w.mu.Lock()
	held := append([]*wconn(nil), w.conns...)
	w.mu.Unlock()
	flood := bytes50(text(`42["m",{"x":1}]`))
	var wg sync.WaitGroup
	for _, c := range olds {
		wg.Go(func() {
			for {
				if _, err := c.nc.Write(flood); err != nil {
					return // the client closed
				}
			}
		})
	}
	for _, wc := range held {
		for range 2 {
			wg.Go(func() { wc.rx.close(wc.c) })
		}
	}
	// New connections take descriptor numbers as they are freed.
	var fresh []*fakeConn
	for i := range 4 {
		fresh = append(fresh, sioOpen(t, w, srv, n+i))
	}
	wg.Wait()
	for i, c := range fresh {
		c.write(text(`42["m",` + string(appendPayload(nil, stamp{t: time.Now().UnixMicro(), seq: 1, room: int64(i), step: 1}, 64)) + `]`))
	}
	waitFor(t, "the fresh connections' deliveries", func() bool { tot, _ := w.tally.snapshot(false); return tot.Delivered == 4 })
	if w.alive.Load() != 4 || w.dropped.Load() != 0 {
		t.Fatalf("alive %d dropped %d, want 4 and 0", w.alive.Load(), w.dropped.Load())
	}
}

func bytes50(frame []byte) []byte {
	var b []byte
	for range 50 {
		b = append(b, frame...)
	}
	return b
}

// TestRxRoomcastNode runs the engine in this process against a real node whose
// heartbeat would close connections that do not answer its pings.
func TestRxRoomcastNode(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	n := startBenchNode(t, 100*time.Millisecond, 200*time.Millisecond)
	w := newTestWorker(dialSpec{Target: targetRoomcast, URL: n.WSURL, Secret: testnode.Secret, Sources: 2, RxBatchWait: 200 * time.Microsecond})
	t.Cleanup(w.closeAll)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const conns, msgs = 6, 20
	rep := w.connect(ctx, func() []connSpec {
		var s []connSpec
		for i := range conns {
			s = append(s, connSpec{ID: i, User: fmt.Sprintf("u%d", i), Rooms: []string{"rx-a", "rx-b"}})
		}
		return s
	}(), 3)
	if rep.FirstErr != "" || rep.Alive != conns {
		t.Fatalf("connect: %+v", rep)
	}
	for seq := int64(1); seq <= msgs; seq++ {
		for k, room := range []string{"rx-a", "rx-b"} {
			p := appendPayload(nil, stamp{t: time.Now().UnixMicro(), seq: seq, room: int64(k), step: 1}, 64)
			if _, err := n.Control.Publish(ctx, &pb.PublishRequest{Room: room, Payload: &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: string(p)}}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, "every delivery", func() bool { tot, _ := w.tally.snapshot(false); return tot.Delivered == conns*msgs*2 })
	// Several ping rounds (app-level and WebSocket), well past the heartbeat timeout.
	w.mu.Lock()
	rx := w.rx
	w.mu.Unlock()
	waitFor(t, "ping rounds", func() bool { return rx.pings.Load() >= conns*2*6 })
	if tot, _ := w.tally.snapshot(false); tot.Dups != 0 || tot.Gaps != 0 || w.dropped.Load() != 0 || w.alive.Load() != conns {
		t.Fatalf("accounting %+v, alive %d, dropped %d", tot, w.alive.Load(), w.dropped.Load())
	}
	// Churn's replacement: close the oldest, open a new one with its rooms.
	if res := w.churn(ctx, churnSpec{Rate: 1000, Duration: 2 * time.Millisecond, NextID: 100, Parallel: 1}); res.Done != 2 || res.Failed != 0 {
		t.Fatalf("churn: %+v", res)
	}
	if w.alive.Load() != conns || w.dropped.Load() != 0 {
		t.Fatalf("after churn: alive %d dropped %d", w.alive.Load(), w.dropped.Load())
	}
	w.closeAll()
	if w.alive.Load() != 0 || w.dropped.Load() != 0 {
		t.Fatalf("after closeAll: alive %d dropped %d", w.alive.Load(), w.dropped.Load())
	}
}

// TestRxSetupFailures: a bad handshake or a cancelled context fails the connect, and
// nothing is left held.
func TestRxSetupFailures(t *testing.T) {
	srv := startFakeWS(t)
	w := newTestWorker(dialSpec{Target: targetSocketIO, URL: "http://" + srv.ln.Addr().String(), Sources: 1})
	t.Cleanup(w.closeAll)

	errc := make(chan error, 1)
	go func() { errc <- w.open(context.Background(), connSpec{ID: 1, User: "u"}) }()
	c := srv.next(t)
	if _, err := http.ReadRequest(c.br); err != nil {
		t.Fatal(err)
	}
	c.write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: bm90IHRoZSBhY2NlcHQ=\r\n\r\n"))
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "Sec-WebSocket-Accept") {
		t.Fatalf("open with a wrong accept key: %v", err)
	}
	c.expectEOF()

	ctx, cancel := context.WithCancel(context.Background())
	go func() { errc <- w.open(ctx, connSpec{ID: 2, User: "u"}) }()
	c = srv.next(t)
	c.upgrade("/socket.io/?EIO=4&transport=websocket", nil) // then silence: no open packet
	cancel()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("open succeeded after its context was cancelled")
		}
	case <-time.After(20 * time.Second): // a failure bound only (the setup's own deadline is 30s)
		t.Fatal("a cancelled setup is still blocked")
	}
	c.expectEOF()
	if w.alive.Load() != 0 || len(w.conns) != 0 {
		t.Fatalf("alive %d, held %d after failed setups", w.alive.Load(), len(w.conns))
	}
}
