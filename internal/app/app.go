// Package app assembles a roomcast node from its parts — the mesh (room owners), the
// node (WebSocket edge), the control API and the admin endpoints — and runs it until
// its context ends, then drains it. It is the one place that knows every concrete
// type; the parts only know each other's small interfaces.
//
// The live part of the configuration (namespaces, token keys) changes without a
// restart: Reload applies a node's re-read settings (SIGHUP), and in cluster mode Run
// follows the cluster's live config document in etcd (package liveconfig) with one
// goroutine that it stops before draining. Every change is validated whole, with the
// document over the node's own settings, and applied under one lock or not at all.
//
// An App is started once (New, then Run) and is not reused. Reload and
// ConfigRevision may be called from any goroutine.
package app

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/roomcast/roomcast/control"
	"github.com/roomcast/roomcast/fabric"
	"github.com/roomcast/roomcast/internal/demo"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/wsio"
	"github.com/roomcast/roomcast/mesh"
	"github.com/roomcast/roomcast/node"
)

// Version is the roomcast version, set at build time with -ldflags.
var Version = "dev"

// The mesh is the fabric for both the edge and the control API, and the edge is the
// mesh's view of local connections.
var (
	_ node.Fabric    = (*mesh.Mesh)(nil)
	_ control.Fabric = (*mesh.Mesh)(nil)
	_ mesh.Edge      = (*node.Node)(nil)
)

// App is one running node.
type App struct {
	cfg        Config
	log        *slog.Logger
	reg        *prometheus.Registry
	namespaces *fabric.Namespaces
	verifier   *jwtauth.Verifier
	mesh       *mesh.Mesh
	node       *node.Node
	control    *control.Server

	clientLn, controlLn, adminLn net.Listener
	clientSrv, adminSrv          *http.Server

	etcd *clientv3.Client // cluster mode only
	live live             // namespaces and token settings: the file's, and etcd's over them

	draining atomic.Bool
}

// New builds a node from cfg and binds its listeners, so Addrs is valid before Run.
func New(cfg Config, log *slog.Logger) (*App, error) {
	if log == nil {
		log = slog.Default()
	}
	if cfg.Dev {
		if err := applyDev(&cfg, log); err != nil {
			return nil, err
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Name == "" {
		cfg.Name = defaultName()
	}
	// The node's own logger adds its name; the app's lines say it here.
	a := &App{cfg: cfg, log: log, reg: prometheus.NewRegistry()}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	a.live.register(a.reg)
	a.live.file = cfg.liveDocument()
	if err := a.live.file.Validate(); err != nil {
		return nil, err
	}
	// In cluster mode the cluster's live config document is read before anything is
	// built, so the node starts with it (and the file only needs what it does not set).
	if len(cfg.EtcdEndpoints) > 0 {
		if err := a.dialEtcd(); err != nil {
			return nil, err
		}
		if err := a.readLiveConfig(); err != nil {
			a.closeEtcd()
			return nil, err
		}
	}
	s, err := settings(a.live.file, a.live.remote)
	if err != nil {
		a.closeEtcd()
		return nil, err
	}
	if a.namespaces, err = fabric.NewNamespaces(s.Namespaces); err != nil {
		a.closeEtcd()
		return nil, fmt.Errorf("namespaces: %w", err)
	}
	if a.verifier, err = jwtauth.New(s.JWT); err != nil {
		a.closeEtcd()
		return nil, fmt.Errorf("jwt: %w", err)
	}

	if err := a.listen(); err != nil {
		a.closeEtcd()
		return nil, err
	}
	if err := a.build(); err != nil {
		a.closeListeners()
		a.closeEtcd()
		return nil, err
	}
	return a, nil
}

func (a *App) listen() error {
	var err error
	if a.clientLn, err = net.Listen("tcp", a.cfg.ClientAddr); err != nil {
		return fmt.Errorf("client listener: %w", err)
	}
	if a.controlLn, err = net.Listen("tcp", a.cfg.ControlAddr); err != nil {
		a.closeListeners()
		return fmt.Errorf("control listener: %w", err)
	}
	if a.adminLn, err = net.Listen("tcp", a.cfg.AdminAddr); err != nil {
		a.closeListeners()
		return fmt.Errorf("admin listener: %w", err)
	}
	return nil
}

func (a *App) closeListeners() {
	for _, l := range []net.Listener{a.clientLn, a.controlLn, a.adminLn} {
		if l != nil {
			_ = l.Close()
		}
	}
}

func (a *App) build() error {
	cfg := a.cfg
	cluster, err := a.clusterConfig()
	if err != nil {
		return err
	}
	a.mesh, err = mesh.New(mesh.Config{
		Cluster:     cluster,
		Node:        cfg.Name,
		Namespaces:  a.namespaces,
		Shards:      cfg.Shards,
		Version:     Version,
		ClientAddr:  a.clientLn.Addr().String(),
		ControlAddr: a.controlLn.Addr().String(),
		Logger:      a.log,
		Registerer:  a.reg,
	})
	if err != nil {
		a.closeEtcd()
		return fmt.Errorf("mesh: %w", err)
	}
	mode, err := transportMode(cfg.Transport)
	if err != nil {
		return err
	}
	a.node, err = node.New(node.Config{
		Name:       cfg.Name,
		Fabric:     a.mesh,
		Verifier:   a.verifier,
		Namespaces: a.namespaces,
		Transport: wsio.Config{
			Mode:             mode,
			WriteBatching:    writeBatching(cfg.WriteBatching),
			MaxMessageBytes:  cfg.MaxFrameBytes,
			MaxQueueBytes:    cfg.MaxQueueBytes,
			MaxQueueMessages: cfg.MaxQueueMessages,
			Workers:          cfg.Workers,
			FlushWorkers:     cfg.FlushWorkers,
			Logger:           a.log,
			Registerer:       a.reg,
		},
		AllowedOrigins:  cfg.AllowedOrigins,
		AuthTimeout:     cfg.AuthTimeout,
		PingInterval:    cfg.PingInterval,
		PongTimeout:     cfg.PongTimeout,
		MaxRoomsPerConn: cfg.MaxRoomsPerConn,
		MaxConnsPerUser: perUserLimit(cfg.MaxConnsPerUser),
		CommandRate:     cfg.CommandRate,
		CommandBurst:    cfg.CommandBurst,
		ConnectRate:     cfg.ConnectRate,
		DrainTimeout:    cfg.DrainTimeout,
		Logger:          a.log,
		Registerer:      a.reg,
	})
	if err != nil {
		_ = a.mesh.Close()
		return fmt.Errorf("node: %w", err)
	}
	a.mesh.Attach(a.node)

	tlsCfg, err := controlTLS(cfg)
	if err != nil {
		_ = a.node.Close()
		_ = a.mesh.Close()
		return err
	}
	a.control, err = control.New(control.Config{
		Fabric:       a.mesh,
		Tokens:       cfg.ControlToken,
		Insecure:     cfg.ControlInsecure,
		TLS:          tlsCfg,
		Reflection:   cfg.ControlReflection,
		MaxRecvBytes: cfg.ControlMaxRecv,
		Logger:       a.log,
		Registerer:   a.reg,
	})
	if err != nil {
		_ = a.node.Close()
		_ = a.mesh.Close()
		return fmt.Errorf("control: %w", err)
	}

	a.clientSrv = &http.Server{Handler: a.clientMux(), ReadHeaderTimeout: cfg.ReadHeaderTimeout, ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelDebug)}
	a.adminSrv = &http.Server{Handler: a.adminMux(), ReadHeaderTimeout: cfg.ReadHeaderTimeout}
	return nil
}

// Addrs returns the bound client (WebSocket), control (gRPC) and admin (HTTP) addresses.
func (a *App) Addrs() (client, control, admin string) {
	return a.clientLn.Addr().String(), a.controlLn.Addr().String(), a.adminLn.Addr().String()
}

// Name returns the node's name.
func (a *App) Name() string { return a.cfg.Name }

// Config returns the effective configuration (after dev-mode defaults).
func (a *App) Config() Config { return a.cfg }

// Run serves until ctx is done, then drains: readiness turns false, clients are told to
// reconnect elsewhere (close code 4000) over at most DrainTimeout, in-flight control
// calls finish, and everything stops. It returns the first serving error, if any.
func (a *App) Run(ctx context.Context) error {
	errc := make(chan error, 3)
	serve := func(name string, f func() error) {
		if err := f(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			errc <- fmt.Errorf("%s: %w", name, err)
			return
		}
		errc <- nil
	}
	go serve("client http", func() error { return a.clientSrv.Serve(a.clientLn) })
	go serve("control grpc", func() error { return a.control.Serve(a.controlLn) })
	go serve("admin http", func() error { return a.adminSrv.Serve(a.adminLn) })
	// The live config follower runs for the whole of Run and is stopped before the
	// drain, so a change arriving meanwhile never races the shutdown.
	liveCtx, stopLive := context.WithCancel(ctx)
	liveDone := make(chan struct{})
	go func() {
		defer close(liveDone)
		if a.live.store != nil {
			a.followLiveConfig(liveCtx)
		}
	}()
	client, ctl, admin := a.Addrs()
	a.log.Info("roomcast node started", "node", a.cfg.Name, "version", Version, "client", client, "ws_path", a.cfg.WSPath,
		"control", ctl, "admin", admin, "epoch", a.mesh.Epoch(), "live_config_revision", a.ConfigRevision())

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		if runErr != nil {
			a.log.Error("serving failed; shutting down", "err", runErr)
		}
	}
	stopLive()
	<-liveDone
	a.shutdown()
	return runErr
}

// shutdown drains and stops everything; see Run.
func (a *App) shutdown() {
	start := time.Now()
	a.draining.Store(true)
	a.control.SetServing(false)
	a.mesh.SetDraining(true)
	a.log.Info("draining", "timeout", a.cfg.DrainTimeout)

	dctx, cancel := context.WithTimeout(context.Background(), a.cfg.DrainTimeout)
	defer cancel()
	// Shards first, clients second: once the other nodes own this node's rooms, with
	// their history and offsets, its clients reconnect elsewhere and recover there.
	hctx, hcancel := context.WithTimeout(dctx, a.cfg.DrainTimeout/2)
	if err := a.mesh.HandOver(hctx); err != nil {
		a.log.Warn("shard handover did not finish", "err", err)
	}
	hcancel()
	if err := a.node.Drain(dctx); err != nil {
		a.log.Warn("drain did not finish", "err", err)
	}
	stopped := make(chan struct{})
	go func() { a.control.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-dctx.Done():
		a.control.Stop()
		<-stopped
	}
	_ = a.clientSrv.Shutdown(dctx)
	_ = a.node.Close()
	_ = a.mesh.Close()
	a.closeEtcd()
	_ = a.adminSrv.Shutdown(dctx)
	a.closeListeners()
	a.log.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
}

func (a *App) clientMux() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+a.cfg.WSPath, a.node)
	if a.cfg.Dev {
		// Development mode: the demo app at "/" and tokens for it.
		mux.HandleFunc("GET /dev/token", a.devToken)
		mux.Handle("GET /", demo.Handler())
		return mux
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "roomcast node %s: WebSocket endpoint at %s\n", a.cfg.Name, a.cfg.WSPath)
	})
	return mux
}

func (a *App) adminMux() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if a.draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// devToken mints a token with every right for ?user= (development mode only).
func (a *App) devToken(w http.ResponseWriter, r *http.Request) {
	user := r.URL.Query().Get("user")
	if user == "" || len(user) > 64 {
		http.Error(w, "user query parameter required (at most 64 bytes)", http.StatusBadRequest)
		return
	}
	tok, err := DevToken(a.cfg.JWTSecret, user, time.Hour)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]string{"token": tok, "user": user})
}

// DevToken mints an HS256 token for user with every right ("*" patterns), for
// development and tests.
func DevToken(secret, user string, ttl time.Duration) (string, error) {
	info, _ := json.Marshal(map[string]string{"name": user})
	return jwtauth.Mint("HS256", "", []byte(secret), jwtauth.Claims{
		User: user, Info: info,
		Join: []string{"*"}, Publish: []string{"*"}, Read: []string{"*"},
	}, ttl)
}

func applyDev(cfg *Config, log *slog.Logger) error {
	if cfg.JWTSecret == "" && len(cfg.JWTKeys) == 0 {
		cfg.JWTSecret = randomHex(32)
	}
	if len(cfg.ControlToken) == 0 && !cfg.ControlInsecure {
		cfg.ControlToken = []string{randomHex(16)}
	}
	if len(cfg.AllowedOrigins) == 0 {
		cfg.AllowedOrigins = []string{"*"}
	}
	tok := "(configure jwt_secret to mint one)"
	if cfg.JWTSecret != "" {
		t, err := DevToken(cfg.JWTSecret, "alice", 24*time.Hour)
		if err != nil {
			return err
		}
		tok = t
	}
	ctl := "(none: --control-insecure)"
	if len(cfg.ControlToken) > 0 {
		ctl = cfg.ControlToken[0]
	}
	if cfg.Quiet {
		return nil
	}
	fmt.Fprintf(os.Stderr, `
  roomcast development mode — NOT for production
    JWT secret (HS256):  %s
    control token:       %s
    token for "alice":   %s
    more tokens:         curl 'http://localhost%s/dev/token?user=bob'
  export ROOMCAST_JWT_SECRET=%s ROOMCAST_CONTROL_TOKEN=%s

`, cfg.JWTSecret, ctl, tok, portOf(cfg.ClientAddr), cfg.JWTSecret, ctl)
	log.Warn("development mode: generated credentials printed, every origin allowed")
	return nil
}

func portOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return addr[i:]
	}
	return addr
}

func controlTLS(cfg Config) (*tls.Config, error) {
	if cfg.ControlTLSCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.ControlTLSCert, cfg.ControlTLSKey)
	if err != nil {
		return nil, fmt.Errorf("control tls: %w", err)
	}
	t := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if cfg.ControlClientCA != "" {
		pem, err := os.ReadFile(cfg.ControlClientCA)
		if err != nil {
			return nil, fmt.Errorf("control client ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.New("control client ca: no certificate found")
		}
		t.ClientCAs = pool
		t.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return t, nil
}

// perUserLimit maps the config's "0 means unlimited" to the node's "negative means
// unlimited" (the node treats 0 as "use the default").
func perUserLimit(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// writeBatching maps the validated write_batching setting.
func writeBatching(s string) wsio.WriteBatching {
	if s == "off" {
		return wsio.BatchOff
	}
	return wsio.BatchAuto
}

func transportMode(s string) (wsio.Mode, error) {
	switch s {
	case "", "auto":
		return wsio.ModeAuto, nil
	case "epoll":
		return wsio.ModeEpoll, nil
	case "goroutine":
		return wsio.ModeGoroutine, nil
	}
	return 0, fmt.Errorf("unknown transport %q", s)
}

func defaultName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "node"
	}
	h = strings.Map(func(r rune) rune {
		if r == '@' || r == ' ' {
			return '-'
		}
		return r
	}, h)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return h + "-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// clusterConfig builds the mesh's cluster settings, or nil for a standalone node.
func (a *App) clusterConfig() (*mesh.ClusterConfig, error) {
	cfg := a.cfg
	if len(cfg.EtcdEndpoints) == 0 {
		return nil, nil
	}
	host, port, err := net.SplitHostPort(cfg.GossipAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q: %w", cfg.GossipAddr, err)
	}
	gport, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("gossip port %q: %w", port, err)
	}
	// The first key encrypts; the others are only accepted (rotation).
	keys := make([][]byte, 0, 1+len(cfg.GossipOldKeys))
	for _, k := range append([]string{cfg.GossipKey}, cfg.GossipOldKeys...) {
		sum := sha256.Sum256([]byte(k))
		keys = append(keys, sum[:])
	}
	return &mesh.ClusterConfig{
		Etcd:        a.etcd,
		Name:        cfg.ClusterName,
		GossipAddr:  host,
		GossipPort:  gport,
		GossipKeys:  keys,
		Seeds:       cfg.Join,
		PeerAddr:    cfg.PeerAddr,
		Advertise:   cfg.AdvertiseHost,
		PeerSecrets: [][]byte{[]byte(cfg.PeerSecret)},
	}, nil
}

// dialEtcd creates the etcd client of a cluster member.
func (a *App) dialEtcd() error {
	c, err := clientv3.New(clientv3.Config{
		Endpoints: a.cfg.EtcdEndpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		// gRPC's reconnect backoff grows to 120 s: after a long partition from etcd a
		// node would wait up to a minute before even trying again, fenced all along.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		})},
	})
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	a.etcd = c
	return nil
}

func (a *App) closeEtcd() {
	if a.etcd != nil {
		_ = a.etcd.Close()
		a.etcd = nil
	}
}
