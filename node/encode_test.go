package node

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// TestRoomMessageJSON proves the hand-rolled encoder produces what protojson would:
// both outputs parse into equal ServerMessages.
func TestRoomMessageJSON(t *testing.T) {
	ts := time.UnixMilli(1700000000123)
	tests := []struct {
		name string
		msg  fabric.Message
	}{
		{"json object", fabric.Message{Room: "chat:lobby", Pos: fabric.Position{Epoch: "e1", Offset: 42},
			Payload: fabric.Payload{Data: []byte(`{"text":"hi","n":[1,2.5,null,true]}`)}, Time: ts}},
		{"unicode and escapes", fabric.Message{Room: "chat:ünï\"\\\u2028", Pos: fabric.Position{Epoch: "é\x01\t\n\r\b\f\x1f/<>&", Offset: 1},
			Payload: fabric.Payload{Data: []byte(`"snow ☃ \u00e9 \n"`)}, Time: ts}},
		{"binary", fabric.Message{Room: "r", Pos: fabric.Position{Epoch: "e", Offset: 18446744073709551615},
			Payload: fabric.Payload{Data: []byte{0, 1, 2, 0xff, 0xfe}, Binary: true}}},
		{"empty binary", fabric.Message{Room: "r", Payload: fabric.Payload{Binary: true}}},
		{"empty payload", fabric.Message{Room: "r", Pos: fabric.Position{Epoch: "e"}}},
		{"scalar payloads", fabric.Message{Room: "r", Payload: fabric.Payload{Data: []byte(`-1.5e3`)}}},
		{"publisher with info", fabric.Message{Room: "chat:x", Pos: fabric.Position{Epoch: "e", Offset: 3},
			Payload:   fabric.Payload{Data: []byte(`[]`)},
			Publisher: fabric.ClientInfo{User: "alice\u00a0", Conn: "1@n1", Info: []byte(`{"name":"Al\"ice","tags":["a"]}`)}, Time: ts}},
		{"publisher without info", fabric.Message{Room: "chat:x", Payload: fabric.Payload{Data: []byte(`null`)},
			Publisher: fabric.ClientInfo{User: "bob", Conn: "2@n1"}}},
		{"negative time", fabric.Message{Room: "r", Payload: fabric.Payload{Data: []byte(`1`)}, Time: time.UnixMilli(-5)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := &pb.ServerMessage{Body: &pb.ServerMessage_Message{Message: roomMessageToPB(&tt.msg)}}
			ref, err := protojson.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			got := appendRoomMessageJSON(nil, &tt.msg)
			var a, b pb.ServerMessage
			if err := protojson.Unmarshal(got, &a); err != nil {
				t.Fatalf("hand-rolled output %s does not parse: %v", got, err)
			}
			if err := protojson.Unmarshal(ref, &b); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(&a, &b) || !proto.Equal(&a, want) {
				t.Fatalf("hand-rolled %s\nprotojson   %s", got, ref)
			}
		})
	}
}

func TestInvalidUTF8String(t *testing.T) {
	got := string(appendJSONString(nil, "a\xffb"))
	if got != `"a\ufffdb"` {
		t.Fatalf("got %s", got)
	}
}

func TestPayloadFromPB(t *testing.T) {
	v, err := protojson.Marshal(&pb.Payload{Kind: &pb.Payload_JsonText{JsonText: "x"}})
	_ = v
	if err != nil {
		t.Fatal(err)
	}
	var jsonPayload pb.Payload
	if err := protojson.Unmarshal([]byte(`{"json":{"b": [1, "two"], "a": null}}`), &jsonPayload); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		in      *pb.Payload
		want    string
		binary  bool
		wantErr bool
	}{
		{"json compacted", &jsonPayload, `{"a":null,"b":[1,"two"]}`, false, false},
		{"json_text verbatim", &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: `{ "a": 1 }`}}, `{ "a": 1 }`, false, false},
		{"json_text invalid", &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: `{`}}, "", false, true},
		{"binary", &pb.Payload{Kind: &pb.Payload_Binary{Binary: []byte("ab")}}, "ab", true, false},
		{"no kind", &pb.Payload{}, "", false, true},
		{"missing", nil, "", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := payloadFromPB(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err %v", err)
			}
			if err != nil {
				if fabric.CodeOf(err) != fabric.CodeBadRequest {
					t.Fatalf("code %v", fabric.CodeOf(err))
				}
				return
			}
			if string(p.Data) != tt.want || p.Binary != tt.binary {
				t.Fatalf("got %q binary=%v", p.Data, p.Binary)
			}
		})
	}
}

func BenchmarkRoomMessageJSON(b *testing.B) {
	m := &fabric.Message{Room: "chat:lobby", Pos: fabric.Position{Epoch: "e1", Offset: 42},
		Payload: fabric.Payload{Data: []byte(`{"text":"hello there, this is sixty four bytes of json payload"}`)},
		Time:    time.Now(), Publisher: fabric.ClientInfo{User: "alice", Conn: "1@n1"}}
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendRoomMessageJSON(buf[:0], m)
	}
}

// TestReplyPayloadsVerbatim checks that room messages in replies and generic pushes
// (a join's recovered messages, a history read, a server join, the connect's rooms)
// reach JSON clients with the publisher's bytes, as live pushes do, and protobuf
// clients as json Values; the message itself is left as it was (pushes are shared).
func TestReplyPayloadsVerbatim(t *testing.T) {
	raw := []string{`{"z": 1, "a": [1, 2.50], "big": 12345678901234567891}`, `"s"`, `[ ]`}
	var msgs []*fabric.Message
	for i, r := range raw {
		msgs = append(msgs, &fabric.Message{Room: "chat:r", Pos: fabric.Position{Epoch: "e", Offset: uint64(i + 1)}, Payload: fabric.Payload{Data: []byte(r)}})
	}
	msgs = append(msgs, &fabric.Message{Room: "chat:r", Pos: fabric.Position{Epoch: "e", Offset: 4}, Payload: fabric.Payload{Data: []byte{1, 2}, Binary: true}})
	jr := joinResultToPB("chat:r", fabric.JoinResult{Pos: fabric.Position{Epoch: "e", Offset: 4}, Recoverable: true, Recovered: true, Missed: msgs})
	hist := &pb.HistoryResult{}
	for _, m := range msgs {
		hist.Messages = append(hist.Messages, replyMessageToPB(m))
	}
	cases := map[string]*pb.ServerMessage{
		"join":    {Id: 7, Body: &pb.ServerMessage_Join{Join: jr}},
		"history": {Id: 8, Body: &pb.ServerMessage_History{History: hist}},
		"joined":  {Body: &pb.ServerMessage_Joined{Joined: &pb.Joined{Join: jr}}},
		"connect": {Id: 1, Body: &pb.ServerMessage_Connect{Connect: &pb.ConnectResult{Rooms: []*pb.JoinResult{jr, jr}}}},
	}
	for name, m := range cases {
		t.Run(name, func(t *testing.T) {
			before := proto.Clone(m)
			data, err := marshalServerMessage(m, false)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range raw {
				if !strings.Contains(string(data), `{"json":`+r+`}`) {
					t.Errorf("JSON frame %s lacks payload %s verbatim", data, r)
				}
			}
			if strings.Contains(string(data), "roomcast-verbatim-") {
				t.Errorf("placeholder left in %s", data)
			}
			var fromJSON, fromProto pb.ServerMessage
			if err := protojson.Unmarshal(data, &fromJSON); err != nil {
				t.Fatalf("JSON frame %s does not parse: %v", data, err)
			}
			bin, err := marshalServerMessage(m, true)
			if err != nil {
				t.Fatal(err)
			}
			if err := proto.Unmarshal(bin, &fromProto); err != nil {
				t.Fatal(err)
			}
			// Both subprotocols decode to the same message, payloads as json Values.
			if !proto.Equal(&fromJSON, &fromProto) {
				t.Errorf("JSON frame decodes to %v\nprotobuf frame to %v", &fromJSON, &fromProto)
			}
			if n := len(verbatimPayloads(&fromProto)); n != 0 {
				t.Errorf("protobuf frame carries %d json_text payloads", n)
			}
			if !proto.Equal(m, before) {
				t.Error("marshalling modified the message")
			}
		})
	}
}
