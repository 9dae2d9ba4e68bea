// Command roomcast-bench is roomcast's load tool. It measures a roomcast node — or,
// side by side in the same run, a Socket.IO 4 server with the Redis adapter driven
// through a small adapter — on the machine it runs on.
//
// It opens WebSocket connections spread over several worker processes (it re-executes
// itself as `roomcast-bench worker`, driven over stdin/stdout, because a process may
// hold at most ~20,000 open files here) and over 127.0.0.x source addresses; joins them
// to rooms; publishes through the control API's PublishStream on an open-loop schedule
// (latency is measured from each message's intended send time, so a stalled server
// cannot hide its delay: no coordinated omission); and reports connections held,
// deliveries per second, publish→deliver latency percentiles from HDR histograms,
// losses and duplicates from per-room sequence numbers, server RSS per connection, and
// server and tool CPU separately (from /proc). Results come as a table, as JSON and as
// an SVG percentile chart; progress goes to stderr while it runs.
//
// Concurrency: the coordinator runs one scenario at a time; publishers, progress
// printers and worker plumbing are goroutines owned by the step that starts them.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	if os.Getenv(workerEnv) != "" {
		runWorker()
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "roomcast-bench",
		Short:         "Load-test roomcast (and Socket.IO + Redis side by side)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(runCommand(), workerCommand(), etcdCommand())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "roomcast-bench:", err)
		os.Exit(1)
	}
}

func runWorker() {
	if err := workerMain(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "roomcast-bench worker:", err)
		os.Exit(1)
	}
}

func workerCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "worker",
		Short:  "Hold connections for a coordinator (started by run; speaks JSON lines on stdin/stdout)",
		Hidden: true,
		Args:   cobra.NoArgs,
		Run:    func(*cobra.Command, []string) { runWorker() },
	}
}
