package control

import (
	"context"

	"github.com/roomcast/roomcast/fabric"
)

// Fabric is what the control API drives: the whole cluster as one fabric. The mesh
// implements it. Errors are *fabric.Error values (match them with errors.Is against
// the fabric sentinels); the service maps them to gRPC codes.
type Fabric interface {
	// Publish hands a message to the room's owner and returns its position.
	Publish(ctx context.Context, p fabric.Publication) (fabric.Position, error)
	// SendToUser pushes a direct message to every connection of user and returns how
	// many connections it was queued to.
	SendToUser(ctx context.Context, user string, p fabric.Payload) (int, error)
	// SendToConn pushes a direct message to one connection.
	SendToConn(ctx context.Context, conn string, p fabric.Payload) error
	// JoinRoom joins the target's connections to room and returns how many joined.
	JoinRoom(ctx context.Context, room string, t fabric.Target) (int, error)
	// LeaveRoom removes the target's connections from room and returns how many left.
	LeaveRoom(ctx context.Context, room string, t fabric.Target) (int, error)
	// Kick disconnects the target's connections and returns how many were closed.
	Kick(ctx context.Context, t fabric.Target, k fabric.Kick) (int, error)
	// Presence lists a room's members, ordered by user.
	Presence(ctx context.Context, room string) ([]fabric.Member, error)
	// PresenceStats counts a room's members.
	PresenceStats(ctx context.Context, room string) (fabric.Stats, error)
	// History reads a room's retained messages.
	History(ctx context.Context, room string, q fabric.HistoryQuery) (fabric.History, error)
	// ListRooms returns up to limit rooms whose names start with prefix and sort after
	// `after`, ordered by name, and whether more follow.
	ListRooms(ctx context.Context, prefix, after string, limit int) (rooms []fabric.RoomSummary, more bool, err error)
	// ListNodes returns every node of the cluster, ordered by name.
	ListNodes(ctx context.Context) ([]fabric.NodeInfo, error)
	// Subscribe follows events matching filter. With a non-empty group, subscriptions
	// of the same group share the events (each goes to exactly one). buffer bounds the
	// subscription's queue; overflow is reported as one fabric.EventGap event with the
	// number missed, never silently. Close the stream to unsubscribe.
	Subscribe(filter fabric.EventFilter, group string, buffer int) (fabric.EventStream, error)
}
