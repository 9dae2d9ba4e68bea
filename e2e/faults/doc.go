// Package faults proves what a roomcast cluster keeps promising under failures: real
// `roomcast node` processes and a real etcd, each in its own Linux network namespace
// on a bridge, with faults injected by nftables rules inside the namespaces.
//
// The package has tests only (this file holds its documentation):
//
//   - netlab_test.go: the lab. A bridge (rcft-br0, 10.77.0.1/24 on the host), one
//     namespace per node (rcft-n<i>, 10.77.0.1<i>) and one for etcd (rcft-etcd,
//     10.77.0.2), joined by veth pairs. Each namespace has an nftables table "rcft"
//     with input and output chains; a fault is a rule in them (drop to or from
//     chosen addresses, drop everything on eth0, or drop a random share of packets
//     in one direction with `numgen random mod 100 < N`), and healing flushes the
//     chains. Every object is named with the prefix "rcft-": a run first sweeps what
//     a crashed run left behind, and t.Cleanup tears everything down, failed or not.
//   - cluster_test.go: etcd (internal/etcdproc: the embedded etcd server of
//     internal/embedetcd as its own process, so it can be killed and restarted on its
//     data) and 3–5 nodes started with `ip netns exec`, each advertising its own
//     namespace address for gossip and peer links.
//   - load_test.go: Go SDK clients homed on every node (reconnecting to the next node
//     when theirs does not answer, as behind a load balancer), joined to chat rooms
//     (100 messages of history) with recovery; one publisher per room through the
//     control API, each publish to the next node, retried with the same idempotency
//     key on UNAVAILABLE and deadlines, carrying its sequence number.
//   - checker_test.go: the invariant checker (see the checker type), shared by the
//     scenarios and the soak.
//   - scenarios_test.go: TestFaults, one subtest per fault; soak_test.go: TestSoak,
//     random faults for -soak=DURATION (off by default).
//
// The tests need root and the ip and nft tools (Debian: iproute2, nftables). Without
// them they skip, except when CI=true, where they fail: the proof must not vanish
// silently. FAULTS_ROOMCAST_BIN runs a prebuilt roomcast binary instead of building
// ./cmd/roomcast.
package faults
