package node

import (
	"context"

	"github.com/roomcast/roomcast/fabric"
)

// Fabric is what the edge needs from the rest of the cluster: the owners of rooms and
// users. The mesh implements it; tests use fakes. Every method may block on the
// network (in a cluster the owner is another node), so the edge never calls it from a
// poller or worker goroutine that other connections wait on.
type Fabric interface {
	// Connect registers a connection in its user's index entry (for send-to-user and
	// kick-by-user). It fails with fabric.ErrLimitExceeded when the user already holds
	// maxPerUser connections (0: no limit).
	Connect(ctx context.Context, ci fabric.ClientInfo, maxPerUser int) error
	// Disconnect removes a closed connection from the user index and from every room in
	// rooms (firing leave events and member_left pushes where it was the user's last
	// connection).
	Disconnect(ctx context.Context, ci fabric.ClientInfo, rooms []string)
	// Join registers ci as a member of room at the room's owner (with the node's
	// interest) and returns the room's position; with recoverFrom set, also the
	// messages after it or Recovered=false. The edge must already be ready to receive
	// the room's messages (see Node.Deliver) when it calls Join.
	Join(ctx context.Context, room string, ci fabric.ClientInfo, recoverFrom *fabric.Position) (fabric.JoinResult, error)
	// Leave removes ci from room.
	Leave(ctx context.Context, room string, ci fabric.ClientInfo) error
	// Publish hands a message to the room's owner and returns its position.
	Publish(ctx context.Context, p fabric.Publication) (fabric.Position, error)
	// Presence lists a room's members.
	Presence(ctx context.Context, room string) ([]fabric.Member, error)
	// PresenceStats counts a room's members.
	PresenceStats(ctx context.Context, room string) (fabric.Stats, error)
	// History reads a room's retained messages.
	History(ctx context.Context, room string, q fabric.HistoryQuery) (fabric.History, error)
	// Emit publishes an event that happened at the edge (connect, disconnect, client
	// message) to StreamEvents subscribers. It never blocks.
	Emit(ev fabric.Event)
}
