package mesh

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/roomcast/roomcast/fabric"
	meshv1 "github.com/roomcast/roomcast/gen/roomcast/mesh/v1"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/pbconv"
)

// Conversions between fabric values and their mesh.v1 wire form. JSON payloads
// travel as json_text so the bytes a client receives on another node are exactly the
// bytes that were published (a google.protobuf.Value would re-encode numbers).

func payloadToWire(p fabric.Payload) *pb.Payload {
	if p.Binary {
		return &pb.Payload{Kind: &pb.Payload_Binary{Binary: p.Data}}
	}
	return &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: string(p.Data)}}
}

func payloadFromWire(p *pb.Payload) fabric.Payload {
	switch k := p.GetKind().(type) {
	case *pb.Payload_Binary:
		return fabric.Payload{Data: k.Binary, Binary: true}
	case *pb.Payload_JsonText:
		return fabric.Payload{Data: []byte(k.JsonText)}
	case *pb.Payload_Json:
		raw, err := protojson.Marshal(k.Json)
		if err != nil {
			return fabric.Payload{}
		}
		var buf bytes.Buffer
		if json.Compact(&buf, raw) != nil {
			return fabric.Payload{Data: raw}
		}
		return fabric.Payload{Data: buf.Bytes()}
	}
	return fabric.Payload{}
}

// infoToWire converts a client's public info (JSON text) to a Value; invalid or
// empty info travels as nothing.
func infoToWire(info []byte) *structpb.Value {
	if len(info) == 0 {
		return nil
	}
	v := &structpb.Value{}
	if protojson.Unmarshal(info, v) != nil {
		return nil
	}
	return v
}

func infoFromWire(v *structpb.Value) []byte {
	if v == nil || v.GetKind() == nil {
		return nil
	}
	raw, err := protojson.Marshal(v)
	if err != nil {
		return nil
	}
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return raw
	}
	return buf.Bytes()
}

func posToWire(p fabric.Position) *pb.Position {
	return &pb.Position{Epoch: p.Epoch, Offset: p.Offset}
}

func posFromWire(p *pb.Position) fabric.Position {
	return fabric.Position{Epoch: p.GetEpoch(), Offset: p.GetOffset()}
}

func clientToWire(ci fabric.ClientInfo) *pb.ClientInfo {
	return &pb.ClientInfo{User: ci.User, Connection: ci.Conn, Info: infoToWire(ci.Info)}
}

func clientFromWire(ci *pb.ClientInfo) fabric.ClientInfo {
	return fabric.ClientInfo{User: ci.GetUser(), Conn: ci.GetConnection(), Info: infoFromWire(ci.GetInfo())}
}

func messageToWire(m *fabric.Message) *pb.RoomMessage {
	out := &pb.RoomMessage{
		Room:       m.Room,
		Epoch:      m.Pos.Epoch,
		Offset:     m.Pos.Offset,
		Payload:    payloadToWire(m.Payload),
		TimeUnixMs: m.Time.UnixMilli(),
	}
	if m.Publisher.User != "" || m.Publisher.Conn != "" {
		out.Publisher = clientToWire(m.Publisher)
	}
	return out
}

func messageFromWire(m *pb.RoomMessage) *fabric.Message {
	out := &fabric.Message{
		Room:    m.GetRoom(),
		Pos:     fabric.Position{Epoch: m.GetEpoch(), Offset: m.GetOffset()},
		Payload: payloadFromWire(m.GetPayload()),
		Time:    time.UnixMilli(m.GetTimeUnixMs()),
	}
	if m.Publisher != nil {
		out.Publisher = clientFromWire(m.Publisher)
	}
	return out
}

func messagesToWire(ms []*fabric.Message) []*pb.RoomMessage {
	out := make([]*pb.RoomMessage, len(ms))
	for i, m := range ms {
		out[i] = messageToWire(m)
	}
	return out
}

func messagesFromWire(ms []*pb.RoomMessage) []*fabric.Message {
	out := make([]*fabric.Message, len(ms))
	for i, m := range ms {
		out[i] = messageFromWire(m)
	}
	return out
}

func memberToWire(m fabric.Member) *pb.Member {
	return &pb.Member{User: m.User, Connections: m.Conns, Info: infoToWire(m.Info)}
}

func memberFromWire(m *pb.Member) fabric.Member {
	return fabric.Member{User: m.GetUser(), Conns: m.GetConnections(), Info: infoFromWire(m.GetInfo())}
}

func eventToWire(ev *fabric.Event) *pb.Event {
	var p *pb.Payload
	if ev.Payload != nil {
		p = payloadToWire(*ev.Payload)
	}
	return pbconv.Event(ev, p)
}

func eventFromWire(ev *pb.Event) fabric.Event {
	out := fabric.Event{
		Type:   fabric.EventType(ev.GetType()),
		Node:   ev.GetNode(),
		Conn:   ev.GetConnection(),
		User:   ev.GetUser(),
		Room:   ev.GetRoom(),
		Code:   fabric.CloseCode(ev.GetCode()),
		Reason: ev.GetReason(),
		Missed: ev.GetMissed(),
	}
	if ev.Time != nil {
		out.Time = ev.Time.AsTime()
	}
	if ev.Payload != nil {
		p := payloadFromWire(ev.Payload)
		out.Payload = &p
	}
	return out
}

// errToWire converts an error to the Error reply of a request.
func errToWire(err error) *meshv1.Envelope {
	return &meshv1.Envelope{Body: &meshv1.Envelope_Error{Error: errToPB(err)}}
}

// errToPB converts an error to its wire form, keeping its fabric code.
func errToPB(err error) *pb.Error {
	code := fabric.CodeOf(err)
	return &pb.Error{Code: pb.ErrorCode(code), Message: err.Error(), Temporary: code.Temporary()}
}

// errNotOwner is returned inside the mesh when this node may not act as a shard's
// owner right now; routing retries it and callers never see it.
var errNotOwner = errors.New("not the owner of the shard")

// replyErr returns the fabric error carried by a reply, errNotOwner for NotOwner,
// or nil for any other body.
func replyErr(env *meshv1.Envelope) error {
	switch b := env.GetBody().(type) {
	case *meshv1.Envelope_Error:
		code := fabric.Code(b.Error.GetCode())
		if code == 0 {
			code = fabric.CodeInternal
		}
		return &fabric.Error{Code: code, Msg: b.Error.GetMessage()}
	case *meshv1.Envelope_NotOwner:
		return errNotOwner
	}
	return nil
}

func ack() *meshv1.Envelope { return &meshv1.Envelope{Body: &meshv1.Envelope_Ack{Ack: &meshv1.Ack{}}} }
