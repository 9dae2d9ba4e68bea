package shardmap_test

import (
	"fmt"

	"github.com/roomcast/roomcast/mesh/shardmap"
)

// A third node joins a cluster of two: it takes a third of the shards, and nothing
// else moves.
func ExampleAssign() {
	two := shardmap.Assign(nil, []string{"a", "b"}, 6)
	three := shardmap.Assign(two, []string{"a", "b", "c"}, 6)
	fmt.Println(two)
	fmt.Println(three)
	fmt.Println("moved:", shardmap.Moved(two, three))
	// Output:
	// [a b a b a b]
	// [a b a b c c]
	// moved: 2
}
