// Package node is roomcast's WebSocket edge: it upgrades client requests, speaks the
// roomcast.v1 client protocol (proto/roomcast/v1/client.proto) in JSON or protobuf
// frames, authenticates and authorises every command, holds the local room index
// and delivers room messages to its connections. It reaches the rest of the cluster
// only through Fabric, and the mesh reaches it through the mesh.Edge methods
// (Deliver, DeliverMembership, SendToConn, JoinConn, LeaveConn, KickConn, Stats).
// The transport underneath is internal/wsio (epoll reads, coalesced writes).
//
// # Connection state machine
//
//	new ──connect──▶ connecting ──verified, Fabric.Connect ok──▶ connected
//	 │                  │                                            │
//	 └──────────────────┴──────────── closeWith(code) ──────────────┴──▶ closed
//
// A connection is "new" after the upgrade; its first command must be connect (else
// 4504), within AuthTimeout (else 4501). With an Authorization bearer header the
// token is verified before the upgrade and the connection starts "connecting" with an
// implicit connect queued (its ConnectResult goes out as a push with id 0; a later
// connect from the client is answered, a second one closes with 4504). Bad tokens
// close with 4500, a user over MaxConnsPerUser with 4503. Once connected, commands
// are authorised against the token's claims and the namespace options.
//
// Every close goes through conn.closeWith, the one idempotent path: it marks the
// connection closed, leaves every room locally, ends the transport (disconnect push
// then close; a slow consumer's queue is dropped instead and gets no push), emits
// EventDisconnect and calls Fabric.Disconnect on a node-owned goroutine.
//
// # Goroutines
//
// The node owns: one sweeper (heartbeats, auth timeout, token expiry; ticking every
// second; and, once a burst of Config.ReleaseAfterConnects upgrades is followed by a
// quiet tick, one debug.FreeOSMemory to hand the handshakes' garbage back), one command goroutine per connection that has pending commands (started
// when its queue goes non-empty, gone when it is empty: OnMessage, on a wsio worker,
// only decodes and queues), and short-lived goroutines for Fabric.Disconnect and
// clean-up leaves. Close stops the sweeper, closes the transport and waits for all
// of them. Fabric methods are never called from a wsio worker or under a node lock.
//
// # Locks
//
// Lock order: conn.mu → Node.roomsMu → room.mu → member.mu; Node.mu is taken alone
// (it guards the connection map and drain state). Deliver takes roomsMu (read, only
// for the lookup), then room.mu (read) and, for joining members only, member.mu; it
// never takes conn.mu, so closing a slow consumer happens after the fan-out,
// outside the room's lock. wsio.Conn.Send never blocks and never calls back.
//
// # Join buffering invariant
//
// After a successful join a connection sees every later message of the room
// exactly once, in offset order. To get there the member is added to the local
// room "joining" BEFORE Fabric.Join is called: deliveries meanwhile are buffered in
// the member. When Join returns position P, the join reply (with the Missed messages
// when recovering) is queued, then the buffered messages with offset > P (those at
// or before P are covered by the reply or were before the join), then the member
// becomes live — all under member.mu, so no delivery slips in between. If Join fails
// the member is removed and its buffer dropped; if the connection closed or left
// meanwhile, the join is undone with Fabric.Leave. Backend joins (JoinConn) and the
// token's auto-join rooms (answered in ConnectResult.rooms) use the same path.
//
// # Delivery
//
// Deliver encodes a message at most once per subprotocol present among the
// receivers (a hand-rolled JSON encoder splices the raw JSON payload in verbatim;
// protobuf frames are marshalled once) into a *wsio.Message shared by every
// connection, and queues it with Send. A full queue closes that connection with 4001
// ("slow") instead of stalling the room.
package node
