package client

import (
	"testing"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

func TestJSONPayloadsStayVerbatim(t *testing.T) {
	const raw = `{"b":[1,2],"a":12345678901234567890}`
	tests := []struct {
		name  string
		frame string
		got   func(m *pb.ServerMessage) []*pb.Payload
	}{
		{"message", `{"message":{"room":"r","epoch":"e","offset":"1","payload":{"json":` + raw + `}}}`,
			func(m *pb.ServerMessage) []*pb.Payload { return []*pb.Payload{m.GetMessage().GetPayload()} }},
		{"direct", `{"direct":{"payload":{"json":` + raw + `}}}`,
			func(m *pb.ServerMessage) []*pb.Payload { return []*pb.Payload{m.GetDirect().GetPayload()} }},
		{"join", `{"id":3,"join":{"room":"r","messages":[{"payload":{"json":` + raw + `}},{"payload":{"binary":"AAE="}},{"payload":{"json":` + raw + `}}]}}`,
			func(m *pb.ServerMessage) []*pb.Payload {
				var out []*pb.Payload
				for _, rm := range m.GetJoin().GetMessages() {
					out = append(out, rm.GetPayload())
				}
				return out
			}},
		{"joined", `{"joined":{"join":{"room":"r","messages":[{"payload":{"json":` + raw + `}}]}}}`,
			func(m *pb.ServerMessage) []*pb.Payload {
				return []*pb.Payload{m.GetJoined().GetJoin().GetMessages()[0].GetPayload()}
			}},
		{"history", `{"id":4,"history":{"messages":[{"payload":{"json":` + raw + `}}]}}`,
			func(m *pb.ServerMessage) []*pb.Payload {
				return []*pb.Payload{m.GetHistory().GetMessages()[0].GetPayload()}
			}},
		{"connect rooms", `{"id":1,"connect":{"rooms":[{"room":"a"},{"room":"b","messages":[{"payload":{"json":` + raw + `}}]}]}}`,
			func(m *pb.ServerMessage) []*pb.Payload {
				return []*pb.Payload{m.GetConnect().GetRooms()[1].GetMessages()[0].GetPayload()}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &pb.ServerMessage{}
			if err := jsonIn.Unmarshal([]byte(tt.frame), m); err != nil {
				t.Fatal(err)
			}
			keepRawJSON([]byte(tt.frame), m)
			for i, p := range tt.got(m) {
				got := payloadFromPB(p)
				if got.Binary {
					if string(got.Data) != "\x00\x01" {
						t.Errorf("payload %d: binary %q", i, got.Data)
					}
					continue
				}
				if string(got.Data) != raw {
					t.Errorf("payload %d = %s, want %s", i, got.Data, raw)
				}
			}
		})
	}
}
