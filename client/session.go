package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// session is one WebSocket connection. Its reader goroutine is the only reader of ws;
// writes are serialised by wmu. Fields marked c.mu are guarded by the client's lock.
type session struct {
	c      *Client
	ws     *websocket.Conn
	binary bool
	wmu    sync.Mutex

	pending map[uint32]*call // c.mu
	dead    bool             // c.mu
	disc    *pb.Disconnect   // c.mu: the last Disconnect push

	lastRecv atomic.Int64 // clock time of the last frame, Unix nanoseconds
	readDone chan struct{}
	readErr  error // written before readDone is closed

	kill     chan struct{} // closed to make the supervisor drop this connection
	killOnce sync.Once
	killWhy  error
}

func newSession(c *Client, ws *websocket.Conn) *session {
	s := &session{
		c: c, ws: ws, binary: c.o.subprotocol == SubprotocolProto,
		pending: map[uint32]*call{}, readDone: make(chan struct{}), kill: make(chan struct{}),
	}
	s.touch()
	return s
}

func (s *session) touch() { s.lastRecv.Store(s.c.o.clock.Now().UnixNano()) }

// drop asks the supervisor to close this connection and reconnect.
func (s *session) drop(why error) {
	s.killOnce.Do(func() { s.killWhy = why; close(s.kill) })
}

var (
	jsonOut = protojson.MarshalOptions{}
	jsonIn  = protojson.UnmarshalOptions{DiscardUnknown: true}
)

func (s *session) write(cmd *pb.ClientCommand) error {
	var (
		data []byte
		err  error
		mt   = websocket.TextMessage
	)
	if s.binary {
		data, err = proto.Marshal(cmd)
		mt = websocket.BinaryMessage
	} else {
		data, err = jsonOut.Marshal(cmd)
	}
	if err != nil {
		return fmt.Errorf("client: encode command: %w", err)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.ws.SetWriteDeadline(time.Now().Add(s.c.o.writeTimeout))
	if err := s.ws.WriteMessage(mt, data); err != nil {
		// A failed write leaves the socket unusable; the reader notices soon, and
		// closing makes sure it does.
		_ = s.ws.Close()
		return fmt.Errorf("client: write: %w", err)
	}
	return nil
}

// read returns the next message from the server.
func (s *session) read() (*pb.ServerMessage, error) {
	mt, data, err := s.ws.ReadMessage()
	if err != nil {
		return nil, err
	}
	s.touch()
	m := &pb.ServerMessage{}
	if mt == websocket.BinaryMessage {
		err = proto.Unmarshal(data, m)
	} else if err = jsonIn.Unmarshal(data, m); err == nil {
		keepRawJSON(data, m)
	}
	if err != nil {
		return nil, fmt.Errorf("client: decode server message: %w", err)
	}
	return m, nil
}

// closeWith sends a close frame with code and closes the socket.
func (s *session) closeWith(code int) {
	msg := websocket.FormatCloseMessage(code, "")
	_ = s.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	_ = s.ws.Close()
}

func (s *session) readLoop() {
	defer close(s.readDone)
	for {
		m, err := s.read()
		if err != nil {
			s.readErr = err
			return
		}
		s.c.handle(s, m)
	}
}

// endReason turns the reader's error (and a Disconnect push, if one came) into the
// reason the connection ended.
func (s *session) endReason(err error) error {
	s.c.mu.Lock()
	disc := s.disc
	s.c.mu.Unlock()
	return closeReason(err, disc)
}

func closeReason(err error, disc *pb.Disconnect) error {
	var ce *websocket.CloseError
	if errors.As(err, &ce) && ce.Code != websocket.CloseAbnormalClosure && ce.Code != websocket.CloseNoStatusReceived {
		code := fabric.CloseCode(ce.Code)
		reason := ce.Text
		reconnect := code.Reconnect()
		if disc != nil && fabric.CloseCode(disc.GetCode()) == code {
			if reason == "" {
				reason = disc.GetReason()
			}
			reconnect = reconnect && disc.GetReconnect()
		}
		return &CloseError{Code: code, Reason: reason, Reconnect: reconnect}
	}
	if disc != nil {
		code := fabric.CloseCode(disc.GetCode())
		return &CloseError{Code: code, Reason: disc.GetReason(), Reconnect: code.Reconnect() && disc.GetReconnect()}
	}
	return fmt.Errorf("client: connection lost: %w", err)
}

// Wire conversions.

func payloadToPB(p fabric.Payload) *pb.Payload {
	if p.Binary {
		return &pb.Payload{Kind: &pb.Payload_Binary{Binary: p.Data}}
	}
	return &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: string(p.Data)}}
}

func payloadFromPB(p *pb.Payload) fabric.Payload {
	switch k := p.GetKind().(type) {
	case *pb.Payload_Binary:
		return fabric.Payload{Data: k.Binary, Binary: true}
	case *pb.Payload_JsonText:
		return fabric.Payload{Data: []byte(k.JsonText)}
	case *pb.Payload_Json:
		return fabric.Payload{Data: valueJSON(k.Json)}
	}
	return fabric.Payload{}
}

// valueJSON encodes a JSON value compactly. Numbers pass through float64, as in
// every protobuf JSON mapping; payloads avoid this path (see keepRawJSON), public
// info does not.
func valueJSON(v *structpb.Value) []byte {
	if v == nil {
		return nil
	}
	b, err := json.Marshal(v.AsInterface())
	if err != nil {
		return nil
	}
	return b
}

func posFromPB(p *pb.Position) fabric.Position {
	return fabric.Position{Epoch: p.GetEpoch(), Offset: p.GetOffset()}
}

func posToPB(p fabric.Position) *pb.Position {
	return &pb.Position{Epoch: p.Epoch, Offset: p.Offset}
}

func infoFromPB(ci *pb.ClientInfo) fabric.ClientInfo {
	return fabric.ClientInfo{User: ci.GetUser(), Conn: ci.GetConnection(), Info: valueJSON(ci.GetInfo())}
}

func messageFromPB(m *pb.RoomMessage) *fabric.Message {
	msg := &fabric.Message{
		Room:      m.GetRoom(),
		Pos:       fabric.Position{Epoch: m.GetEpoch(), Offset: m.GetOffset()},
		Payload:   payloadFromPB(m.GetPayload()),
		Publisher: infoFromPB(m.GetPublisher()),
	}
	if ms := m.GetTimeUnixMs(); ms != 0 {
		msg.Time = time.UnixMilli(ms)
	}
	return msg
}
