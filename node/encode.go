package node

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/bits"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// Subprotocols the node speaks. JSON is the default when a client asks for none.
const (
	SubprotocolJSON  = "roomcast.v1.json"
	SubprotocolProto = "roomcast.v1.proto"
)

// payloadFromPB converts a client's payload to the fabric form. JSON values are
// re-marshalled to compact JSON so every receiver sees the same bytes; json_text is
// validated and kept verbatim (it is the cheap path for publishers holding JSON).
func payloadFromPB(p *pb.Payload) (fabric.Payload, error) {
	if p == nil {
		return fabric.Payload{}, fabric.Errorf(fabric.CodeBadRequest, "payload is missing")
	}
	switch k := p.Kind.(type) {
	case *pb.Payload_Json:
		if k.Json == nil {
			return fabric.Payload{}, fabric.Errorf(fabric.CodeBadRequest, "payload json is empty")
		}
		raw, err := protojson.Marshal(k.Json)
		if err != nil {
			return fabric.Payload{}, fabric.Errorf(fabric.CodeBadRequest, "payload json: %v", err)
		}
		// protojson randomises whitespace on purpose; compact it so receivers get
		// stable bytes.
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return fabric.Payload{}, fabric.Errorf(fabric.CodeBadRequest, "payload json: %v", err)
		}
		return fabric.Payload{Data: buf.Bytes()}, nil
	case *pb.Payload_JsonText:
		if !json.Valid([]byte(k.JsonText)) {
			return fabric.Payload{}, fabric.Errorf(fabric.CodeBadRequest, "payload json_text is not valid json")
		}
		return fabric.Payload{Data: []byte(k.JsonText)}, nil
	case *pb.Payload_Binary:
		return fabric.Payload{Data: k.Binary, Binary: true}, nil
	}
	return fabric.Payload{}, fabric.Errorf(fabric.CodeBadRequest, "payload has no kind")
}

// payloadToPB converts a fabric payload for protobuf frames and generic replies. An
// empty non-binary payload becomes a Payload with no kind.
func payloadToPB(p fabric.Payload) *pb.Payload {
	if p.Binary {
		return &pb.Payload{Kind: &pb.Payload_Binary{Binary: p.Data}}
	}
	if len(p.Data) == 0 {
		return &pb.Payload{}
	}
	return &pb.Payload{Kind: &pb.Payload_Json{Json: jsonToValue(p.Data)}}
}

// jsonToValue converts raw JSON (validated where it entered the fabric) to a Value; a
// value that does not parse becomes null rather than failing a whole delivery.
func jsonToValue(raw []byte) *structpb.Value {
	v := &structpb.Value{}
	if err := protojson.Unmarshal(raw, v); err != nil {
		return structpb.NewNullValue()
	}
	return v
}

// clientInfoToPB converts a publisher or member; the zero ClientInfo becomes nil.
func clientInfoToPB(ci fabric.ClientInfo) *pb.ClientInfo {
	if ci.User == "" && ci.Conn == "" && len(ci.Info) == 0 {
		return nil
	}
	out := &pb.ClientInfo{User: ci.User, Connection: ci.Conn}
	if len(ci.Info) > 0 {
		out.Info = jsonToValue(ci.Info)
	}
	return out
}

// roomMessageToPB converts a room message for protobuf frames and replies.
func roomMessageToPB(m *fabric.Message) *pb.RoomMessage {
	out := &pb.RoomMessage{
		Room:      m.Room,
		Epoch:     m.Pos.Epoch,
		Offset:    m.Pos.Offset,
		Payload:   payloadToPB(m.Payload),
		Publisher: clientInfoToPB(m.Publisher),
	}
	if !m.Time.IsZero() {
		out.TimeUnixMs = m.Time.UnixMilli()
	}
	return out
}

func positionToPB(p fabric.Position) *pb.Position {
	return &pb.Position{Epoch: p.Epoch, Offset: p.Offset}
}

func positionFromPB(p *pb.Position) *fabric.Position {
	if p == nil {
		return nil
	}
	return &fabric.Position{Epoch: p.Epoch, Offset: p.Offset}
}

func joinResultToPB(room string, r fabric.JoinResult) *pb.JoinResult {
	out := &pb.JoinResult{
		Room:        room,
		Position:    positionToPB(r.Pos),
		Recoverable: r.Recoverable,
		Recovered:   r.Recovered,
	}
	for _, m := range r.Missed {
		out.Messages = append(out.Messages, replyMessageToPB(m))
	}
	return out
}

// replyMessageToPB converts a room message for a reply or generic push (a join's
// recovered messages, a history read). Unlike roomMessageToPB it keeps a JSON payload
// verbatim, as json_text: marshalServerMessage turns it into the wire's json Value,
// splicing the publisher's bytes into JSON frames as appendRoomMessageJSON does for
// live pushes. Re-encoding through a Value would sort the payload's keys, change its
// whitespace and round its integers beyond 2^53, so recovered messages would differ
// from the same messages received live.
func replyMessageToPB(m *fabric.Message) *pb.RoomMessage {
	out := roomMessageToPB(m)
	if !m.Payload.Binary && len(m.Payload.Data) > 0 {
		out.Payload = &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: string(m.Payload.Data)}}
	}
	return out
}

// verbatimPayloads returns the json_text payloads of the room messages a server
// message carries (see replyMessageToPB), in no particular order.
func verbatimPayloads(m *pb.ServerMessage) []*pb.Payload {
	var out []*pb.Payload
	add := func(msgs []*pb.RoomMessage) {
		for _, rm := range msgs {
			if p := rm.GetPayload(); p != nil {
				if _, ok := p.GetKind().(*pb.Payload_JsonText); ok {
					out = append(out, p)
				}
			}
		}
	}
	add(m.GetJoin().GetMessages())
	add(m.GetHistory().GetMessages())
	add(m.GetJoined().GetJoin().GetMessages())
	for _, jr := range m.GetConnect().GetRooms() {
		add(jr.GetMessages())
	}
	return out
}

// marshalWithVerbatimPayloads encodes m, whose room messages carry json_text
// payloads, as the clients expect it: each such payload becomes a json Value, parsed
// for protobuf frames, and for JSON frames the verbatim text, put in place of a
// unique placeholder string after protojson has encoded the rest. m is not modified
// (generic pushes are shared between connections).
func marshalWithVerbatimPayloads(m *pb.ServerMessage, binary bool) ([]byte, error) {
	m = proto.Clone(m).(*pb.ServerMessage)
	payloads := verbatimPayloads(m)
	if binary {
		for _, p := range payloads {
			p.Kind = &pb.Payload_Json{Json: jsonToValue([]byte(p.GetJsonText()))}
		}
		return proto.Marshal(m)
	}
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	// The placeholder holds 128 random bits: no string of the frame can equal it by
	// chance, and protojson writes it unescaped.
	prefix := "roomcast-verbatim-" + hex.EncodeToString(nonce[:]) + "-"
	texts := make([]string, len(payloads))
	for i, p := range payloads {
		texts[i] = p.GetJsonText()
		p.Kind = &pb.Payload_Json{Json: structpb.NewStringValue(prefix + strconv.Itoa(i))}
	}
	data, err := protojson.Marshal(m)
	if err != nil {
		return nil, err
	}
	quoted := []byte(`"` + prefix)
	out := make([]byte, 0, len(data)+len(data)/2)
	for {
		i := bytes.Index(data, quoted)
		if i < 0 {
			break
		}
		rest := data[i+len(quoted):]
		end := bytes.IndexByte(rest, '"')
		k, err := strconv.Atoi(string(rest[:max(end, 0)]))
		if end < 0 || err != nil || k < 0 || k >= len(texts) {
			return nil, errors.New("node: verbatim payload placeholder mangled")
		}
		out = append(out, data[:i]...)
		out = append(out, texts[k]...)
		data = rest[end+1:]
	}
	return append(out, data...), nil
}

// marshalServerMessage encodes a reply or push for one subprotocol. It is the generic
// (slow) path; room messages take appendRoomMessageJSON or marshalRoomMessageProto.
func marshalServerMessage(m *pb.ServerMessage, binary bool) ([]byte, error) {
	if len(verbatimPayloads(m)) > 0 {
		return marshalWithVerbatimPayloads(m, binary)
	}
	if binary {
		return proto.Marshal(m)
	}
	return protojson.Marshal(m)
}

// marshalRoomMessageProto encodes a RoomMessage push as a protobuf frame, converting
// the raw JSON payload to a Value once for all receivers.
func marshalRoomMessageProto(m *fabric.Message) ([]byte, error) {
	return proto.Marshal(&pb.ServerMessage{Body: &pb.ServerMessage_Message{Message: roomMessageToPB(m)}})
}

// appendRoomMessageJSON appends the canonical JSON form of a RoomMessage push, as
// protojson would produce it (modulo whitespace), without building protobuf values:
// the raw JSON payload and publisher info are spliced in verbatim, binary payloads are
// base64 (standard, padded) and 64-bit integers are quoted strings.
func appendRoomMessageJSON(b []byte, m *fabric.Message) []byte {
	b = append(b, `{"message":{`...)
	comma := false
	if m.Room != "" {
		b = append(b, `"room":`...)
		b = appendJSONString(b, m.Room)
		comma = true
	}
	if m.Pos.Epoch != "" {
		if comma {
			b = append(b, ',')
		}
		b = append(b, `"epoch":`...)
		b = appendJSONString(b, m.Pos.Epoch)
		comma = true
	}
	if m.Pos.Offset != 0 {
		if comma {
			b = append(b, ',')
		}
		b = append(b, `"offset":"`...)
		b = strconv.AppendUint(b, m.Pos.Offset, 10)
		b = append(b, '"')
		comma = true
	}
	if comma {
		b = append(b, ',')
	}
	b = append(b, `"payload":`...)
	b = appendPayloadJSON(b, m.Payload)
	pub := m.Publisher
	if pub.User != "" || pub.Conn != "" || len(pub.Info) > 0 {
		b = append(b, `,"publisher":{`...)
		c := false
		if pub.User != "" {
			b = append(b, `"user":`...)
			b = appendJSONString(b, pub.User)
			c = true
		}
		if pub.Conn != "" {
			if c {
				b = append(b, ',')
			}
			b = append(b, `"connection":`...)
			b = appendJSONString(b, pub.Conn)
			c = true
		}
		if len(pub.Info) > 0 {
			if c {
				b = append(b, ',')
			}
			b = append(b, `"info":`...)
			b = append(b, pub.Info...)
		}
		b = append(b, '}')
	}
	if !m.Time.IsZero() {
		if ms := m.Time.UnixMilli(); ms != 0 {
			b = append(b, `,"timeUnixMs":"`...)
			b = strconv.AppendInt(b, ms, 10)
			b = append(b, '"')
		}
	}
	return append(b, "}}"...)
}

// appendPayloadJSON appends a Payload object: {"json":<raw>}, {"binary":"<base64>"}
// or {} for an empty JSON payload.
func appendPayloadJSON(b []byte, p fabric.Payload) []byte {
	switch {
	case p.Binary:
		b = append(b, `{"binary":"`...)
		b = base64.StdEncoding.AppendEncode(b, p.Data)
		return append(b, `"}`...)
	case len(p.Data) == 0:
		return append(b, "{}"...)
	}
	b = append(b, `{"json":`...)
	b = append(b, p.Data...)
	return append(b, '}')
}

// appendJSONString appends s as a JSON string escaped the way protojson escapes it:
// only '"', '\\' and control characters; invalid UTF-8 becomes U+FFFD (protojson
// would refuse the whole message).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				b = append(b, s[start:i]...)
				b = append(b, `\ufffd`...)
				i++
				start = i
				continue
			}
			i += n
			continue
		}
		if c >= ' ' && c != '"' && c != '\\' {
			i++
			continue
		}
		b = append(b, s[start:i]...)
		b = append(b, '\\')
		switch c {
		case '"', '\\':
			b = append(b, c)
		case '\b':
			b = append(b, 'b')
		case '\f':
			b = append(b, 'f')
		case '\n':
			b = append(b, 'n')
		case '\r':
			b = append(b, 'r')
		case '\t':
			b = append(b, 't')
		default:
			b = append(b, 'u')
			b = append(b, "0000"[1+(bits.Len32(uint32(c))-1)/4:]...)
			b = strconv.AppendUint(b, uint64(c), 16)
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
