package shardmap

import (
	"cmp"
	"slices"
)

// Assign returns a new owner per shard for the live nodes, given the previous owners
// (prev[i] is shard i's owner, "" for none). It is pure and deterministic.
//
// Balance: every live node ends with floor(n/L) or ceil(n/L) shards (±1). Movement is
// minimal for that balance: a shard keeps its owner if the owner is live and under its
// quota, so only the shards of departed nodes and each node's overflow above its quota
// move; the extra ceil quotas go to the nodes already holding the most, so a node that
// is one over the floor keeps its shard. Freed shards go to the live node with the most
// remaining quota (ties by name), filling the newest or emptiest nodes first.
//
// With no live node every shard is unowned ("").
func Assign(prev []string, live []string, shards int) []string {
	out := make([]string, shards)
	if len(live) == 0 || shards == 0 {
		return out
	}
	nodes := slices.Clone(live)
	slices.Sort(nodes)
	nodes = slices.Compact(nodes)

	held := make(map[string]int, len(nodes))
	for _, n := range nodes {
		held[n] = 0
	}
	for i := 0; i < shards && i < len(prev); i++ {
		if _, ok := held[prev[i]]; ok {
			held[prev[i]]++
		}
	}

	// Quotas: floor for everyone, +1 for the `extra` nodes holding the most now.
	base, extra := shards/len(nodes), shards%len(nodes)
	order := slices.Clone(nodes)
	slices.SortStableFunc(order, func(a, b string) int { return cmp.Compare(held[b], held[a]) })
	quota := make(map[string]int, len(nodes))
	for i, n := range order {
		quota[n] = base
		if i < extra {
			quota[n]++
		}
	}

	count := make(map[string]int, len(nodes))
	var free []int
	for i := range shards {
		owner := ""
		if i < len(prev) {
			owner = prev[i]
		}
		if q, ok := quota[owner]; ok && count[owner] < q {
			out[i] = owner
			count[owner]++
			continue
		}
		free = append(free, i)
	}
	for _, i := range free {
		best, room := "", -1
		for _, n := range nodes { // sorted: ties go to the smallest name
			if r := quota[n] - count[n]; r > room {
				best, room = n, r
			}
		}
		out[i] = best
		count[best]++
	}
	return out
}

// Moved counts the shards whose owner differs between two assignments.
func Moved(a, b []string) int {
	moved := 0
	for i := range max(len(a), len(b)) {
		var x, y string
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			moved++
		}
	}
	return moved
}
