package e2e

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/testnode"
)

// wait bounds every blocking step of a test; it is a failure bound, not a pace.
const wait = 10 * time.Second

// wsClient is a raw protocol client: it sends commands and collects everything the
// server sends, so tests can assert the wire behaviour exactly.
type wsClient struct {
	t      testing.TB
	conn   *websocket.Conn
	binary bool
	in     chan *pb.ServerMessage
	done   chan struct{}
	mu     sync.Mutex
	err    error // read error once done is closed
	nextID uint32
}

type dialOpts struct {
	subprotocol string
	origin      string
	header      http.Header
}

func dial(t testing.TB, n *testnode.Node, o dialOpts) (*wsClient, *http.Response, error) {
	t.Helper()
	h := http.Header{}
	for k, v := range o.header {
		h[k] = v
	}
	if o.origin != "" {
		h.Set("Origin", o.origin)
	}
	d := websocket.Dialer{HandshakeTimeout: wait}
	if o.subprotocol != "" {
		d.Subprotocols = []string{o.subprotocol}
	}
	conn, resp, err := d.Dial(n.WSURL, h)
	if err != nil {
		return nil, resp, err
	}
	c := &wsClient{t: t, conn: conn, binary: o.subprotocol == "roomcast.v1.proto",
		in: make(chan *pb.ServerMessage, 4096), done: make(chan struct{})}
	go c.readLoop()
	t.Cleanup(func() { _ = c.conn.Close(); <-c.done })
	return c, resp, nil
}

func mustDial(t testing.TB, n *testnode.Node, o dialOpts) *wsClient {
	t.Helper()
	c, _, err := dial(t, n, o)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return c
}

// connect dials and authenticates user with every right.
func connect(t testing.TB, n *testnode.Node, user string) (*wsClient, *pb.ConnectResult) {
	t.Helper()
	c := mustDial(t, n, dialOpts{})
	return c, c.connect(n.Token(t, user, claimsAll()))
}

func (c *wsClient) readLoop() {
	defer close(c.done)
	for {
		typ, data, err := c.conn.ReadMessage()
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		m := &pb.ServerMessage{}
		if typ == websocket.BinaryMessage {
			err = proto.Unmarshal(data, m)
		} else {
			err = protojson.Unmarshal(data, m)
		}
		if err != nil {
			c.t.Errorf("undecodable server frame %q: %v", data, err)
			continue
		}
		c.in <- m
	}
}

func (c *wsClient) send(cmd *pb.ClientCommand) {
	c.t.Helper()
	var err error
	if c.binary {
		b, _ := proto.Marshal(cmd)
		err = c.conn.WriteMessage(websocket.BinaryMessage, b)
	} else {
		b, _ := protojson.Marshal(cmd)
		err = c.conn.WriteMessage(websocket.TextMessage, b)
	}
	if err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// call sends cmd with a fresh id and returns its reply; pushes that arrive meanwhile
// stay queued for next().
func (c *wsClient) call(cmd *pb.ClientCommand) *pb.ServerMessage {
	c.t.Helper()
	c.nextID++
	cmd.Id = c.nextID
	c.send(cmd)
	var held []*pb.ServerMessage
	defer func() {
		// Put pushes back in front, in order.
		if len(held) == 0 {
			return
		}
		rest := make([]*pb.ServerMessage, 0, len(c.in))
		for len(c.in) > 0 {
			rest = append(rest, <-c.in)
		}
		for _, m := range append(held, rest...) {
			c.in <- m
		}
	}()
	deadline := time.After(wait)
	for {
		select {
		case m := <-c.in:
			if m.GetId() == cmd.Id {
				return m
			}
			held = append(held, m)
		case <-c.done:
			c.t.Fatalf("connection closed waiting for reply to %v: %v", cmd, c.readErr())
		case <-deadline:
			c.t.Fatalf("no reply to %v", cmd)
		}
	}
}

// next returns the next message from the server.
func (c *wsClient) next() *pb.ServerMessage {
	c.t.Helper()
	select {
	case m := <-c.in:
		return m
	case <-c.done:
		select {
		case m := <-c.in:
			return m
		default:
		}
		c.t.Fatalf("connection closed waiting for a message: %v", c.readErr())
	case <-time.After(wait):
		c.t.Fatalf("no message within %v", wait)
	}
	return nil
}

// nextMessage skips pushes other than room messages.
func (c *wsClient) nextMessage() *pb.RoomMessage {
	c.t.Helper()
	for {
		if m := c.next(); m.GetMessage() != nil {
			return m.GetMessage()
		}
	}
}

func (c *wsClient) readErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// closeCode waits for the server to close the connection and returns its close code,
// and the disconnect push if one came first.
func (c *wsClient) closeCode() (int, *pb.Disconnect) {
	c.t.Helper()
	var disc *pb.Disconnect
	deadline := time.After(wait)
	for {
		select {
		case m := <-c.in:
			if d := m.GetDisconnect(); d != nil {
				disc = d
			}
		case <-c.done:
			for len(c.in) > 0 {
				if d := (<-c.in).GetDisconnect(); d != nil {
					disc = d
				}
			}
			var ce *websocket.CloseError
			if errors.As(c.readErr(), &ce) {
				return ce.Code, disc
			}
			return -1, disc
		case <-deadline:
			c.t.Fatalf("server did not close the connection")
		}
	}
}

func (c *wsClient) connect(token string) *pb.ConnectResult {
	c.t.Helper()
	r := c.call(&pb.ClientCommand{Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: token}}})
	if r.GetError() != nil || r.GetConnect() == nil {
		c.t.Fatalf("connect failed: %v", r)
	}
	return r.GetConnect()
}

func (c *wsClient) join(room string, from *pb.Position) *pb.ServerMessage {
	c.t.Helper()
	return c.call(&pb.ClientCommand{Command: &pb.ClientCommand_Join{Join: &pb.JoinCommand{Room: room, RecoverFrom: from}}})
}

func (c *wsClient) mustJoin(room string) *pb.JoinResult {
	c.t.Helper()
	r := c.join(room, nil)
	if r.GetError() != nil {
		c.t.Fatalf("join %s: %v", room, r.GetError())
	}
	return r.GetJoin()
}

func (c *wsClient) publish(room string, v any) *pb.ServerMessage {
	c.t.Helper()
	return c.call(&pb.ClientCommand{Command: &pb.ClientCommand_Publish{Publish: &pb.PublishCommand{Room: room, Payload: jsonPayload(c.t, v)}}})
}

func jsonPayload(t testing.TB, v any) *pb.Payload {
	t.Helper()
	val, err := structpb.NewValue(v)
	if err != nil {
		t.Fatalf("payload: %v", err)
	}
	return &pb.Payload{Kind: &pb.Payload_Json{Json: val}}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}
