package node

import (
	"errors"
	"testing"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/jwtauth"
)

// fuzzSentinel is the id of the command that proves a connection still works after
// the fuzzed frame.
const fuzzSentinel = 0xfffffff0

// fuzzCloseCodes are the answers a single bad frame may get on a connected
// connection (README, close codes).
var fuzzCloseCodes = map[int]bool{
	int(fabric.CloseBadFrame):        true, // undecodable frame
	int(fabric.CloseConnectExpected): true, // a second connect
	int(fabric.CloseInvalidPayload):  true, // text that is not UTF-8
	int(fabric.CloseMessageTooBig):   true,
}

// FuzzClientCommand sends arbitrary bytes as one frame of a connected client, in
// the JSON subprotocol (text frame) and the protobuf one (binary frame), through the
// node's own decoder and command dispatch. The node must answer with replies it can
// encode and then serve the next command, or close with a documented code; it must
// never panic or hang. Run it with
//
//	go test -run XXX -fuzz FuzzClientCommand -fuzztime 20s ./node
func FuzzClientCommand(f *testing.F) {
	jsonSeeds := []string{
		`{"id":1,"join":{"room":"chat:a"}}`,
		`{"id":2,"leave":{"room":"chat:a"}}`,
		`{"id":3,"publish":{"room":"chat:a","payload":{"json":{"text":"hi","n":[1,2.5,null,true]}}}}`,
		`{"id":4,"publish":{"room":"chat:a","payload":{"jsonText":"{\"a\":1}"}}}`,
		`{"id":5,"publish":{"room":"chat:a","payload":{"binary":"AAEC"}}}`,
		`{"id":6,"presence":{"room":"chat:a"}}`,
		`{"id":7,"presenceStats":{"room":"chat:a"}}`,
		`{"id":8,"history":{"room":"chat:a","limit":10,"reverse":true}}`,
		`{"id":9,"send":{"payload":{"json":"x"}}}`,
		`{"id":10,"pong":{}}`,
		`{"id":11,"refresh":{"token":"not-a-token"}}`,
		`{"id":12,"connect":{"token":"x"}}`,
		`{"id":13}`,
		`{"id":14,"join":{"room":"chat:a","recoverFrom":{"epoch":"1","offset":"2"}}}`,
		`{"id":"x"}`, `[]`, `null`, `{`, "\xff",
	}
	for _, s := range jsonSeeds {
		f.Add(false, []byte(s))
		var cmd pb.ClientCommand
		if protojson.Unmarshal([]byte(s), &cmd) == nil {
			b, _ := proto.Marshal(&cmd)
			f.Add(true, b)
		}
	}
	f.Add(true, []byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add(true, []byte{})

	h := newHarness(f, func(c *Config) {
		c.CommandRate, c.CommandBurst = 1e6, 1000000
		c.Transport.MaxMessageBytes = 4096
	})
	f.Fuzz(func(t *testing.T, binary bool, data []byte) {
		sub := SubprotocolJSON
		typ := websocket.TextMessage
		if binary {
			sub, typ = SubprotocolProto, websocket.BinaryMessage
		}
		cl, _ := h.connect(t, sub, jwtauth.Claims{Read: []string{"chat:*"}})
		if err := cl.ws.WriteMessage(typ, data); err != nil {
			t.Fatal(err)
		}
		cl.sendRaw(&pb.ClientCommand{Id: fuzzSentinel, Command: &pb.ClientCommand_PresenceStats{PresenceStats: &pb.PresenceStatsCommand{Room: "chat:fuzz"}}})
		for {
			m, err := cl.read() // fails the test on a frame that does not decode
			if err != nil {
				var ce *websocket.CloseError
				if !errors.As(err, &ce) || !fuzzCloseCodes[ce.Code] {
					t.Fatalf("connection ended with %v", err)
				}
				return
			}
			if m.GetId() == fuzzSentinel {
				if m.GetPresenceStats() == nil {
					t.Fatalf("sentinel reply %v", m)
				}
				return
			}
		}
	})
}
