package pbconv

import (
	"reflect"
	"testing"
	"time"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// Every field of the wire event is filled from a fabric event whose fields are all
// set, so a field added to either side and forgotten here fails this test.
func TestEventFillsEveryField(t *testing.T) {
	ev := &fabric.Event{
		Type:    fabric.EventGap,
		Time:    time.Unix(1700000000, 5),
		Node:    "n1",
		Conn:    "n1-c7",
		User:    "alice",
		Room:    "chat:1",
		Payload: &fabric.Payload{Data: []byte(`{"a":1}`)},
		Code:    4001,
		Reason:  "slow",
		Missed:  3,
	}
	if n := reflect.TypeOf(*ev).NumField(); n != 10 {
		t.Fatalf("fabric.Event has %d fields: set them all above", n)
	}
	payload := &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: `{"a":1}`}}
	out := Event(ev, payload)
	fields := out.ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		if f := fields.Get(i); !out.ProtoReflect().Has(f) {
			t.Errorf("field %s not set", f.Name())
		}
	}
	want := &pb.Event{Type: pb.EventType(fabric.EventGap), Node: "n1", Connection: "n1-c7", User: "alice", Room: "chat:1", Code: 4001, Reason: "slow", Missed: 3}
	if out.GetType() != want.Type || out.GetNode() != want.Node || out.GetConnection() != want.Connection || out.GetUser() != want.User ||
		out.GetRoom() != want.Room || out.GetCode() != want.Code || out.GetReason() != want.Reason || out.GetMissed() != want.Missed {
		t.Errorf("event = %v", out)
	}
	if !out.GetTime().AsTime().Equal(ev.Time) || out.GetPayload() != payload {
		t.Errorf("time %v, payload %v", out.GetTime().AsTime(), out.GetPayload())
	}
}

// A zero time stays unset rather than becoming the Unix epoch.
func TestEventZeroTime(t *testing.T) {
	if out := Event(&fabric.Event{Type: fabric.EventJoin}, nil); out.Time != nil || out.Payload != nil {
		t.Errorf("event = %v", out)
	}
}
