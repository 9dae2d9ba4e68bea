package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/roomcast/roomcast/internal/app"
)

// flagHelp documents every node setting. Each becomes a flag (--client-addr), an
// environment variable (ROOMCAST_CLIENT_ADDR) and a config-file key (client_addr).
var flagHelp = map[string]string{
	"name":                   "node name, unique per incarnation (default <hostname>-<random>)",
	"dev":                    "development mode: generate and print a JWT secret and control token, allow every origin, serve /dev/token",
	"client_addr":            "WebSocket listen address",
	"ws_path":                "WebSocket endpoint path",
	"control_addr":           "control API (gRPC) listen address",
	"admin_addr":             "admin HTTP listen address (/metrics, /healthz, /readyz, /debug/pprof)",
	"read_header_timeout":    "time allowed to read an HTTP request's headers (slow-upgrade guard)",
	"allowed_origins":        "origins allowed to open WebSockets (exact match; no Origin header is always allowed; \"*\" allows all)",
	"jwt_secret":             "HS256 secret for client tokens (at least 32 bytes)",
	"jwt_audience":           "required token audience (aud), when set",
	"jwt_issuer":             "required token issuer (iss), when set",
	"jwt_leeway":             "clock skew allowed on exp/nbf/iat",
	"control_token":          "bearer token(s) accepted by the control API",
	"control_insecure":       "allow the control API without credentials (logs a warning; never in production)",
	"control_tls_cert":       "control API TLS certificate (PEM)",
	"control_tls_key":        "control API TLS key (PEM)",
	"control_client_ca":      "CA bundle (PEM) for control API client certificates (mTLS)",
	"control_reflection":     "serve gRPC server reflection (grpcurl works without proto files)",
	"control_max_recv_bytes": "largest control API request accepted",
	"transport":              "connection reader: auto (epoll on Linux), epoll, goroutine",
	"workers":                "epoll read workers (0: 2 x GOMAXPROCS)",
	"flush_workers":          "goroutines that write to sockets for every connection (0: GOMAXPROCS; on a 2-core host shared with other work, 1 coalesced more and halved the p99 of a 1M deliveries/s fan-out, but slowed many small rooms — bench/README.md)",
	"write_batching":         "socket writes waiting together (a fan-out's) go to the kernel in one io_uring submission: auto (where the kernel allows it), off (one write per socket)",
	"auth_timeout":           "time a new connection has to send connect",
	"ping_interval":          "app-level and WebSocket ping interval",
	"pong_timeout":           "silence allowed after a ping interval before a connection is closed (4002)",
	"max_frame_bytes":        "largest WebSocket message accepted (checked on the frame header; 1009)",
	"max_queue_bytes":        "per-connection send queue bound in bytes (overflow closes with 4001 slow)",
	"max_queue_messages":     "per-connection send queue bound in messages (overflow closes with 4001 slow)",
	"max_rooms_per_conn":     "rooms one connection may join",
	"max_conns_per_user":     "connections one user may hold (0: unlimited; over it closes with 4503)",
	"command_rate":           "sustained client commands per second per connection",
	"command_burst":          "client command burst per connection",
	"connect_rate":           "new WebSocket connections per second per node (over it: HTTP 503)",
	"drain_timeout":          "time allowed on SIGTERM to move clients away and stop",
	"shards":                 "room shards",
	"etcd_endpoints":         "etcd endpoints; set them to run as a cluster member (empty: a standalone node that owns every room)",
	"cluster_name":           "cluster name: the etcd prefix /roomcast/<name>/ and the gossip label",
	"gossip_addr":            "gossip (memberlist) listen address, TCP and UDP",
	"peer_addr":              "peer-link (mesh.v1 gRPC) listen address",
	"advertise_host":         "host other nodes reach this one at, for gossip and peer links (default: the listen host, or the host's private IP when listening on all interfaces)",
	"join":                   "static gossip seeds (host:port); nodes also find each other through etcd",
	"gossip_key":             "shared gossip encryption key (at least 16 characters; hashed to AES-256)",
	"gossip_old_keys":        "further gossip keys accepted for decryption while keys rotate: give every node the new key here, then make it --gossip-key everywhere, then drop the old one",
	"peer_secret":            "shared secret authenticating peer links (at least 16 characters)",
	"log_level":              "debug, info, warn or error",
	"log_format":             "text or json",
}

func nodeCommand() *cobra.Command {
	var scratch = app.Defaults()
	var configPath string
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run a roomcast node",
		Long: `Run a roomcast node: WebSocket clients on --client-addr, the control API on
--control-addr, metrics and health on --admin-addr.

Settings come from, in increasing priority: built-in defaults, the YAML config file
(--config or ROOMCAST_CONFIG; keys are the flag names with '_' for '-', plus
'namespaces' and 'jwt_keys'), environment variables ROOMCAST_<FLAG_NAME> (e.g.
ROOMCAST_CLIENT_ADDR; lists are comma-separated), and flags.

The live part (namespaces and token keys) is applied again on SIGHUP. In cluster
mode (--etcd-endpoints) the cluster's live config in etcd ('roomcast config') is
put over it and applied on every change, without a restart.`,
		Example: `  # try it: generated credentials are printed
  roomcast node --dev

  # production-style
  ROOMCAST_JWT_SECRET=... ROOMCAST_CONTROL_TOKEN=... roomcast node --config /etc/roomcast.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := resolveConfig(cmd.Flags(), configPath)
			if err != nil {
				return usageError{err}
			}
			log := newLogger(cfg.LogLevel, cfg.LogFormat)
			a, err := app.New(cfg, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			go reloadOnHUP(ctx, a, cmd.Flags(), configPath, log)
			return a.Run(ctx)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", os.Getenv("ROOMCAST_CONFIG"), "YAML config file (env ROOMCAST_CONFIG)")
	bindFlags(cmd.Flags(), &scratch)
	return cmd
}

// bindFlags registers one flag per yaml-tagged Config field (except the file-only ones)
// with its default and help.
func bindFlags(fs *pflag.FlagSet, cfg *app.Config) {
	v := reflect.ValueOf(cfg).Elem()
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		key := t.Field(i).Tag.Get("yaml")
		help, ok := flagHelp[key]
		if !ok {
			continue // file-only (namespaces, jwt_keys)
		}
		name := strings.ReplaceAll(key, "_", "-")
		help += " (env ROOMCAST_" + strings.ToUpper(key) + ")"
		switch p := v.Field(i).Addr().Interface().(type) {
		case *string:
			fs.StringVar(p, name, *p, help)
		case *bool:
			fs.BoolVar(p, name, *p, help)
		case *int:
			fs.IntVar(p, name, *p, help)
		case *float64:
			fs.Float64Var(p, name, *p, help)
		case *[]string:
			fs.StringSliceVar(p, name, *p, help)
		case *time.Duration:
			fs.DurationVar(p, name, *p, help)
		default:
			panic("roomcast: no flag type for config field " + key)
		}
	}
}

// resolveConfig layers defaults, the config file, the environment and changed flags.
func resolveConfig(flags *pflag.FlagSet, configPath string) (app.Config, error) {
	final := app.Defaults()
	if configPath != "" {
		if err := final.LoadFile(configPath); err != nil {
			return final, err
		}
	}
	target := pflag.NewFlagSet("resolved", pflag.ContinueOnError)
	bindFlags(target, &final)
	var err error
	target.VisitAll(func(f *pflag.Flag) {
		if err != nil {
			return
		}
		src := flags.Lookup(f.Name)
		if src != nil && src.Changed {
			err = copyFlag(f, src.Value)
			return
		}
		env := "ROOMCAST_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if val, ok := os.LookupEnv(env); ok {
			if sv, isSlice := f.Value.(pflag.SliceValue); isSlice {
				err = sv.Replace(splitList(val))
			} else {
				err = f.Value.Set(val)
			}
			if err != nil {
				err = fmt.Errorf("%s: %w", env, err)
			}
		}
	})
	return final, err
}

func copyFlag(dst *pflag.Flag, src pflag.Value) error {
	if sv, ok := src.(pflag.SliceValue); ok {
		return dst.Value.(pflag.SliceValue).Replace(sv.GetSlice())
	}
	return dst.Value.Set(src.String())
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func newLogger(level, format string) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// usageError makes the process exit with 2 (bad flags or config).
type usageError struct{ error }

func (e usageError) ExitCode() int { return 2 }
func (e usageError) Unwrap() error { return e.error }

// reloadOnHUP re-reads the settings (file, environment, flags) on each SIGHUP and
// applies their live part (namespaces, token keys) until ctx ends. A bad file is
// logged and changes nothing. In cluster mode the cluster's live config document in
// etcd stays over the re-read settings: SIGHUP changes only what the document does not
// set, and the non-live settings still need a restart.
func reloadOnHUP(ctx context.Context, a *app.App, flags *pflag.FlagSet, configPath string, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			cfg, err := resolveConfig(flags, configPath)
			if err == nil {
				err = a.Reload(cfg)
			}
			if err != nil {
				log.Error("configuration reload refused; the running configuration is unchanged", "err", err)
			}
		}
	}
}
