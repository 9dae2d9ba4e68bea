package cli

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// The roomcast binary built by TestMain for the end-to-end tests; empty, with
// realBinarySkip saying why, when it could not be built. Written only by TestMain,
// before any test runs.
var realBinary, realBinarySkip string

func TestMain(m *testing.M) {
	flag.Parse()
	// The tests choose the environment they run with; an operator's settings
	// must not leak in.
	for _, env := range []string{EnvAddr, EnvToken, EnvTLS, EnvCAFile, EnvCertFile, EnvKeyFile,
		EnvInsecureSkipVerify, EnvTimeout, EnvOutput, EnvJWTSecret} {
		os.Unsetenv(env)
	}
	dir, err := os.MkdirTemp("", "roomcast-cli-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	realBinary, realBinarySkip = buildBinary(dir)
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// buildBinary builds ./cmd/roomcast into dir and returns its path, or "" and the
// reason it cannot be used (short mode, no go tool, the command does not build
// yet, or it lacks the CLI verbs).
func buildBinary(dir string) (path, skip string) {
	if testing.Short() {
		return "", "short mode"
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", "no go tool in PATH"
	}
	path = filepath.Join(dir, "roomcast")
	build := exec.Command(goTool, "build", "-o", path, "./cmd/roomcast")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		return "", "cmd/roomcast does not build: " + strings.TrimSpace(string(out))
	}
	if out, err := exec.Command(path, "publish", "--help").CombinedOutput(); err != nil {
		return "", "cmd/roomcast has no publish verb: " + strings.TrimSpace(string(out))
	}
	return path, ""
}
