// Command roomcast-bench measures a running roomcast node: memory per idle
// connection, and fan-out throughput and publish→deliver latency for one room.
//
// It opens WebSocket connections spread over several 127.0.0.x source addresses,
// publishes through the control API's PublishStream at an open-loop rate (latency is
// measured from each message's intended send time, so a stalled server cannot hide its
// delay: no coordinated omission), and reports HDR-histogram percentiles, losses and
// duplicates (from sequence numbers), server CPU and RSS (from /proc of --server-pid)
// and its own CPU separately.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "roomcast-bench",
		Short:         "Load-test a roomcast node",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var o common
	o.flags(root)
	root.AddCommand(idleCommand(&o), fanoutCommand(&o))
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "roomcast-bench:", err)
		os.Exit(1)
	}
}
