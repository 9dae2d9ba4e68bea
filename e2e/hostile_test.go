package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/roomcast/roomcast/conformance"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/app"
	"github.com/roomcast/roomcast/internal/testnode"
)

// bystander is a client in a room that receives a steady stream of backend
// publishes while an attack runs; check proves it got every one, in order.
type bystander struct {
	t    *testing.T
	n    *testnode.Node
	c    *wsClient
	room string
	seen int // last sequence number received

	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	sent int // last sequence number published
	err  error
}

func newBystander(t *testing.T, n *testnode.Node) *bystander {
	t.Helper()
	b := &bystander{t: t, n: n, room: "chat:bystander"}
	b.c, _ = connect(t, n, "bystander")
	b.c.mustJoin(b.room)
	b.start()
	t.Cleanup(b.halt)
	return b
}

// start runs the publisher: one message every 2 ms (the pace is the input, not a
// synchronisation).
func (b *bystander) start() {
	b.stop, b.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(b.done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-b.stop:
				return
			case <-tick.C:
			}
			b.mu.Lock()
			seq := b.sent + 1
			b.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			_, err := b.n.Control.Publish(ctx, &pb.PublishRequest{Room: b.room, Payload: jsonPayload(b.t, map[string]any{"seq": seq})})
			cancel()
			b.mu.Lock()
			if err != nil {
				b.err = err
				b.mu.Unlock()
				return
			}
			b.sent = seq
			b.mu.Unlock()
		}
	}()
}

func (b *bystander) halt() {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	<-b.done
}

// check stops the publisher, waits until the bystander has received every message
// published so far, in order and without gaps, then starts the publisher again.
func (b *bystander) check(t *testing.T) {
	t.Helper()
	// Let the stream run past the attack: at least one more message.
	for deadline := time.Now().Add(wait); ; {
		b.mu.Lock()
		progressed, err := b.sent > b.seen, b.err
		b.mu.Unlock()
		if progressed || err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bystander publisher made no progress")
		}
		time.Sleep(time.Millisecond) // polling a condition; the deadline is the bound
	}
	b.halt()
	b.mu.Lock()
	sent, err := b.sent, b.err
	b.mu.Unlock()
	if err != nil {
		t.Fatalf("bystander publisher: %v", err)
	}
	for b.seen < sent {
		m := b.c.nextMessage()
		seq := int(m.GetPayload().GetJson().GetStructValue().GetFields()["seq"].GetNumberValue())
		if seq != b.seen+1 {
			t.Fatalf("bystander got message %d after %d", seq, b.seen)
		}
		b.seen = seq
	}
	b.start()
}

func hostileNode(t *testing.T, transport string) *testnode.Node {
	return testnode.Start(t, testnode.Options{Configure: func(c *app.Config) {
		c.Transport = transport
		c.ReadHeaderTimeout = 500 * time.Millisecond
		c.AuthTimeout = 500 * time.Millisecond
		c.MaxRoomsPerConn = 4
		c.ControlMaxRecv = 64 << 10
		c.ConnectRate = 1e6 // the attacks open many connections on purpose
	}})
}

// heapInuse reads go_memstats_heap_inuse_bytes from the node's /metrics.
func heapInuse(t *testing.T, n *testnode.Node) float64 {
	t.Helper()
	resp, err := http.Get(n.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_memstats_heap_inuse_bytes "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatal("no go_memstats_heap_inuse_bytes in /metrics")
	return 0
}

// rawConnect opens a raw-frame connection and authenticates it.
func rawConnect(t *testing.T, n *testnode.Node, user string) *conformance.Client {
	t.Helper()
	c := rawDial(t, n)
	cmd, _ := protojsonMarshal(&pb.ClientCommand{Id: 1, Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: n.Token(t, user, claimsAll())}}})
	if err := c.WriteFrames(0, conformance.Text(cmd)); err != nil {
		t.Fatal(err)
	}
	m, _, err := c.ReadMessage(time.Now().Add(wait))
	if err != nil || !bytes.Contains(m.Data, []byte(`"connect"`)) {
		t.Fatalf("connect: %q %v", m.Data, err)
	}
	return c
}

func rawDial(t *testing.T, n *testnode.Node) *conformance.Client {
	t.Helper()
	c, err := conformance.Dial(ctxT(t), n.WSURL, nil, "roomcast.v1.json")
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestHostileInput runs each attack against a node while a bystander client keeps
// receiving, and checks the attack got its documented answer and the bystander lost
// nothing.
func TestHostileInput(t *testing.T) {
	for _, transport := range []string{"epoll", "goroutine"} {
		t.Run(transport, func(t *testing.T) { testHostile(t, transport) })
	}
}

func testHostile(t *testing.T, transport string) {
	n := hostileNode(t, transport)
	by := newBystander(t, n)
	attacks := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"oversized frame header 1000 times", func(t *testing.T) {
			before := heapInuse(t, n)
			const attempts, workers = 1000, 8
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < attempts; i += workers {
						if err := oversizedHeader(n); err != nil {
							errs <- fmt.Errorf("attempt %d: %w", i, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			// 1000 announced 4 EiB payloads: had any been allocated the node would be
			// dead; the bound catches anything proportional to the attempts.
			if after := heapInuse(t, n); after > before+50<<20 {
				t.Fatalf("heap in use grew from %.0f to %.0f bytes", before, after)
			}
		}},
		{"slow header upgrade", func(t *testing.T) {
			nc, err := conformance.DialTCP(ctxT(t), n.WSURL)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			req, _, _ := conformance.HandshakeRequest(n.WSURL, nil, "roomcast.v1.json")
			start := time.Now()
			stopWriting := make(chan struct{})
			written := make(chan int, 1)
			go func() {
				i := 0
				defer func() { written <- i }()
				tick := time.NewTicker(100 * time.Millisecond) // the slowness is the attack
				defer tick.Stop()
				for ; i < len(req); i++ {
					select {
					case <-stopWriting:
						return
					case <-tick.C:
					}
					if _, err := nc.Write(req[i : i+1]); err != nil {
						return
					}
				}
			}()
			_ = nc.SetReadDeadline(time.Now().Add(wait))
			got, err := io.ReadAll(nc)
			close(stopWriting)
			sentBytes := <-written
			if err != nil && !isReset(err) {
				t.Fatalf("read: %v (after %v)", err, time.Since(start))
			}
			if bytes.Contains(got, []byte(" 101 ")) || sentBytes >= len(req) {
				t.Fatalf("slow upgrade went through: %q", got)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("cut after %v, want about ReadHeaderTimeout (500ms)", d)
			}
		}},
		{"never sending connect", func(t *testing.T) {
			c := mustDial(t, n, dialOpts{})
			if code, disc := c.closeCode(); code != 4501 || disc.GetCode() != 4501 || disc.GetReconnect() {
				t.Fatalf("close %d, disconnect %v; want 4501 without reconnect", code, disc)
			}
		}},
		{"ping flood", func(t *testing.T) {
			before := heapInuse(t, n)
			c := rawConnect(t, n, "pinger")
			// Thousands of pings, never reading: pongs coalesce (one pending pong with
			// the latest payload), so the server's buffers stay bounded.
			var frames []conformance.Frame
			for i := range 5000 {
				frames = append(frames, conformance.Ping(fmt.Appendf(bytes.Repeat([]byte{'p'}, 100), "%05d", i)))
			}
			if err := c.WriteFrames(0, frames...); err != nil {
				t.Fatal(err)
			}
			if after := heapInuse(t, n); after > before+50<<20 {
				t.Fatalf("heap in use grew from %.0f to %.0f bytes", before, after)
			}
			// The flooder itself is still served: the last ping is answered.
			deadline := time.Now().Add(wait)
			for {
				f, err := c.ReadFrame(deadline)
				if err != nil {
					t.Fatalf("waiting for the last pong: %v", err)
				}
				if f.Opcode == conformance.OpPong && bytes.HasSuffix(f.Payload, []byte("04999")) {
					break
				}
			}
		}},
		{"command flood", func(t *testing.T) {
			c, _ := connect(t, n, "flooder")
			for i := range 1000 {
				b, _ := protojsonMarshal(&pb.ClientCommand{Id: uint32(i + 10), Command: &pb.ClientCommand_PresenceStats{PresenceStats: &pb.PresenceStatsCommand{Room: "chat:flood"}}})
				if err := c.conn.WriteMessage(websocket.TextMessage, b); err != nil {
					break // closed by the server, as it should be
				}
			}
			// Collect everything until the server closes (a failure bound, not a pace).
			select {
			case <-c.done:
			case <-time.After(wait):
				t.Fatal("flooder not disconnected")
			}
			var limited bool
			var disc *pb.Disconnect
			for len(c.in) > 0 {
				m := <-c.in
				if m.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_RATE_LIMITED {
					limited = true
				}
				if d := m.GetDisconnect(); d != nil {
					disc = d
				}
			}
			code, _ := c.closeCode()
			if !limited || code != 4005 || disc.GetCode() != 4005 {
				t.Fatalf("rate limited %v, close %d, disconnect %v; want RATE_LIMITED replies then 4005", limited, code, disc)
			}
		}},
		{"joining past the room limit", func(t *testing.T) {
			c, _ := connect(t, n, "joiner")
			for i := range 4 {
				c.mustJoin(fmt.Sprintf("chat:many-%d", i))
			}
			if r := c.join("chat:many-4", nil); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_LIMIT_EXCEEDED {
				t.Fatalf("fifth join: %v, want LIMIT_EXCEEDED", r)
			}
			// The connection is still usable.
			if r := c.publish("chat:many-0", "still here"); r.GetError() != nil {
				t.Fatalf("publish after the refused join: %v", r.GetError())
			}
		}},
		{"malformed frames", func(t *testing.T) {
			for _, tc := range []struct {
				name   string
				sub    string
				binary bool
				data   []byte
			}{
				{"malformed json", "", false, []byte(`{"id":1,"publish":{"room":`)},
				{"json of the wrong shape", "", false, []byte(`{"id":"one","publish":[]}`)},
				{"json unknown command", "", false, []byte(`{"id":3,"teleport":{"room":"chat:x"}}`)},
				{"binary frame on json", "", true, []byte{0x08, 0x01}},
				{"malformed protobuf", "roomcast.v1.proto", true, []byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}},
				{"text frame on protobuf", "roomcast.v1.proto", false, []byte(`{"id":1}`)},
			} {
				t.Run(tc.name, func(t *testing.T) {
					c := mustDial(t, n, dialOpts{subprotocol: tc.sub})
					c.connect(n.Token(t, "malformed", claimsAll()))
					typ := websocket.TextMessage
					if tc.binary {
						typ = websocket.BinaryMessage
					}
					if err := c.conn.WriteMessage(typ, tc.data); err != nil {
						t.Fatal(err)
					}
					if code, disc := c.closeCode(); code != 4007 || disc.GetCode() != 4007 {
						t.Fatalf("close %d, disconnect %v; want 4007 (bad frame)", code, disc)
					}
				})
			}
		}},
		{"unknown command", func(t *testing.T) {
			// A command the decoder can parse but the node does not know (a newer
			// client's, as an unknown protobuf field, or none at all) gets
			// UNKNOWN_COMMAND and the connection lives on; JSON with an unknown field is
			// undecodable and closes with 4007 (see "malformed frames").
			for _, sub := range []string{"roomcast.v1.json", "roomcast.v1.proto"} {
				t.Run(sub, func(t *testing.T) {
					c := mustDial(t, n, dialOpts{subprotocol: sub})
					c.connect(n.Token(t, "unknown", claimsAll()))
					var err error
					if c.binary {
						b := protowire.AppendTag(nil, 1, protowire.VarintType)
						b = protowire.AppendVarint(b, 7)
						b = protowire.AppendTag(b, 99, protowire.BytesType) // a command field from the future
						b = protowire.AppendBytes(b, []byte{0x0a, 0x01, 'x'})
						err = c.conn.WriteMessage(websocket.BinaryMessage, b)
					} else {
						err = c.conn.WriteMessage(websocket.TextMessage, []byte(`{"id":7}`))
					}
					if err != nil {
						t.Fatal(err)
					}
					for {
						m := c.next()
						if m.GetId() != 7 {
							continue
						}
						if m.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_UNKNOWN_COMMAND {
							t.Fatalf("reply %v, want UNKNOWN_COMMAND", m)
						}
						break
					}
					if r := c.call(&pb.ClientCommand{Command: &pb.ClientCommand_PresenceStats{PresenceStats: &pb.PresenceStatsCommand{Room: "chat:after-unknown"}}}); r.GetError() != nil {
						t.Fatalf("connection unusable after an unknown command: %v", r)
					}
				})
			}
		}},
		{"oversized control-API message", func(t *testing.T) {
			big := strings.Repeat("x", 128<<10)
			_, err := n.Control.Publish(ctxT(t), &pb.PublishRequest{Room: "chat:big", Payload: jsonPayload(t, big)})
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("publish of %d bytes: %v, want ResourceExhausted", len(big), err)
			}
		}},
		{"compression cannot be negotiated", func(t *testing.T) {
			// No permessage-deflate means no decompression bomb: the extension is never
			// accepted, and a compressed (RSV1) frame is a protocol error.
			c, err := conformance.Dial(ctxT(t), n.WSURL, http.Header{"Sec-Websocket-Extensions": {"permessage-deflate; client_max_window_bits"}}, "roomcast.v1.json")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if ext := c.Response.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
				t.Fatalf("server accepted extension %q", ext)
			}
			if err := c.WriteFrames(0, conformance.Frame{Fin: true, Rsv: 4, Opcode: conformance.OpText, Payload: []byte{0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00}}); err != nil {
				t.Fatal(err)
			}
			cl, err := c.ExpectClose(time.Now().Add(wait))
			if err != nil || cl.Code != 1002 {
				t.Fatalf("close %d, %v; want 1002", cl.Code, err)
			}
		}},
	}
	for _, a := range attacks {
		t.Run(a.name, a.run)
		by.check(t)
	}
	// The bystander is still connected and served.
	if r := by.c.publish(by.room, "done"); r.GetError() != nil {
		t.Fatalf("bystander publish: %v", r.GetError())
	}
}

// oversizedHeader sends a text frame header announcing 2^62 bytes on a fresh
// connection and expects 1009 without sending any payload.
func oversizedHeader(n *testnode.Node) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := conformance.Dial(ctx, n.WSURL, nil, "roomcast.v1.json")
	if err != nil {
		return err
	}
	defer c.Close()
	l := uint64(1) << 62
	if err := c.WriteFrames(0, conformance.Frame{Fin: true, Opcode: conformance.OpText, Length: &l}); err != nil {
		return err
	}
	f, err := c.ReadFrame(time.Now().Add(wait))
	if err != nil {
		return err
	}
	if f.Opcode != conformance.OpClose || f.CloseCode() != websocket.CloseMessageTooBig {
		return fmt.Errorf("got opcode %d code %d, want close 1009", f.Opcode, f.CloseCode())
	}
	return nil
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) || errors.Is(err, io.ErrUnexpectedEOF)
}
