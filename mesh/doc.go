// Package mesh is the cluster side of a roomcast node: the owners of rooms (offsets,
// history, idempotency keys, presence), the user index (which connections each user
// holds, for send-to-user and kick-by-user) and the events hub that feeds StreamEvents
// subscribers.
//
// Without Config.Cluster the mesh is a mesh of one: this node owns every shard. Room
// names (and user names) hash into a fixed number of shards, owner state lives per
// shard, and the local edge is reached only through the Edge interface.
//
// # Cluster mode (Config.Cluster)
//
// New starts, in this order, the etcd registration (package registry), gossip
// membership (package membership; seeds plus the registered nodes), the peer links
// (package peer, served by a gRPC server on its own listener) and the shard map
// (package shardmap); Close stops them in reverse, gracefully (Goodbye, gossip leave,
// lease revoked).
//
// Routing: a room's shard is served by the owner named in the shard map. When that is
// this node (and its session is alive and the shard's state is rebuilt) the owner
// code above runs here; otherwise the operation is a request over the peer link. An
// owner that does not serve the shard at the sender's epoch answers NotOwner; the
// sender waits for a newer map or a finished rebuild (doubling waits from 10 ms) and
// retries until ClusterConfig.RouteTimeout, then fails with fabric.ErrUnavailable. A
// publish without idempotency key is not retried after a link failure (it may have
// been applied). The user index lives at the owner of the user's shard; operations on
// a connection go to the node named in its id.
//
// Delivery: an owner counts each room's connections per node (room.nodes, from the
// node in each connection id). Under room.mu, as for the local edge, it queues a
// Deliver or MembershipPush envelope to every other node with members; links keep
// envelopes in order, and receivers call Edge.Deliver / DeliverMembership straight from
// the link's reader goroutine (they never block). Requests are served on their own
// goroutines because owner work may itself need the network.
//
// Epochs: in cluster mode a room's epoch is its shard's epoch in the shard map (the
// etcd revision that gave the shard its owner, in decimal). Owner state is tagged with
// it. When a shard moves between live nodes (drain, rebalance) its state moves with
// it (handover.go): the old owner fences itself and keeps a handoff, which the new
// owner installs during its rebuild, so offsets continue under the new epoch and each
// room remembers the earlier epochs of its stream for recovery. When the owner
// crashed, the new owner starts a new stream and recovery from the old one says
// Recovered=false. Deliveries and pushes carrying an epoch older than the receiver's
// map knows for the shard are dropped.
//
// Fencing: a node serves a shard only while shardmap.Serving says so (its registry
// session alive and registration present), while its lease is surely valid
// (registry.Valid: the last keep-alive answer plus the TTL, less a margin) and after
// rebuilding it; otherwise every request for its shards is NotOwner at once. A node
// whose registration is lost keeps its shards' state as handoffs and registers again
// (fence.go).
//
// Failover: on gossip's verdict that a node failed, a second opinion: a node that
// still answers on its peer link is not declared dead; one whose host refuses the
// connection is, and its lease is revoked (shardmap.NodeDead; the leader then moves
// its shards); one that does not answer at all (partition) keeps its lease until it
// runs out, since it may still serve until its own lease validity ends. Every node
// forgets the failed node's link
// and drops its connections from the rooms and users it owns, with leave events and
// member_left pushes. A node given new shards asks every live node for its local
// members and connections in them (RebuildRequest), installs them without events and
// only then serves the shards. A node reports its room members from its edge when the
// edge implements MemberLister (node.Node does: the node is the source of truth for
// its connections), else from the mesh's ledger of the joins and leaves the edge made
// through it; its connections come from the conns half of the user index, which in
// cluster mode only holds this node's connections. When a node (re)appears, every
// owner pulls its local members of the shards it serves (members_only rebuild), so a
// healed partition's connections get deliveries again.
//
// Events: each event is emitted on the node where it happens and broadcast to every
// other live node, whose subscribers filter it. Broadcasting only appends to a bounded
// outbox (never blocking a room); one goroutine sends it in order, batched, to every
// node. Consumer groups span the cluster (groups.go): every node knows every node's
// groups and makes the same hashed choice of the member that gets an event.
//
// Limits: history and idempotency keys are lost when an owner crashes (recovery then
// says Recovered=false); a node that lost its link to an owner misses the envelopes
// queued meanwhile (the SDKs see the offset jump and recover); a join retried after a
// lost reply is answered from its first registration (JoinRequest.attempt).
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
// keep their order). In cluster mode room.mu is also held while queueing envelopes on
// peer links (Links.Send only enqueues; a link still being dialed is waited for at
// most 200 ms), while reading cluster.mu (node names to IDs) and while appending to
// the event outbox (cluster.evMu); ledger.mu, cluster.mu and cluster.evMu are leaves.
// userShard.mu is never held together with any other lock. No mesh
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
// One background goroutine (the sweeper) is started by New and stopped by Close. In
// cluster mode New also starts the membership loop, the shard-map loop, the peer gRPC
// server and the goroutines of the building blocks; requests from peers are served
// on goroutines tracked by the cluster; Close stops and waits for all of them.
package mesh
