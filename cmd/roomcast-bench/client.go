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
	// RxBatchWait is the receive engine's batch wait (rxConfig.BatchWait); 0 is off.
	RxBatchWait time.Duration `json:"rx_batch_wait,omitempty"`
}

// urlFor is the URL connection i dials.
func (d dialSpec) urlFor(i int) string {
	if len(d.URLs) > 0 {
		return d.URLs[i%len(d.URLs)]
	}
	return d.URL
}

// source is the source address of connection i: 127.0.0.(1+i%sources), so many
// connections do not exhaust one address's ephemeral ports.
func (d dialSpec) source(i int) net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%max(d.Sources, 1)))}
}

// setup opens connection i as user, joined to rooms, on a raw TCP connection (see
// rxdial.go), and returns it ready to hand to the receive engine: every byte read past
// the last reply is kept in its stream state.
func (d dialSpec) setup(ctx context.Context, i int, user string, rooms []string) (*rxSetup, error) {
	var s *rxSetup
	var err error
	switch d.Target {
	case targetRoomcast:
		s, err = dialRaw(ctx, d.urlFor(i), d.source(i), roomcastSubprotocol, targetRoomcast)
	case targetSocketIO:
		u := strings.TrimSuffix(d.urlFor(i), "/") + "/socket.io/?EIO=4&transport=websocket"
		s, err = dialRaw(ctx, u, d.source(i), "", targetSocketIO)
	default:
		return nil, fmt.Errorf("unknown target %q", d.Target)
	}
	if err != nil {
		return nil, err
	}
	if d.Target == targetRoomcast {
		err = setupRoomcast(s, d.Secret, user, rooms)
	} else {
		err = setupSocketIO(s, rooms)
	}
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		s.abort()
		return nil, err
	}
	return s, nil
}

// roomcastSubprotocol is the roomcast client protocol in JSON.
const roomcastSubprotocol = "roomcast.v1.json"

// setupRoomcast connects with a token minted for user and joins rooms, one command at a
// time, each awaited.
func setupRoomcast(s *rxSetup, secret, user string, rooms []string) error {
	tok, err := app.DevToken(secret, user, 12*time.Hour)
	if err != nil {
		return err
	}
	cmds := []*pb.ClientCommand{{Id: 1, Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: tok, Client: "roomcast-bench"}}}}
	for k, r := range rooms {
		cmds = append(cmds, &pb.ClientCommand{Id: uint32(k + 2), Command: &pb.ClientCommand_Join{Join: &pb.JoinCommand{Room: r}}})
	}
	for _, cmd := range cmds {
		b, _ := protojson.Marshal(cmd)
		if err := s.send(b); err != nil {
			return err
		}
		if err := s.await(replyTo(cmd.GetId())); err != nil {
			return err
		}
	}
	return nil
}

// replyTo matches the server's reply to command id (an error reply fails).
func replyTo(id uint32) func([]byte) (bool, error) {
	return func(data []byte) (bool, error) {
		var m pb.ServerMessage
		if err := protojson.Unmarshal(data, &m); err != nil {
			return false, err
		}
		if m.GetId() != id {
			return false, nil
		}
		if e := m.GetError(); e != nil {
			return false, fmt.Errorf("command %d: %s (%d)", id, e.GetMessage(), e.GetCode())
		}
		return true, nil
	}
}

// setupSocketIO speaks Engine.IO 4 / Socket.IO 5 over the WebSocket transport: open
// packet, namespace connect, then one acknowledged "join" event per room.
func setupSocketIO(s *rxSetup, rooms []string) error {
	if err := s.await(sioPacket("0")); err != nil {
		return err
	}
	if err := s.send([]byte("40")); err != nil {
		return err
	}
	if err := s.await(sioPacket("40")); err != nil {
		return err
	}
	for k, r := range rooms {
		room, _ := json.Marshal(r)
		id := strconv.Itoa(k + 1)
		if err := s.send([]byte(`42` + id + `["join",` + string(room) + `]`)); err != nil {
			return err
		}
		if err := s.await(sioPacket("43" + id + "[")); err != nil {
			return err
		}
	}
	return nil
}

// sioPacket matches a packet starting with prefix; a connect error or an Engine.IO
// close fails.
func sioPacket(prefix string) func([]byte) (bool, error) {
	return func(data []byte) (bool, error) {
		if bytes.HasPrefix(data, []byte(prefix)) {
			return true, nil
		}
		if bytes.HasPrefix(data, []byte("44")) || bytes.HasPrefix(data, []byte("1")) {
			return false, fmt.Errorf("socket.io refused: %s", data)
		}
		return false, nil
	}
}

var (
	roomcastPing = []byte(`"ping"`)
	roomcastPong = []byte(`{"pong":{}}`)
	sioPong      = []byte("3")
)

// pingReply returns the answer to an app-level ping frame, or nil when frame is none.
// (WebSocket-level pings are answered by the receive engine and the setup.)
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
