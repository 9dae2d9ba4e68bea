// Command roomcast is the roomcast binary: `roomcast node` runs a node, and the other
// verbs drive a running cluster over its control API.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/roomcast/roomcast/internal/cli"
)

func main() {
	root := &cobra.Command{
		Use:           "roomcast",
		Short:         "roomcast: a brokerless real-time messaging fabric",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cli.AddGlobalFlags(root)
	root.AddCommand(nodeCommand(), devCommand())
	root.AddCommand(cli.Commands()...)
	root.AddCommand(cli.ConfigCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "roomcast:", err)
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			os.Exit(ec.ExitCode())
		}
		os.Exit(2)
	}
}
