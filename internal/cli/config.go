package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/roomcast/roomcast/internal/liveconfig"
)

// Environment fallbacks of the config verbs' etcd flags: the same variables
// `roomcast node` reads.
const (
	// EnvEtcdEndpoints is the fallback for --etcd-endpoints (comma-separated).
	EnvEtcdEndpoints = "ROOMCAST_ETCD_ENDPOINTS"
	// EnvClusterName is the fallback for --cluster-name.
	EnvClusterName = "ROOMCAST_CLUSTER_NAME"
)

const defaultClusterName = "default"

// ConfigCommand returns `roomcast config` with its verbs get, set and delete, which
// read and write the cluster's live configuration straight in etcd (not through a
// node). Errors carry the documented exit codes, as with Commands.
func ConfigCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Read or change the cluster's live configuration in etcd",
		Long: `Read or change the cluster's live configuration: one YAML document in etcd at
/roomcast/<cluster-name>/config that every node of the cluster applies without a
restart. It holds the live settings, with the config file's keys:

  namespaces     room namespaces and their per-room limits (history_size,
                 history_ttl, max_members, idempotency_window) and options
  jwt_secret     HS256 client-token secret   } together the token key set: a
  jwt_keys       further verification keys   } document setting either replaces
                                               a node's whole key set
  jwt_audience, jwt_issuer, jwt_leeway

A key the document does not set keeps each node's own value (file, environment,
flags). Other settings (listeners, per-connection limits, rates, queues) are not
live: they stay in each node's file and need a restart.

These verbs talk to etcd directly: --etcd-endpoints and --cluster-name are the
flags (and ROOMCAST_ETCD_ENDPOINTS, ROOMCAST_CLUSTER_NAME the variables) of
'roomcast node'.`,
		Example: `  export ROOMCAST_ETCD_ENDPOINTS=127.0.0.1:2379 ROOMCAST_CLUSTER_NAME=prod
  roomcast config get > live.yaml           # prints "# ... revision N" first
  $EDITOR live.yaml
  roomcast config set -f live.yaml --if-revision N`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	pf := cmd.PersistentFlags()
	pf.StringSlice("etcd-endpoints", nil, "etcd endpoints of the cluster (env "+EnvEtcdEndpoints+", comma-separated)")
	pf.String("cluster-name", defaultClusterName, "cluster name: the etcd prefix /roomcast/<name>/ (env "+EnvClusterName+")")
	cmd.AddCommand(configGetCmd(), configSetCmd(), configDeleteCmd())
	for _, c := range append([]*cobra.Command{cmd}, cmd.Commands()...) {
		c.SetFlagErrorFunc(flagError)
		run := c.RunE
		c.RunE = func(cmd *cobra.Command, a []string) error { return classify(run(cmd, a)) }
	}
	return cmd
}

func configGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get",
		Short: "Print the live configuration and its revision",
		Long: `Print the cluster's live configuration document as stored, and its revision
(the etcd mod revision, for 'config set --if-revision').

With --output yaml (the default; "table" means the same) the first line is a YAML
comment naming the key and revision, then the document as written, comments
included, so the output can be edited and given back to 'config set -f'. With
--output json it prints {"key", "revision", "valid", "error", "config"}, the
document converted to JSON.

Exit code 1 when the cluster has no live configuration (nodes then use their own
settings); a stored document that nodes refuse is printed with a warning.`,
		Example: `  roomcast config get --etcd-endpoints 127.0.0.1:2379 --cluster-name prod
  roomcast config get -o json | jq .revision`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := configOutput(cmd)
			if err != nil {
				return err
			}
			return withStore(cmd, func(ctx context.Context, s *liveconfig.Store) error {
				e, _, err := s.Get(ctx)
				if errors.Is(err, liveconfig.ErrNotFound) {
					return &exitError{code: ExitServerError, err: err,
						msg: fmt.Sprintf("no live configuration at %s: nodes use their own settings", s.Key())}
				}
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				if asJSON {
					return printConfigJSON(w, s.Key(), e)
				}
				if e.Err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "roomcast: warning: the stored document is invalid; nodes refuse it: %v\n", e.Err)
				}
				fmt.Fprintf(w, "# roomcast live config %s, revision %d\n", s.Key(), e.Revision)
				_, err = w.Write(e.Raw)
				if err == nil && len(e.Raw) > 0 && e.Raw[len(e.Raw)-1] != '\n' {
					_, err = io.WriteString(w, "\n")
				}
				return err
			})
		},
	}
}

func printConfigJSON(w io.Writer, key string, e liveconfig.Entry) error {
	out := struct {
		Key      string `json:"key"`
		Revision int64  `json:"revision"`
		Valid    bool   `json:"valid"`
		Error    string `json:"error,omitempty"`
		Config   any    `json:"config"`
	}{Key: key, Revision: e.Revision, Valid: e.Err == nil}
	if e.Err != nil {
		out.Error = e.Err.Error()
	}
	// The document as written, in JSON form: durations stay as written ("10m").
	var doc any
	if err := yaml.Unmarshal(e.Raw, &doc); err == nil {
		out.Config = doc
	}
	b, err := json.Marshal(out)
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func configSetCmd() *cobra.Command {
	var file string
	var ifRevision int64
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "set -f FILE",
		Short: "Validate and store a new live configuration",
		Long: `Validate a live configuration document and store it; every node of the cluster
applies it within moments, without a restart.

The document is validated first with the same code the nodes run: strict YAML
(unknown keys are errors), valid namespaces, valid token keys (public keys inline
in public_key; public_key_file is for config files only). An invalid document is
refused with the reason and exit code 2, and nothing is written. A node that
still cannot apply it (for example it would be left without any token key) keeps
its previous configuration and counts the refusal in roomcast_config_rejected_total.

--if-revision N writes only if the stored document is still at revision N (as
printed by 'config get'; 0: only if there is none): a concurrent change makes the
command fail with exit code 1 and write nothing. Without it the write replaces
whatever is stored.`,
		Example: `  cat > live.yaml <<'EOF'
  namespaces:
    - name: chat
      presence: true
      join_leave: true
      history_size: 100
      history_ttl: 10m
      client_publish: true
  jwt_keys:
    - id: k2
      algorithm: HS256
      secret: a-new-secret-of-at-least-32-bytes-long
  EOF
  roomcast config set -f live.yaml --etcd-endpoints 127.0.0.1:2379 --cluster-name prod
  roomcast config set -f live.yaml --if-revision 42
  roomcast config set -f live.yaml --dry-run      # validate only
  cat live.yaml | roomcast config set -f -`,
		Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := configOutput(cmd)
			if err != nil {
				return err
			}
			raw, err := readDocument(cmd, file)
			if err != nil {
				return err
			}
			if _, err := liveconfig.Parse(raw); err != nil {
				return usageErrorf("invalid live config, nothing written: %v", err)
			}
			if dryRun {
				return reportConfig(cmd.OutOrStdout(), asJSON, "", 0, "valid live config (dry run, nothing written)")
			}
			rev := int64(-1)
			if cmd.Flags().Changed("if-revision") {
				if ifRevision < 0 {
					return usageErrorf("--if-revision must be 0 (no document yet) or a revision from 'config get'")
				}
				rev = ifRevision
			}
			return withStore(cmd, func(ctx context.Context, s *liveconfig.Store) error {
				newRev, err := s.Set(ctx, raw, rev)
				if err != nil {
					return storeError(err)
				}
				return reportConfig(cmd.OutOrStdout(), asJSON, s.Key(), newRev, "live config stored")
			})
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", `the YAML document ("-" for stdin)`)
	cmd.Flags().Int64Var(&ifRevision, "if-revision", 0, "write only if the stored document is at this revision (0: only if none is stored)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "validate only; do not contact etcd")
	return cmd
}

func configDeleteCmd() *cobra.Command {
	var ifRevision int64
	cmd := &cobra.Command{
		Use:   "delete",
		Short: "Remove the live configuration; nodes go back to their own settings",
		Long: `Remove the cluster's live configuration document. Every node then applies its own
live settings again (from its file, environment and flags), without a restart. A
node whose own settings are unusable (no token key) keeps the document's.`,
		Example: `  roomcast config delete --if-revision 42`,
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := configOutput(cmd)
			if err != nil {
				return err
			}
			rev := int64(-1)
			if cmd.Flags().Changed("if-revision") {
				rev = ifRevision
			}
			return withStore(cmd, func(ctx context.Context, s *liveconfig.Store) error {
				newRev, err := s.Delete(ctx, rev)
				if err != nil {
					return storeError(err)
				}
				return reportConfig(cmd.OutOrStdout(), asJSON, s.Key(), newRev, "live config deleted")
			})
		},
	}
	cmd.Flags().Int64Var(&ifRevision, "if-revision", 0, "delete only if the stored document is at this revision")
	return cmd
}

// storeError gives a write conflict exit code 1 and its explanation.
func storeError(err error) error {
	var ce *liveconfig.ConflictError
	if errors.As(err, &ce) {
		return &exitError{code: ExitServerError, msg: "conflict: " + ce.Error(), err: err}
	}
	return err
}

func reportConfig(w io.Writer, asJSON bool, key string, rev int64, what string) error {
	if asJSON {
		b, err := json.Marshal(struct {
			Key      string `json:"key,omitempty"`
			Revision int64  `json:"revision"`
		}{key, rev})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	if key == "" {
		_, err := fmt.Fprintln(w, what)
		return err
	}
	_, err := fmt.Fprintf(w, "%s: %s, revision %d\n", what, key, rev)
	return err
}

// readDocument reads --file (or stdin for "-").
func readDocument(cmd *cobra.Command, file string) ([]byte, error) {
	var r io.Reader
	switch file {
	case "":
		return nil, usageErrorf("no document: give it with -f FILE (or -f - for stdin)")
	case "-":
		r = cmd.InOrStdin()
	default:
		f, err := os.Open(file)
		if err != nil {
			return nil, usageErrorf("read -f: %v", err)
		}
		defer f.Close()
		r = f
	}
	// One byte over the bound is enough for Parse to refuse it.
	b, err := io.ReadAll(io.LimitReader(r, liveconfig.MaxDocumentBytes+1))
	if err != nil {
		return nil, usageErrorf("read -f: %v", err)
	}
	return b, nil
}

// configOutput resolves --output for the config verbs: yaml (also "table", the
// global default) or json.
func configOutput(cmd *cobra.Command) (asJSON bool, err error) {
	switch out := strings.ToLower(stringOpt(cmd, "output", EnvOutput, "table")); out {
	case "yaml", "table", "":
		return false, nil
	case "json":
		return true, nil
	default:
		return false, usageErrorf("invalid output %q: want yaml or json", out)
	}
}

// withStore connects to etcd from the flags (or environment) and runs fn with a
// context bound by --timeout.
func withStore(cmd *cobra.Command, fn func(ctx context.Context, s *liveconfig.Store) error) error {
	var endpoints []string
	if f := cmd.Flag("etcd-endpoints"); f != nil && f.Changed {
		endpoints, _ = cmd.Flags().GetStringSlice("etcd-endpoints")
	} else {
		endpoints = splitComma(os.Getenv(EnvEtcdEndpoints))
	}
	if len(endpoints) == 0 {
		return usageErrorf("no etcd endpoints: set --etcd-endpoints or %s", EnvEtcdEndpoints)
	}
	cluster := stringOpt(cmd, "cluster-name", EnvClusterName, defaultClusterName)
	ts := stringOpt(cmd, "timeout", EnvTimeout, defaultTimeout.String())
	timeout, err := time.ParseDuration(ts)
	if err != nil || timeout <= 0 {
		return usageErrorf("invalid timeout %q: want a positive duration such as 10s", ts)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: timeout, Logger: zap.NewNop()})
	if err != nil {
		return &exitError{code: ExitUnavailable, msg: "etcd: " + err.Error(), err: err}
	}
	defer cli.Close()
	s, err := liveconfig.New(liveconfig.Config{Client: cli, Cluster: cluster})
	if err != nil {
		return usageErrorf("%v", err)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	if err := fn(ctx, s); err != nil {
		if ctx.Err() != nil && !isExitError(err) {
			return &exitError{code: ExitUnavailable, msg: fmt.Sprintf("etcd at %s did not answer within %s: %v", strings.Join(endpoints, ","), timeout, err), err: err}
		}
		return err
	}
	return nil
}

func isExitError(err error) bool {
	var ee *exitError
	return errors.As(err, &ee)
}

func splitComma(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
