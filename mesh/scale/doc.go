// Package scale holds roomcast's many-node measurements of the mesh's control plane:
// tens of nodes in one process, each with real memberlist gossip on its own loopback
// port, its etcd registration and its shard map, all sharing one real etcd
// (internal/etcdtest). The package has no API; its tests are the product.
//
// The nodes are built from mesh/registry, mesh/membership and mesh/shardmap directly,
// wired the way mesh.cluster wires them (register, start gossip, publish the gossip
// address, start the shard map with gossip admission, join the registered peers; a
// gossip failure or leave calls ShardMap.NodeDead, a gossip join or update calls
// ShardMap.Recheck), but without peer links, rooms or the edge, which do not change
// what is measured: membership convergence, shard movement, rebalance time and etcd
// load per membership change.
//
// TestScale is skipped unless ROOMCAST_SCALE is set (and always under the race
// detector, which on two shared cores makes 30 gossiping members miss their 50 ms probe
// timeouts, so the figures would mean nothing):
//
//	ROOMCAST_SCALE=1 go test -run TestScale -v -count=1 ./mesh/scale
//	ROOMCAST_SCALE=1 ROOMCAST_SCALE_NODES=50 ROOMCAST_SCALE_TTL=15 go test -run TestScale -v -count=1 ./mesh/scale
//
// ROOMCAST_SCALE_TTL sets the lease TTL in seconds (default registry.DefaultTTL, 5):
// on a starved host 30 in-process nodes can miss keep-alives for longer than 5 s.
// TestLinkMemory (same gate) measures the memory and goroutines of idle peer links.
// docs/capacity.md reports the figures.
//
// TestWrongKeyNodeGetsNoShards always runs: a few real gossip members, one with the
// wrong gossip key, which registers in etcd but must never own a shard or lead.
//
// # Concurrency contract
//
// Not applicable: the package exports nothing. Each simulated node owns one
// goroutine (its membership-event loop), which ends when the node's gossip closes;
// the tests stop every node at cleanup.
package scale
