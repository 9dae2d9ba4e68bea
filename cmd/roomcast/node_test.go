package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// Settings layer as documented: defaults < config file < environment < flags.
func TestResolveConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "roomcast.yaml")
	if err := os.WriteFile(file, []byte(`
client_addr: ":1111"
control_addr: ":2222"
admin_addr: ":3333"
ping_interval: 7s
allowed_origins: [https://a.example]
namespaces:
  - name: chat
    presence: true
    history_size: 10
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ROOMCAST_CONTROL_ADDR", ":4444")
	t.Setenv("ROOMCAST_ADMIN_ADDR", ":5555")
	t.Setenv("ROOMCAST_ALLOWED_ORIGINS", "https://b.example, https://c.example")
	cmd := nodeCommand()
	if err := cmd.ParseFlags([]string{"--admin-addr", ":6666"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := resolveConfig(cmd.Flags(), file)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ClientAddr != ":1111" || cfg.ControlAddr != ":4444" || cfg.AdminAddr != ":6666" {
		t.Fatalf("addresses %q %q %q: want file, env, flag", cfg.ClientAddr, cfg.ControlAddr, cfg.AdminAddr)
	}
	if cfg.PingInterval != 7*time.Second || cfg.AuthTimeout != 5*time.Second {
		t.Fatalf("durations: ping %v (file) auth %v (default)", cfg.PingInterval, cfg.AuthTimeout)
	}
	if len(cfg.AllowedOrigins) != 2 || cfg.AllowedOrigins[1] != "https://c.example" {
		t.Fatalf("env list must replace the file's: %v", cfg.AllowedOrigins)
	}
	if len(cfg.Namespaces) != 1 || cfg.Namespaces[0].HistorySize != 10 {
		t.Fatalf("namespaces from the file: %+v", cfg.Namespaces)
	}
}

func TestResolveConfigRejectsUnknownKeysAndBadEnv(t *testing.T) {
	file := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(file, []byte("clinet_addr: \":1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := resolveConfig(pflag.NewFlagSet("x", pflag.ContinueOnError), file); err == nil {
		t.Fatal("a misspelt key was accepted")
	}
	t.Setenv("ROOMCAST_PING_INTERVAL", "soon")
	if _, err := resolveConfig(nodeCommand().Flags(), ""); err == nil {
		t.Fatal("an unparsable environment value was accepted")
	}
}

// Every setting is documented in --help.
func TestEveryFlagHasHelp(t *testing.T) {
	cmd := nodeCommand()
	n := 0
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		n++
		if f.Usage == "" {
			t.Errorf("--%s has no help", f.Name)
		}
	})
	if n != len(flagHelp)+1 { // +1: --config
		t.Fatalf("%d flags for %d documented settings", n, len(flagHelp))
	}
}
