// Package pbconv converts the fabric's vocabulary to roomcast.v1 messages where more
// than one part of roomcast sends the same message: events go out on the control
// API's StreamEvents and between nodes on the peer links. Payloads are converted by
// the caller, because the two encode JSON differently (the control API as a
// google.protobuf.Value for API readers, the peer links as json_text so the bytes
// arrive exactly as published).
package pbconv

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// Event converts ev, with payload as the caller encoded ev.Payload (nil for none).
func Event(ev *fabric.Event, payload *pb.Payload) *pb.Event {
	out := &pb.Event{
		Type:       pb.EventType(ev.Type),
		Node:       ev.Node,
		Connection: ev.Conn,
		User:       ev.User,
		Room:       ev.Room,
		Code:       uint32(ev.Code),
		Reason:     ev.Reason,
		Missed:     ev.Missed,
		Payload:    payload,
	}
	if !ev.Time.IsZero() {
		out.Time = timestamppb.New(ev.Time)
	}
	return out
}
