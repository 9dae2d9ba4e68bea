package faults

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

var (
	soakFor = flag.Duration("soak", 0, "run TestSoak for this long (0: skip it)")

	// Built once by TestMain; buildErr says why they could not be.
	roomcastBin, etcdBin, buildErr string
)

func TestMain(m *testing.M) {
	flag.Parse()
	dir := ""
	switch {
	case testing.Short() || labUnavailable() != "":
		// requireLab skips (or fails in CI); nothing to build.
	default:
		var err error
		if dir, err = os.MkdirTemp("", "rcft-bin-"); err != nil {
			buildErr = err.Error()
			break
		}
		roomcastBin, etcdBin = filepath.Join(dir, "roomcast"), filepath.Join(dir, "etcdproc")
		builds := map[string]string{etcdBin: "./e2e/faults/internal/etcdproc"}
		if prebuilt := os.Getenv("FAULTS_ROOMCAST_BIN"); prebuilt != "" {
			// A binary built elsewhere, e.g. of another revision for a soak.
			roomcastBin = prebuilt
		} else {
			builds[roomcastBin] = "./cmd/roomcast"
		}
		for bin, pkg := range builds {
			cmd := exec.Command("go", "build", "-o", bin, pkg)
			cmd.Dir = "../.." // the module root; tests run in the package directory
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Sprintf("build %s: %v\n%s", pkg, err, out)
			}
		}
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
		os.Exit(code)
	}))
}
