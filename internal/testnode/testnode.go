// Package testnode runs a real roomcast node in-process for tests: the same wiring as
// `roomcast node` (mesh, WebSocket edge, control API, admin HTTP) on 127.0.0.1 ports,
// with an authenticated control client and a token minter.
//
// A Node is used from one test goroutine; its fields are read-only after Start.
package testnode

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/app"
	"github.com/roomcast/roomcast/internal/jwtauth"
)

// Secret is the HS256 secret every test node trusts.
const Secret = "testnode-secret-0123456789abcdef0123456789"

// ControlToken is the control API bearer token every test node accepts.
const ControlToken = "testnode-control-token"

// Options tune a test node.
type Options struct {
	// Namespaces replace the default test namespaces: "chat" (presence, join/leave,
	// history 100, client publish), "news" (history 1000, backend publish only) and ""
	// (messages only, client publish).
	Namespaces []fabric.Namespace
	// Etcd, when set, makes the node a cluster member using these etcd endpoints
	// (gossip and peer links on free 127.0.0.1 ports; nodes find each other through
	// etcd). Start several nodes with the same endpoints to form a cluster.
	Etcd []string
	// Configure may change anything before the node starts.
	Configure func(*app.Config)
}

// ClusterKey and ClusterSecret are the gossip key and peer secret of test clusters.
const (
	ClusterKey    = "testnode-gossip-key-0123456789"
	ClusterSecret = "testnode-peer-secret-0123456789"
)

// DefaultNamespaces are the namespaces of a test node unless Options says otherwise.
func DefaultNamespaces() []fabric.Namespace {
	return []fabric.Namespace{
		{Name: "", ClientPublish: true},
		{Name: "chat", Presence: true, JoinLeave: true, HistorySize: 100, HistoryTTL: time.Hour, ClientPublish: true},
		{Name: "news", HistorySize: 1000, HistoryTTL: time.Hour},
	}
}

// Node is a running test node.
type Node struct {
	// WSURL is the WebSocket endpoint, ws://127.0.0.1:PORT/ws.
	WSURL string
	// HTTPURL is the client port's base URL, http://127.0.0.1:PORT.
	HTTPURL string
	// ControlAddr is the control API address.
	ControlAddr string
	// AdminURL is the admin HTTP base URL.
	AdminURL string
	// ControlToken is the control API bearer token.
	ControlToken string
	// Control is a control API client that sends ControlToken.
	Control pb.ControlServiceClient
	// Name is the node's name.
	Name string

	mu     sync.Mutex // guards the incarnation below against concurrent Stop calls
	cfg    app.Config
	app    *app.App
	cancel context.CancelFunc
	done   chan error
	conn   *grpc.ClientConn
}

// Start runs a node on fresh 127.0.0.1 ports; t.Cleanup stops it.
func Start(t testing.TB, opts Options) *Node {
	t.Helper()
	cfg := app.Defaults()
	cfg.Name = "test-" + randomSuffix()
	cfg.ClientAddr, cfg.ControlAddr, cfg.AdminAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.JWTSecret = Secret
	cfg.ControlToken = []string{ControlToken}
	cfg.Namespaces = opts.Namespaces
	if cfg.Namespaces == nil {
		cfg.Namespaces = DefaultNamespaces()
	}
	cfg.DrainTimeout = 5 * time.Second
	cfg.Shards = 16
	if len(opts.Etcd) > 0 {
		cfg.EtcdEndpoints = opts.Etcd
		cfg.ClusterName = "test" // one etcd per test cluster
		cfg.GossipAddr, cfg.PeerAddr = "127.0.0.1:0", "127.0.0.1:0"
		cfg.GossipKey, cfg.PeerSecret = ClusterKey, ClusterSecret
	}
	if opts.Configure != nil {
		opts.Configure(&cfg)
	}
	n := &Node{ControlToken: ControlToken}
	n.start(t, cfg)
	t.Cleanup(n.Stop)
	return n
}

func (n *Node) start(t testing.TB, cfg app.Config) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("ROOMCAST_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	a, err := app.New(cfg, log)
	if err != nil {
		t.Fatalf("testnode: start: %v", err)
	}
	client, control, admin := a.Addrs()
	// Keep the bound ports, so Restart comes back on the same addresses.
	cfg.ClientAddr, cfg.ControlAddr, cfg.AdminAddr = client, control, admin
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	conn, err := grpc.NewClient(control,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearer(ControlToken)))
	if err != nil {
		cancel()
		<-done
		t.Fatalf("testnode: control client: %v", err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.WSURL, n.HTTPURL = "ws://"+client+cfg.WSPath, "http://"+client
	n.ControlAddr, n.AdminURL, n.ControlToken = control, "http://"+admin, ControlToken
	n.Control, n.Name = pb.NewControlServiceClient(conn), cfg.Name
	n.cfg, n.app, n.cancel, n.done, n.conn = cfg, a, cancel, done, conn
}

// Stop drains and stops the node. It is idempotent and may be called from several
// goroutines.
func (n *Node) Stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cancel == nil {
		return
	}
	n.cancel()
	<-n.done
	_ = n.conn.Close()
	n.cancel = nil
}

// Restart stops the node and starts it again on the same ports (a new incarnation:
// new epoch, no rooms, no connections).
func (n *Node) Restart(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	cfg := n.cfg
	n.mu.Unlock()
	n.Stop()
	n.start(t, cfg)
}

// App returns the running app.
func (n *Node) App() *app.App { return n.app }

// Token mints an HS256 token for user. Empty Join, Publish and Read mean "*"; a zero
// ExpiresAt means one hour from now.
func (n *Node) Token(t testing.TB, user string, c jwtauth.Claims) string {
	t.Helper()
	c.User = user
	if c.Join == nil {
		c.Join = []string{"*"}
	}
	if c.Publish == nil {
		c.Publish = []string{"*"}
	}
	if c.Read == nil {
		c.Read = []string{"*"}
	}
	ttl := time.Hour
	if !c.ExpiresAt.IsZero() {
		ttl = time.Until(c.ExpiresAt)
	}
	tok, err := jwtauth.Mint("HS256", "", []byte(Secret), c, ttl)
	if err != nil {
		t.Fatalf("testnode: mint token: %v", err)
	}
	return tok
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

func randomSuffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
