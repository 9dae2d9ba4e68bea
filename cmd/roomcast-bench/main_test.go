package main

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain doubles as the worker: the pool re-executes this test binary with workerEnv
// set, exactly as it re-executes roomcast-bench.
func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) != "" {
		if err := workerMain(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}
