package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Process exit codes. They are part of the CLI's contract with scripts.
const (
	// ExitOK means the command succeeded.
	ExitOK = 0
	// ExitServerError means the server answered with an error.
	ExitServerError = 1
	// ExitUsage means the flags, arguments or local input were wrong.
	ExitUsage = 2
	// ExitUnavailable means the node could not be reached or did not answer in time.
	ExitUnavailable = 3
	// ExitAuth means the server refused the credentials or the caller's rights.
	ExitAuth = 4
)

// Environment variables read as fallbacks when the matching flag is not given.
// ROOMCAST_CONTROL_TOKEN and ROOMCAST_JWT_SECRET are the same variables
// `roomcast node` reads, so one environment serves both the node and the CLI.
const (
	// EnvAddr is the fallback for --addr.
	EnvAddr = "ROOMCAST_ADDR"
	// EnvToken is the fallback for --token.
	EnvToken = "ROOMCAST_CONTROL_TOKEN"
	// EnvTLS is the fallback for --tls.
	EnvTLS = "ROOMCAST_TLS"
	// EnvCAFile is the fallback for --ca-file.
	EnvCAFile = "ROOMCAST_CA_FILE"
	// EnvCertFile is the fallback for --cert-file.
	EnvCertFile = "ROOMCAST_CERT_FILE"
	// EnvKeyFile is the fallback for --key-file.
	EnvKeyFile = "ROOMCAST_KEY_FILE"
	// EnvInsecureSkipVerify is the fallback for --insecure-skip-verify.
	EnvInsecureSkipVerify = "ROOMCAST_INSECURE_SKIP_VERIFY"
	// EnvTimeout is the fallback for --timeout.
	EnvTimeout = "ROOMCAST_TIMEOUT"
	// EnvOutput is the fallback for --output.
	EnvOutput = "ROOMCAST_OUTPUT"
	// EnvJWTSecret is the fallback for the token verb's --secret.
	EnvJWTSecret = "ROOMCAST_JWT_SECRET"
)

const (
	defaultAddr    = "127.0.0.1:9090"
	defaultTimeout = 10 * time.Second
	// maxRecvBytes lets a full history page (1000 messages) through even when the
	// messages are large; gRPC's default of 4 MiB would cut it off.
	maxRecvBytes = 64 << 20
)

// exitCodesHelp is appended to the root command's long help.
const exitCodesHelp = `Exit codes:
  0  success
  1  the server answered with an error (printed as "roomcast: <code>: <message>")
  2  usage error: bad flags, arguments or local input
  3  cannot connect, or timed out (Unavailable, DeadlineExceeded)
  4  unauthenticated or permission denied

Every global flag has an environment fallback, used when the flag is not given:
  --addr ROOMCAST_ADDR, --token ROOMCAST_CONTROL_TOKEN, --tls ROOMCAST_TLS,
  --ca-file ROOMCAST_CA_FILE, --cert-file ROOMCAST_CERT_FILE,
  --key-file ROOMCAST_KEY_FILE, --insecure-skip-verify ROOMCAST_INSECURE_SKIP_VERIFY,
  --timeout ROOMCAST_TIMEOUT, --output ROOMCAST_OUTPUT.`

// AddGlobalFlags registers the connection and output flags shared by every verb as
// persistent flags of root, documents the exit codes in root's help, and makes
// flag parsing errors count as usage errors (exit code 2).
func AddGlobalFlags(root *cobra.Command) {
	pf := root.PersistentFlags()
	pf.String("addr", defaultAddr, "control API address host:port (env "+EnvAddr+")")
	pf.String("token", "", "bearer token for the control API (env "+EnvToken+")")
	pf.Bool("tls", false, "use TLS to reach the control API (env "+EnvTLS+")")
	pf.String("ca-file", "", "PEM CA bundle to verify the server; implies --tls (env "+EnvCAFile+")")
	pf.String("cert-file", "", "PEM client certificate for mTLS; implies --tls (env "+EnvCertFile+")")
	pf.String("key-file", "", "PEM key of --cert-file (env "+EnvKeyFile+")")
	pf.Bool("insecure-skip-verify", false, "do not verify the server's certificate; implies --tls (env "+EnvInsecureSkipVerify+")")
	pf.Duration("timeout", defaultTimeout, "deadline for the whole command, not applied to events (env "+EnvTimeout+")")
	pf.StringP("output", "o", "table", "output format: table or json (env "+EnvOutput+")")

	long := root.Long
	if long == "" {
		long = root.Short
	}
	if long != "" {
		long += "\n\n"
	}
	root.Long = long + exitCodesHelp
	root.SetFlagErrorFunc(flagError)
}

// Execute runs root with ctx, prints any error to root's error stream as
// "roomcast: ..." (with a pointer to --help for usage errors) and returns the
// process exit code for it (see ExitCode). It is the simplest main:
// os.Exit(cli.Execute(ctx, root)). A main that runs root itself gets the same
// codes from the ExitCode() int method of the verbs' errors.
func Execute(ctx context.Context, root *cobra.Command) int {
	// Errors are printed here, in the documented format, rather than by cobra.
	root.SilenceErrors = true
	root.SilenceUsage = true
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	code := ExitCode(err)
	w := root.ErrOrStderr()
	fmt.Fprintln(w, "roomcast: "+errorText(err))
	if code == ExitUsage && cmd != nil {
		fmt.Fprintf(w, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}

// ExitCode maps an error returned by a verb to the process exit code: nil → 0; a
// gRPC Unavailable or DeadlineExceeded (and a local deadline) → 3; Unauthenticated
// or PermissionDenied → 4; any other gRPC status → 1; anything else (cobra's
// argument and flag errors, unreadable files, invalid JSON) → 2.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return ExitUnavailable
	}
	if st, ok := status.FromError(err); ok {
		return codeExit(st.Code())
	}
	return ExitUsage
}

// codeExit maps a gRPC status code to an exit code.
func codeExit(c codes.Code) int {
	switch c {
	case codes.OK:
		return ExitOK
	case codes.Unavailable, codes.DeadlineExceeded:
		return ExitUnavailable
	case codes.Unauthenticated, codes.PermissionDenied:
		return ExitAuth
	default:
		return ExitServerError
	}
}

// errorText renders err for stderr: "<code>: <message>" for gRPC statuses.
func errorText(err error) string {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.msg
	}
	if st, ok := status.FromError(err); ok {
		return st.Code().String() + ": " + st.Message()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return codes.DeadlineExceeded.String() + ": " + err.Error()
	}
	return err.Error()
}

// exitError is an error with a chosen exit code and message, for failures that
// are not a single gRPC status (a partially failed broadcast, an unhealthy node)
// and for usage errors detected by the verbs themselves.
type exitError struct {
	code int
	msg  string
	err  error
}

func (e *exitError) Error() string { return e.msg }
func (e *exitError) Unwrap() error { return e.err }

// ExitCode is the process exit code for the error; cmd/roomcast's main looks for
// this method.
func (e *exitError) ExitCode() int { return e.code }

// classify gives a verb's error its exit code and its printed form
// ("<code>: <message>" for gRPC statuses), so a caller that only prints
// err.Error() and exits with ExitCode() follows the documented contract.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return err
	}
	return &exitError{code: ExitCode(err), msg: errorText(err), err: err}
}

// usageErrorf reports a usage error (exit code 2).
func usageErrorf(format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &exitError{code: ExitUsage, msg: err.Error(), err: err}
}

// flagError makes flag parsing failures usage errors.
func flagError(_ *cobra.Command, err error) error {
	return &exitError{code: ExitUsage, msg: err.Error(), err: err}
}

// args wraps a cobra argument validator so its failures are usage errors.
func args(v cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := v(cmd, a); err != nil {
			return &exitError{code: ExitUsage, msg: err.Error(), err: err}
		}
		return nil
	}
}

// globals are the resolved values of the global flags.
type globals struct {
	addr               string
	token              string
	tls                bool
	caFile             string
	certFile           string
	keyFile            string
	insecureSkipVerify bool
	timeout            time.Duration
	json               bool
}

// resolveGlobals reads the global flags of cmd, falling back to the environment
// for flags not given, then to the defaults. It tolerates a tree whose root has
// no global flags (defaults and environment apply).
func resolveGlobals(cmd *cobra.Command) (globals, error) {
	var g globals
	var err error
	g.addr = stringOpt(cmd, "addr", EnvAddr, defaultAddr)
	g.token = stringOpt(cmd, "token", EnvToken, "")
	g.caFile = stringOpt(cmd, "ca-file", EnvCAFile, "")
	g.certFile = stringOpt(cmd, "cert-file", EnvCertFile, "")
	g.keyFile = stringOpt(cmd, "key-file", EnvKeyFile, "")
	if g.tls, err = boolOpt(cmd, "tls", EnvTLS); err != nil {
		return g, err
	}
	if g.insecureSkipVerify, err = boolOpt(cmd, "insecure-skip-verify", EnvInsecureSkipVerify); err != nil {
		return g, err
	}
	ts := stringOpt(cmd, "timeout", EnvTimeout, defaultTimeout.String())
	if g.timeout, err = time.ParseDuration(ts); err != nil || g.timeout <= 0 {
		return g, usageErrorf("invalid timeout %q: want a positive duration such as 10s", ts)
	}
	switch out := strings.ToLower(stringOpt(cmd, "output", EnvOutput, "table")); out {
	case "table", "":
	case "json":
		g.json = true
	default:
		return g, usageErrorf("invalid output %q: want table or json", out)
	}
	if g.addr == "" {
		return g, usageErrorf("empty --addr")
	}
	if g.caFile != "" || g.certFile != "" || g.insecureSkipVerify {
		g.tls = true
	}
	if (g.certFile == "") != (g.keyFile == "") {
		return g, usageErrorf("--cert-file and --key-file go together")
	}
	return g, nil
}

// stringOpt returns the flag's value when it was given, else the environment
// variable when set, else the flag's default (or def when there is no flag).
func stringOpt(cmd *cobra.Command, name, env, def string) string {
	f := cmd.Flag(name)
	if f != nil && f.Changed {
		return f.Value.String()
	}
	if v, ok := os.LookupEnv(env); ok && v != "" {
		return v
	}
	if f != nil {
		return f.DefValue
	}
	return def
}

// boolOpt is stringOpt for booleans.
func boolOpt(cmd *cobra.Command, name, env string) (bool, error) {
	s := stringOpt(cmd, name, env, "false")
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, usageErrorf("invalid --%s / %s value %q: want true or false", name, env, s)
	}
	return b, nil
}

// bearer attaches the control token to every call. It does not insist on TLS:
// a token over plaintext to a loopback node is the normal development setup.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// dial opens a (lazy) client connection to the control API. Connection failures
// surface on the first call as Unavailable.
func dial(g globals) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{
		grpc.WithUserAgent("roomcast-cli"),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes)),
	}
	if g.tls {
		cfg, err := tlsConfig(g)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	} else {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if g.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(g.token)))
	}
	cc, err := grpc.NewClient(g.addr, opts...)
	if err != nil {
		return nil, usageErrorf("invalid --addr %q: %v", g.addr, err)
	}
	return cc, nil
}

// tlsConfig builds the client TLS configuration from the TLS flags.
func tlsConfig(g globals) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: g.insecureSkipVerify} //nolint:gosec // explicit opt-in flag
	if g.caFile != "" {
		pem, err := os.ReadFile(g.caFile)
		if err != nil {
			return nil, usageErrorf("read --ca-file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usageErrorf("--ca-file %s holds no PEM certificate", g.caFile)
		}
		cfg.RootCAs = pool
	}
	if g.certFile != "" {
		cert, err := tls.LoadX509KeyPair(g.certFile, g.keyFile)
		if err != nil {
			return nil, usageErrorf("load client certificate: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// session is what a verb needs to make calls: a connection and a printer for the
// chosen output format.
type session struct {
	cc  *grpc.ClientConn
	out *printer
}

// withSession resolves the global flags, dials, and runs fn with a context bound
// by --timeout unless noTimeout (for streams that run until interrupted).
func withSession(cmd *cobra.Command, noTimeout bool, fn func(ctx context.Context, s *session) error) error {
	g, err := resolveGlobals(cmd)
	if err != nil {
		return err
	}
	cc, err := dial(g)
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx := cmd.Context()
	if !noTimeout {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, g.timeout)
		defer cancel()
	}
	return fn(ctx, &session{cc: cc, out: newPrinter(cmd.OutOrStdout(), g.json)})
}
