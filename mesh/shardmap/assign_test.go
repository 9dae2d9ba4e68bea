package shardmap

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("n%02d", i)
	}
	return out
}

// checkBalanced fails unless every live node owns floor or ceil of shards/len(live)
// and no shard is owned by anything else.
func checkBalanced(t *testing.T, got []string, live []string, shards int) {
	t.Helper()
	counts := map[string]int{}
	for i, o := range got {
		if !slices.Contains(live, o) {
			t.Fatalf("shard %d owned by %q, not live", i, o)
		}
		counts[o]++
	}
	lo, hi := shards/len(live), (shards+len(live)-1)/len(live)
	for _, n := range live {
		if c := counts[n]; c < lo || c > hi {
			t.Fatalf("%s owns %d shards, want %d..%d (counts %v)", n, c, lo, hi, counts)
		}
	}
}

// minMoves is the least movement any balanced assignment needs: the shards of
// departed nodes plus each live node's excess over the ceiling quota, or at least
// what is needed to bring the newcomers up to the floor.
func minMoves(prev []string, live []string, shards int) int {
	held := map[string]int{}
	orphaned := 0
	for _, o := range prev {
		if slices.Contains(live, o) {
			held[o]++
		} else {
			orphaned++
		}
	}
	lo, hi := shards/len(live), (shards+len(live)-1)/len(live)
	excess, deficit := 0, 0
	for _, n := range live {
		excess += max(0, held[n]-hi)
		deficit += max(0, lo-held[n])
	}
	return max(orphaned+excess, deficit)
}

func TestAssign(t *testing.T) {
	tests := []struct {
		name      string
		prev      []string
		live      []string
		shards    int
		wantMoved int // -1: only check balance and the lower bound
	}{
		{"empty cluster", nil, nil, 8, 8},
		{"first node takes all", make([]string, 8), []string{"a"}, 8, 8},
		{"second node takes half", Assign(nil, []string{"a"}, 8), []string{"a", "b"}, 8, 4},
		{"third node takes a third", Assign(nil, []string{"a", "b"}, 9), []string{"a", "b", "c"}, 9, 3},
		{"dead node's shards only", Assign(nil, []string{"a", "b", "c"}, 9), []string{"a", "c"}, 9, 3},
		{"unchanged is stable", Assign(nil, []string{"a", "b", "c"}, 10), []string{"a", "b", "c"}, 10, 0},
		{"uneven 256 over 30 then one dies", Assign(nil, names(30), 256), names(30)[1:], 256, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Assign(tt.prev, tt.live, tt.shards)
			if len(got) != tt.shards {
				t.Fatalf("len = %d", len(got))
			}
			if len(tt.live) == 0 {
				for _, o := range got {
					if o != "" {
						t.Fatalf("owner %q with no live node", o)
					}
				}
				return
			}
			checkBalanced(t, got, tt.live, tt.shards)
			moved := Moved(tt.prev, got)
			if tt.wantMoved >= 0 && moved != tt.wantMoved {
				t.Fatalf("moved %d shards, want %d", moved, tt.wantMoved)
			}
			if lb := minMoves(tt.prev, tt.live, tt.shards); tt.prev != nil && moved > lb {
				t.Fatalf("moved %d shards, the minimum is %d", moved, lb)
			}
		})
	}
}

// TestAssignRandomChurn applies random joins and deaths and checks, at every step,
// balance within ±1, minimal movement, and determinism.
func TestAssignRandomChurn(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const shards = 256
	var live []string
	next := 0
	var owners []string
	for step := range 500 {
		if len(live) > 1 && rng.IntN(2) == 0 {
			i := rng.IntN(len(live))
			live = slices.Delete(live, i, i+1)
		} else if len(live) < 40 {
			live = append(live, fmt.Sprintf("node-%03d", next))
			next++
		}
		got := Assign(owners, live, shards)
		if again := Assign(owners, slices.Clone(live), shards); !slices.Equal(got, again) {
			t.Fatalf("step %d: not deterministic", step)
		}
		checkBalanced(t, got, live, shards)
		if owners != nil {
			if moved, lb := Moved(owners, got), minMoves(owners, live, shards); moved > lb {
				t.Fatalf("step %d: moved %d, minimum %d", step, moved, lb)
			}
		}
		owners = got
	}
}
