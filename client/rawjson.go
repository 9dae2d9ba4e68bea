package client

import (
	"bytes"
	"encoding/json"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// In JSON frames a JSON payload travels verbatim, but protojson parses it into a
// structpb.Value, which forgets key order and rounds integers beyond 2^53. To give
// the application the bytes the publisher sent, the client reads the raw payloads a
// second time from the frame and swaps them in. Frames without a JSON payload skip
// this.

type rawPayload struct {
	JSON json.RawMessage `json:"json"`
}

type rawRoomMessage struct {
	Payload *rawPayload `json:"payload"`
}

type rawMessages struct {
	Messages []rawRoomMessage `json:"messages"`
}

type rawFrame struct {
	Message *rawRoomMessage `json:"message"`
	Direct  *rawRoomMessage `json:"direct"`
	Join    *rawMessages    `json:"join"`
	History *rawMessages    `json:"history"`
	Joined  *struct {
		Join *rawMessages `json:"join"`
	} `json:"joined"`
	Connect *struct {
		Rooms []rawMessages `json:"rooms"`
	} `json:"connect"`
}

var jsonKey = []byte(`"json"`)

// keepRawJSON replaces the JSON payloads of m, decoded from the JSON frame data, with
// their verbatim text.
func keepRawJSON(data []byte, m *pb.ServerMessage) {
	if !bytes.Contains(data, jsonKey) {
		return
	}
	var f rawFrame
	if err := json.Unmarshal(data, &f); err != nil {
		return // keep what protojson decoded
	}
	if f.Message != nil {
		swap(m.GetMessage().GetPayload(), f.Message.Payload)
	}
	if f.Direct != nil {
		swap(m.GetDirect().GetPayload(), f.Direct.Payload)
	}
	if f.Join != nil {
		swapAll(m.GetJoin().GetMessages(), f.Join.Messages)
	}
	if f.History != nil {
		swapAll(m.GetHistory().GetMessages(), f.History.Messages)
	}
	if f.Joined != nil && f.Joined.Join != nil {
		swapAll(m.GetJoined().GetJoin().GetMessages(), f.Joined.Join.Messages)
	}
	if f.Connect != nil {
		rooms := m.GetConnect().GetRooms()
		for i := range min(len(rooms), len(f.Connect.Rooms)) {
			swapAll(rooms[i].GetMessages(), f.Connect.Rooms[i].Messages)
		}
	}
}

func swapAll(ms []*pb.RoomMessage, raw []rawRoomMessage) {
	if len(ms) != len(raw) {
		return
	}
	for i, m := range ms {
		swap(m.GetPayload(), raw[i].Payload)
	}
}

func swap(p *pb.Payload, raw *rawPayload) {
	if p == nil || raw == nil || len(raw.JSON) == 0 {
		return
	}
	if _, ok := p.GetKind().(*pb.Payload_Json); ok {
		p.Kind = &pb.Payload_JsonText{JsonText: string(raw.JSON)}
	}
}
