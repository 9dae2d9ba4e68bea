// Package membership is roomcast's gossip membership: a thin wrapper around
// hashicorp/memberlist with timers tuned for sub-second failure detection on a LAN,
// encrypted gossip (a shared keyring that can be rotated while the cluster runs), node
// metadata that carries a node's addresses and version, member names unique per
// incarnation, and a periodic re-join through static seeds and a discovery function
// (the etcd node registry) so that two halves of a healed partition merge again —
// memberlist alone never does that.
//
// memberlist is only the failure detector and the directory of live nodes. Room
// traffic never goes through it: peer links (mesh.v1 gRPC streams) carry the data.
//
// # Names and incarnations
//
// A node has a stable name (its identity in configuration and logs) and an incarnation
// chosen at start (by default the start time in nanoseconds). The gossip name is
// "<name>.<incarnation>", so a restarted node is a new member instead of a resurrection
// of the old one: peers see the old incarnation die and the new one join, and nothing
// keyed by the old gossip name (connections, ownership) is ever attributed to the new
// process.
//
// # Concurrency contract
//
// A *Membership is safe for concurrent use. memberlist calls the private delegate
// adapters (events, delegate) from its own goroutines; they only copy the node and
// append to an unbounded in-memory queue under a mutex, never block and never call
// user code. One goroutine (the pump) owned by the Membership moves queued events to
// the Events channel in order; a second (the re-joiner) periodically joins seeds that
// are not known to be alive. Both stop in Close (and Leave, which ends with Close),
// after which the Events channel is closed. Consumers should drain Events promptly, but
// a slow consumer only grows the queue (membership churn is small), it never stalls
// gossip or failure detection.
package membership
