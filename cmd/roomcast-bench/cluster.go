package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/embedetcd"
)

// clusterNode is one node of a cluster this tool drives: its addresses and, when the
// tool started it (--local), its process (so the recover scenario can kill it).
type clusterNode struct {
	name    string
	url     string // WebSocket URL
	control string // control API address
	admin   string // admin HTTP address (/debug/pprof), when known
	proc    *proc  // nil unless started here
}

// startLocalCluster starts a cluster of n `roomcast node` processes on one embedded
// etcd (this binary re-executed as `roomcast-bench etcd`, so its CPU and memory count
// as the server's), on free 127.0.0.1 ports, and waits until every node is ready and
// owns shards. With procs > 0 every node runs with GOMAXPROCS=procs.
func startLocalCluster(ctx context.Context, bin string, n, procs, queue int, extra []string, logf *os.File) (*localServer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "roomcast-bench-etcd-")
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(2 + 5*n)
	if err != nil {
		return nil, err
	}
	etcdAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	ecmd := exec.Command(exe, "etcd", "--dir", dir, "--client-addr", etcdAddr, "--peer-addr", fmt.Sprintf("127.0.0.1:%d", ports[1]))
	ecmd.Env = os.Environ()
	ecmd.Stdout, ecmd.Stderr = logf, logf
	ep, err := startProc(ecmd)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	s := &localServer{pids: []int{ecmd.Process.Pid}, procs: []*proc{ep}, cleanup: func() { os.RemoveAll(dir) }}
	if err := waitTCP(ctx, etcdAddr, ep); err != nil {
		s.stop()
		return nil, fmt.Errorf("etcd did not start: %w", err)
	}
	secret, token := randomHex(32), randomHex(16)
	run := randomHex(3)
	for i := range n {
		addr := func(k int) string { return fmt.Sprintf("127.0.0.1:%d", ports[2+5*i+k]) }
		name := fmt.Sprintf("bench-%s-n%d", run, i)
		args := roomcastArgs(addr(0), addr(1), addr(2), secret, token, queue)
		args = append(args, "--name", name, "--etcd-endpoints", etcdAddr, "--cluster-name", "bench-"+run,
			"--gossip-addr", addr(3), "--peer-addr", addr(4),
			"--gossip-key", "bench-gossip-"+secret, "--peer-secret", "bench-peer-"+secret)
		args = append(args, extra...)
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if procs > 0 {
			cmd.Env = append(os.Environ(), "GOMAXPROCS="+strconv.Itoa(procs))
		}
		p, err := startProc(cmd)
		if err != nil {
			s.stop()
			return nil, fmt.Errorf("start roomcast node %d: %w", i, err)
		}
		s.pids = append(s.pids, cmd.Process.Pid)
		s.procs = append(s.procs, p)
		s.nodes = append(s.nodes, clusterNode{name: name, url: "ws://" + addr(0) + "/ws", control: addr(1), admin: addr(2), proc: p})
	}
	for _, nd := range s.nodes {
		if err := waitHTTP(ctx, "http://"+nd.admin+"/readyz", nd.proc); err != nil {
			s.stop()
			return nil, fmt.Errorf("node %s did not become ready: %w", nd.name, err)
		}
	}
	s.dial = dialSpec{Target: targetRoomcast, Secret: secret}
	s.pub = pubSpec{Target: targetRoomcast, Token: token}
	for _, nd := range s.nodes {
		s.dial.URLs = append(s.dial.URLs, nd.url)
		s.pub.Controls = append(s.pub.Controls, nd.control)
	}
	s.dial.URL, s.pub.Control = s.dial.URLs[0], s.pub.Controls[0]
	if err := waitClusterFormed(ctx, s.pub, n, 60*time.Second); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// freePorts returns n distinct free TCP ports of 127.0.0.1 (all listened on at once,
// so none is handed out twice).
func freePorts(n int) ([]int, error) {
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// listNodes asks the control API at addr for every node of the cluster.
func listNodes(ctx context.Context, p pubSpec, addr string) ([]*pb.NodeInfo, error) {
	cc, err := dialControl(addr)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := pb.NewControlServiceClient(cc).ListNodes(withToken(ctx, p.Token), &pb.ListNodesRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetNodes(), nil
}

// clusterFormed reports whether nodes are want active nodes that all own shards.
func clusterFormed(nodes []*pb.NodeInfo, want int) bool {
	active := 0
	for _, n := range nodes {
		if n.GetState() == pb.NodeState_NODE_STATE_ACTIVE && n.GetShards() > 0 {
			active++
		}
	}
	return active == want
}

// waitClusterFormed polls every node until each sees want active nodes owning shards
// (the shard map has settled), or timeout.
func waitClusterFormed(ctx context.Context, p pubSpec, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok := true
		for _, addr := range p.Controls {
			nodes, err := listNodes(ctx, p, addr)
			if err != nil || !clusterFormed(nodes, want) {
				ok, last = false, err
				if err == nil {
					last = fmt.Errorf("%s sees %d nodes, not %d active nodes owning shards", addr, len(nodes), want)
				}
				break
			}
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster did not form: %w", last)
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// roomOwners maps each room with the prefix to the index (in p.Controls) of the node
// that owns it, from ListRooms and ListNodes. Rooms whose owner it cannot place are
// left out.
func roomOwners(ctx context.Context, p pubSpec, prefix string) (map[string]int, error) {
	nodes, err := listNodes(ctx, p, p.Controls[0])
	if err != nil {
		return nil, err
	}
	idx := map[string]int{}
	for _, n := range nodes {
		for k, c := range p.Controls {
			if n.GetControlAddress() == c || strings.HasSuffix(n.GetControlAddress(), c[strings.LastIndex(c, ":"):]) {
				idx[n.GetName()] = k
			}
		}
	}
	cc, err := dialControl(p.Controls[0])
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	cl := pb.NewControlServiceClient(cc)
	out := map[string]int{}
	tok := ""
	for {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		resp, err := cl.ListRooms(withToken(cctx, p.Token), &pb.ListRoomsRequest{Prefix: prefix, PageSize: 1000, PageToken: tok})
		cancel()
		if err != nil {
			return out, err
		}
		for _, r := range resp.GetRooms() {
			if k, ok := idx[r.GetOwner()]; ok {
				out[r.GetName()] = k
			}
		}
		if tok = resp.GetNextPageToken(); tok == "" {
			return out, nil
		}
	}
}

// nodeProcs resolves --node-procs: -1 shares the machine's cores among n nodes
// (several nodes on one host each get their share, as a per-node container CPU
// limit gives them with Go's cgroup-aware default; without it each node would
// schedule on every core and the nodes would oversubscribe the machine).
func nodeProcs(flag, n int) int {
	if flag >= 0 {
		return flag
	}
	return max(1, runtime.NumCPU()/max(n, 1))
}

// etcdCommand runs a single-member etcd (the same embedded etcd as `roomcast dev`) until
// SIGTERM, for the local cluster: a separate process so that its cost counts as the
// server's and a node's kill -9 leaves it alone.
func etcdCommand() *cobra.Command {
	var dir, client, peer string
	cmd := &cobra.Command{
		Use:    "etcd",
		Short:  "Run the embedded etcd of a local cluster (started by run --targets cluster --local)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" || client == "" || peer == "" {
				return errors.New("--dir, --client-addr and --peer-addr are required")
			}
			e, err := embedetcd.Start("bench", dir, client, peer, nil)
			if err != nil {
				return err
			}
			defer e.Close()
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
			defer signal.Stop(sig)
			select {
			case <-sig:
			case err := <-e.Err():
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "data directory")
	cmd.Flags().StringVar(&client, "client-addr", "", "client listen address host:port")
	cmd.Flags().StringVar(&peer, "peer-addr", "", "peer listen address host:port")
	return cmd
}
