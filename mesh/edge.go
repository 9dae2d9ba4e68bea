package mesh

import (
	"context"

	"github.com/roomcast/roomcast/fabric"
)

// Edge is the local node as the mesh sees it: the source of truth for its own
// connections. The node implements it. The mesh never calls it while holding a mesh
// lock that the Edge could need, and the Edge never calls back into the mesh from
// these methods synchronously (except JoinConn, which runs the ordinary join flow and
// is called without mesh locks held).
type Edge interface {
	// Deliver hands a room message to the node's local members of msg.Room. For one
	// room, calls happen one at a time and in offset order. It must not block: it only
	// enqueues to connection send queues.
	Deliver(msg *fabric.Message)
	// DeliverMembership pushes member_joined (joined=true) or member_left to the node's
	// local members of room. Same ordering and non-blocking rules as Deliver.
	DeliverMembership(room string, member fabric.ClientInfo, joined bool)
	// SendToConn pushes a direct message to a local connection. fabric.ErrNotFound if
	// there is no such connection.
	SendToConn(conn string, p fabric.Payload) error
	// JoinConn joins a local connection to room on the backend's behalf and pushes
	// `joined` to it. fabric.ErrAlreadyJoined if it already is; fabric.ErrNotFound if
	// there is no such connection.
	JoinConn(ctx context.Context, conn, room string) error
	// LeaveConn removes a local connection from room and pushes `left` to it.
	// fabric.ErrNotJoined if it was not in the room; fabric.ErrNotFound if there is no
	// such connection.
	LeaveConn(ctx context.Context, conn, room string) error
	// KickConn closes a local connection with the given code and reason (after a
	// disconnect push). fabric.ErrNotFound if there is no such connection.
	KickConn(conn string, kick fabric.Kick) error
	// Stats reports the node's connection and room counts for ListNodes.
	Stats() (conns, rooms int)
}

// MemberLister is implemented by edges that can list their local members of rooms
// (node.Node does). In cluster mode a new owner of a shard asks every node for its
// local members of the shard's rooms; a node whose edge implements MemberLister
// answers from the edge, the source of truth for its own connections, otherwise from
// the mesh's record of the joins and leaves the edge made through it.
type MemberLister interface {
	// LocalMembers returns room -> one ClientInfo per local connection, for the rooms
	// for which keep reports true. It must not call back into the mesh.
	LocalMembers(keep func(room string) bool) map[string][]fabric.ClientInfo
}
