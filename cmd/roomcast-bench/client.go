package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/app"
)

// Targets: the systems under test. A target speaks the protocol of its system
// (protocolOf); dialSpec.Target and pubSpec.Target hold the protocol.
const (
	targetRoomcast  = "roomcast"  // one roomcast node
	targetSocketIO  = "socketio"  // one Socket.IO node with the Redis adapter
	targetCluster   = "cluster"   // a roomcast cluster (3 nodes with --local)
	targetSocketIO2 = "socketio2" // two Socket.IO nodes sharing Redis
)

// targetNames lists every target, in the order --targets documents them.
var targetNames = []string{targetRoomcast, targetCluster, targetSocketIO, targetSocketIO2}

// protocolOf is the protocol a target speaks: targetRoomcast or targetSocketIO.
func protocolOf(target string) string {
	switch target {
	case targetRoomcast, targetCluster:
		return targetRoomcast
	case targetSocketIO, targetSocketIO2:
		return targetSocketIO
	}
	return ""
}

// baselineOf is the single-node target a cluster target is compared with.
func baselineOf(target string) string {
	switch target {
	case targetCluster:
		return targetRoomcast
	case targetSocketIO2:
		return targetSocketIO
	}
	return ""
}

// dialSpec says how a worker reaches the system under test.
type dialSpec struct {
	Target string `json:"target"` // targetRoomcast or targetSocketIO
	URL    string `json:"url"`    // WebSocket URL (roomcast: …/ws; Socket.IO: http://host:port)
	// URLs, when set, are the URLs of several nodes of one cluster: connection i goes
	// to URLs[i mod len(URLs)], so connections spread evenly over the nodes.
	URLs    []string `json:"urls,omitempty"`
	Secret  string   `json:"secret"`  // roomcast: HS256 secret to mint client tokens
	Sources int      `json:"sources"` // spread over 127.0.0.1..127.0.0.N source addresses
}

// urlFor is the URL connection i dials.
func (d dialSpec) urlFor(i int) string {
	if len(d.URLs) > 0 {
		return d.URLs[i%len(d.URLs)]
	}
	return d.URL
}

// dialer returns a WebSocket dialer bound to source address 127.0.0.(1+i%sources), so
// many connections do not exhaust one address's ephemeral ports.
func (d dialSpec) dialer(i int) *websocket.Dialer {
	src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%max(d.Sources, 1)))}
	nd := &net.Dialer{LocalAddr: src, Timeout: 15 * time.Second}
	return &websocket.Dialer{
		NetDialContext:   nd.DialContext,
		HandshakeTimeout: 15 * time.Second,
		ReadBufferSize:   2048,
		WriteBufferSize:  512,
	}
}

// connect opens connection i as user, joined to rooms, and returns it ready to read
// deliveries.
func (d dialSpec) connect(ctx context.Context, i int, user string, rooms []string) (*websocket.Conn, error) {
	switch d.Target {
	case targetRoomcast:
		return d.connectRoomcast(ctx, i, user, rooms)
	case targetSocketIO:
		return d.connectSocketIO(ctx, i, rooms)
	}
	return nil, fmt.Errorf("unknown target %q", d.Target)
}

func (d dialSpec) connectRoomcast(ctx context.Context, i int, user string, rooms []string) (*websocket.Conn, error) {
	tok, err := app.DevToken(d.Secret, user, 12*time.Hour)
	if err != nil {
		return nil, err
	}
	c, _, err := d.dialer(i).DialContext(ctx, d.urlFor(i), nil)
	if err != nil {
		return nil, err
	}
	cmds := []*pb.ClientCommand{{Id: 1, Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: tok, Client: "roomcast-bench"}}}}
	for k, r := range rooms {
		cmds = append(cmds, &pb.ClientCommand{Id: uint32(k + 2), Command: &pb.ClientCommand_Join{Join: &pb.JoinCommand{Room: r}}})
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for _, cmd := range cmds {
		b, _ := protojson.Marshal(cmd)
		if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
			c.Close()
			return nil, err
		}
		if err := awaitReply(c, cmd.GetId()); err != nil {
			c.Close()
			return nil, err
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, nil
}

func awaitReply(c *websocket.Conn, id uint32) error {
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			return err
		}
		var m pb.ServerMessage
		if err := protojson.Unmarshal(data, &m); err != nil {
			return err
		}
		if m.GetId() != id {
			continue
		}
		if e := m.GetError(); e != nil {
			return fmt.Errorf("command %d: %s (%d)", id, e.GetMessage(), e.GetCode())
		}
		return nil
	}
}

// connectSocketIO speaks Engine.IO 4 / Socket.IO 5 over the WebSocket transport: open
// packet, namespace connect, then one acknowledged "join" event per room.
func (d dialSpec) connectSocketIO(ctx context.Context, i int, rooms []string) (*websocket.Conn, error) {
	u := strings.TrimSuffix(strings.Replace(d.urlFor(i), "http", "ws", 1), "/") + "/socket.io/?EIO=4&transport=websocket"
	c, _, err := d.dialer(i).DialContext(ctx, u, nil)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*websocket.Conn, error) { c.Close(); return nil, err }
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := awaitSIO(c, "0"); err != nil {
		return fail(err)
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte("40")); err != nil {
		return fail(err)
	}
	if _, err := awaitSIO(c, "40"); err != nil {
		return fail(err)
	}
	for k, r := range rooms {
		room, _ := json.Marshal(r)
		id := strconv.Itoa(k + 1)
		if err := c.WriteMessage(websocket.TextMessage, []byte(`42`+id+`["join",`+string(room)+`]`)); err != nil {
			return fail(err)
		}
		if _, err := awaitSIO(c, "43"+id+"["); err != nil {
			return fail(err)
		}
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, nil
}

// awaitSIO reads until a packet starting with prefix arrives, answering pings.
func awaitSIO(c *websocket.Conn, prefix string) ([]byte, error) {
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			return nil, err
		}
		if bytes.HasPrefix(data, []byte(prefix)) {
			return data, nil
		}
		if reply := pingReply(targetSocketIO, data); reply != nil {
			_ = c.WriteMessage(websocket.TextMessage, reply)
			continue
		}
		if bytes.HasPrefix(data, []byte("44")) || bytes.HasPrefix(data, []byte("1")) {
			return nil, fmt.Errorf("socket.io refused: %s", data)
		}
	}
}

var (
	roomcastPing = []byte(`"ping"`)
	roomcastPong = []byte(`{"pong":{}}`)
	sioPong      = []byte("3")
)

// pingReply returns the answer to an app-level ping frame, or nil when frame is none.
// (WebSocket-level pings are answered by gorilla itself.)
func pingReply(target string, frame []byte) []byte {
	switch target {
	case targetRoomcast:
		if len(frame) < 64 && bytes.Contains(frame, roomcastPing) {
			return roomcastPong
		}
	case targetSocketIO:
		if len(frame) == 1 && frame[0] == '2' {
			return sioPong
		}
	}
	return nil
}
