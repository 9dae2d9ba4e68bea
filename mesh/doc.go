// Package mesh is the cluster side of a roomcast node: the owners of rooms (offsets,
// history, idempotency keys, presence), the user index (which connections each user
// holds, for send-to-user and kick-by-user) and the events hub that feeds StreamEvents
// subscribers.
//
// Today the mesh is a mesh of one: this node owns every shard. It still runs the code
// paths a cluster will: room names hash into a fixed number of shards, every shard has
// an owner (always this node), owner state lives per shard, and the local edge is
// reached only through the Edge interface.
//
// # Concurrency contract
//
// A *Mesh is safe for concurrent use by any number of goroutines. There is no global
// lock:
//
//   - shard.mu guards one shard's map of rooms (lookup, creation, removal only);
//   - room.mu guards everything about one room (offset, history, idempotency keys,
//     members). It is held across offset assignment and Edge.Deliver /
//     Edge.DeliverMembership, which is what makes a room's deliveries happen one at a
//     time in offset order and makes a join's position read atomic with its
//     registration. Those two Edge methods only enqueue and never call back into the
//     mesh, so holding room.mu across them is safe;
//   - userShard.mu guards one shard of the user index (user -> conns, conn -> user);
//   - hub.mu guards the set of event subscriptions, sub.mu one subscription's queue.
//
// Lock order: room.mu -> shard.mu (only to remove a dead room), and room.mu -> hub.mu ->
// sub.mu (events emitted while a room is locked, so a room's join and leave events
// keep their order). userShard.mu is never held together with any other lock. No mesh
// lock is held while calling Edge.SendToConn, Edge.JoinConn, Edge.LeaveConn,
// Edge.KickConn or Edge.Stats.
//
// # Bounded memory
//
// A room's state exists while the room has members, retained history or remembered
// idempotency keys; once all three are gone it is dropped (a background sweep expires
// history past its TTL and keys past their window, so idle rooms go away on their own).
//
// Offsets never repeat for a room within an epoch, even across a drop: each shard
// remembers the highest offset its dropped rooms reached (one integer per shard), and a
// room created in that shard starts after it. A room's first offset is therefore 1 only
// until some room of its shard was dropped; positions stay strictly increasing, so a
// client recovering from a position of a dropped room gets Recovered=false (or, when it
// had seen that room's last message, exactly the messages after it), never a silent gap,
// and an edge dropping deliveries at or below its join position stays correct.
//
// The user index holds an entry per user with at least one connection. Each event
// subscription holds at most its buffer of events.
//
// One background goroutine (the sweeper) is started by New and stopped by Close.
package mesh
