package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/roomcast/roomcast/internal/app"
	"github.com/roomcast/roomcast/internal/embedetcd"
)

func devCommand() *cobra.Command {
	var nodes, offset int
	var host, dataDir string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local cluster: an embedded etcd and N nodes on consecutive ports",
		Long: `Run a whole roomcast cluster in one process for trying things out: a real
embedded etcd and N nodes in development mode (generated credentials, every origin
allowed, the demo at / on every node). Node i (from 0) uses:

  WebSocket + demo   8080+o+i        control API   9090+o+i      admin   9100+o+i
  gossip             7946+2i       peer links    7947+2i
  etcd               2379 (clients), 2380 (peers)

The cluster is named "dev": its live configuration is at /roomcast/dev/config
('roomcast config get --etcd-endpoints 127.0.0.1:2379 --cluster-name dev').
Ctrl-C drains every node and stops.`,
		Example: `  roomcast dev --nodes 3
  # then: open http://localhost:8080 and http://localhost:8081, publish on a third node:
  roomcast publish chat:lobby '{"text":"hi"}' --addr localhost:9092`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodes < 1 || nodes > 10 {
				return usageError{errors.New("--nodes must be 1-10")}
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			return runDev(ctx, devPlan{nodes: nodes, host: host, dataDir: dataDir, offset: offset})
		},
	}
	cmd.Flags().IntVar(&nodes, "nodes", 3, "how many nodes (1-10)")
	cmd.Flags().StringVar(&host, "host", "127.0.0.1", "address every listener binds to")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "etcd data directory (default: a fresh temporary one, removed at exit)")
	cmd.Flags().IntVar(&offset, "port-offset", 0, "add this to every port above (to run beside something else)")
	return cmd
}

// devPlan says what `roomcast dev` runs.
type devPlan struct {
	nodes   int
	host    string
	dataDir string
	offset  int           // added to every port
	ready   chan<- string // if set, receives the control address of each node as it starts
}

func runDev(ctx context.Context, p devPlan) error {
	n, host, dataDir, o := p.nodes, p.host, p.dataDir, p.offset
	log := newLogger("info", "text")
	if dataDir == "" {
		d, err := os.MkdirTemp("", "roomcast-dev-etcd-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dataDir = d
	}
	etcdAddr := fmt.Sprintf("%s:%d", host, 2379+o)
	etcd, err := embedetcd.Start("roomcast-dev", dataDir, etcdAddr, fmt.Sprintf("%s:%d", host, 2380+o), nil)
	if err != nil {
		return err
	}
	defer etcd.Close()

	secret, token := randomString(32), randomString(16)
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	errc := make(chan error, n)
	for i := range n {
		cfg := app.Defaults()
		cfg.Dev, cfg.Quiet = true, true
		cfg.Name = fmt.Sprintf("dev%d", i)
		cfg.JWTSecret, cfg.ControlToken = secret, []string{token}
		cfg.ClientAddr = fmt.Sprintf("%s:%d", host, 8080+o+i)
		cfg.ControlAddr = fmt.Sprintf("%s:%d", host, 9090+o+i)
		cfg.AdminAddr = fmt.Sprintf("%s:%d", host, 9100+o+i)
		cfg.GossipAddr = fmt.Sprintf("%s:%d", host, 7946+o+2*i)
		cfg.PeerAddr = fmt.Sprintf("%s:%d", host, 7947+o+2*i)
		cfg.EtcdEndpoints = []string{etcdAddr}
		cfg.ClusterName = "dev"
		cfg.GossipKey, cfg.PeerSecret = randomStringFrom(secret, "gossip"), randomStringFrom(secret, "peer")
		a, err := app.New(cfg, log)
		if err != nil {
			stop()
			wg.Wait()
			return fmt.Errorf("node %d: %w", i, err)
		}
		if p.ready != nil {
			_, ctl, _ := a.Addrs()
			p.ready <- ctl
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Run(ctx); err != nil {
				errc <- err
				stop()
			}
		}()
	}
	tok, _ := app.DevToken(secret, "alice", 24*time.Hour)
	fmt.Fprintf(os.Stderr, `
  roomcast dev: %d nodes, etcd at %s — NOT for production
    WebSocket + demo  http://%s:%d … :%d     control API  %s:%d … :%d
    JWT secret:       %s
    control token:    %s
    token for alice:  %s
  export ROOMCAST_JWT_SECRET=%s ROOMCAST_CONTROL_TOKEN=%s

`, n, etcdAddr, host, 8080+o, 8080+o+n-1, host, 9090+o, 9090+o+n-1, secret, token, tok, secret, token)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// randomStringFrom derives a per-purpose development secret from the shared one, so
// every dev node agrees on it.
func randomStringFrom(secret, purpose string) string { return purpose + "-" + secret }
