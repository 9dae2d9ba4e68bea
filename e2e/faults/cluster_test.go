package faults

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/testnode"
)

// Timings of the nodes under test: heartbeats short enough that a client notices a
// silent node within a few seconds, so scenarios stay short.
const (
	pingInterval = time.Second
	pongTimeout  = 2 * time.Second
	shards       = 256
	clusterName  = "faults"
)

// proc is one process started inside a lab namespace.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed once reaped
}

// startProc starts bin with args inside namespace ns, its output appended to logPath.
func startProc(ns, name, logPath, bin string, args ...string) (*proc, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child holds its own descriptor
	p := &proc{name: name, logPath: logPath, exited: make(chan struct{})}
	// `ip netns exec` execs bin in place, so the pid is the program's own.
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	// The reaper ends when the process does; every owner kills its processes.
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	return p, nil
}

// signal sends sig unless the process is gone.
func (p *proc) signal(sig syscall.Signal) {
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// terminate sends SIGTERM (a drain) and reports whether the process exited within
// bound.
func (p *proc) terminate(bound time.Duration) bool {
	p.signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return true
	case <-time.After(bound):
		return false
	}
}

// kill sends SIGKILL and waits until the process is reaped. It is idempotent.
func (p *proc) kill() {
	p.signal(syscall.SIGKILL)
	<-p.exited
}

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// tail returns the last n bytes of the process's log.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// node is one slot of the cluster: a namespace and the current `roomcast node`
// process in it (a restart starts a new incarnation with a new name in the same slot).
type node struct {
	slot    int
	ns      string
	ip      string
	proc    *proc
	control pb.ControlServiceClient
	conn    *grpc.ClientConn
	incarn  int
}

func (n *node) wsURL() string       { return "ws://" + n.ip + ":8080/ws" }
func (n *node) name() string        { return n.proc.name }
func (n *node) controlAddr() string { return n.ip + ":9090" }

// cluster is etcd plus N roomcast nodes, each in its own namespace of a lab.
type cluster struct {
	t      *testing.T
	lab    *netLab
	dir    string
	etcd   *proc
	etcdN  int
	etcdNS string
	nodes  []*node
	mu     sync.Mutex // guards proc fields during restarts
}

// newCluster builds a lab with an etcd and n nodes and waits until they form one
// cluster with every shard owned. Everything is torn down in t.Cleanup.
func newCluster(t *testing.T, n int) *cluster {
	t.Helper()
	requireLab(t)
	c := &cluster{t: t, lab: newLab(t), dir: t.TempDir()}
	c.etcdNS = c.lab.addNS(t, "etcd", etcdIP)
	for i := range n {
		c.nodes = append(c.nodes, &node{slot: i, ip: nodeIP(i), ns: c.lab.addNS(t, fmt.Sprintf("n%d", i), nodeIP(i))})
	}
	// Registered after the lab's cleanup, so it runs before it: processes die first.
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			if nd.proc != nil {
				nd.proc.kill()
				if t.Failed() {
					t.Logf("log of %s (tail):\n%s", nd.proc.name, nd.proc.tail(3000))
				}
			}
			if nd.conn != nil {
				_ = nd.conn.Close()
			}
		}
		if c.etcd != nil {
			c.etcd.kill()
		}
	})
	c.startEtcd()
	for _, nd := range c.nodes {
		c.startNode(nd)
	}
	if c.waitOneCluster(30*time.Second, len(c.nodes)); t.Failed() {
		t.FailNow()
	}
	return c
}

// startEtcd starts (or restarts, on the same data directory) the etcd process and
// waits until it says it is ready.
func (c *cluster) startEtcd() {
	t := c.t
	t.Helper()
	c.etcdN++
	logPath := filepath.Join(c.dir, "etcd.log")
	p, err := startProc(c.etcdNS, fmt.Sprintf("etcd#%d", c.etcdN), logPath, etcdBin,
		"--dir", filepath.Join(c.dir, "etcd-data"), "--client", etcdIP+":2379", "--peer", etcdIP+":2380")
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	c.etcd = p
	deadline := time.Now().Add(30 * time.Second)
	for {
		if strings.Count(p.tail(1<<20), "ready") >= c.etcdN {
			return
		}
		if !p.alive() || time.Now().After(deadline) {
			t.Fatalf("etcd did not start:\n%s", p.tail(3000))
		}
		time.Sleep(20 * time.Millisecond) // polling the log; the deadline is the bound
	}
}

// startNode starts a new incarnation of the node in slot nd.
func (c *cluster) startNode(nd *node) {
	t := c.t
	t.Helper()
	c.mu.Lock()
	nd.incarn++
	name := fmt.Sprintf("n%d-%d", nd.slot, nd.incarn)
	c.mu.Unlock()
	var join []string
	for _, o := range c.nodes {
		if o != nd {
			join = append(join, o.ip+":7946")
		}
	}
	p, err := startProc(nd.ns, name, filepath.Join(c.dir, name+".log"), roomcastBin, "node",
		"--name", name,
		"--client-addr", nd.ip+":8080",
		"--control-addr", nd.ip+":9090",
		"--admin-addr", nd.ip+":9100",
		"--gossip-addr", nd.ip+":7946",
		"--peer-addr", nd.ip+":7947",
		"--join", strings.Join(join, ","),
		"--etcd-endpoints", etcdIP+":2379",
		"--cluster-name", clusterName,
		"--gossip-key", testnode.ClusterKey,
		"--peer-secret", testnode.ClusterSecret,
		"--jwt-secret", testnode.Secret,
		"--control-token", testnode.ControlToken,
		"--ping-interval", pingInterval.String(),
		"--pong-timeout", pongTimeout.String(),
		"--drain-timeout", "4s",
		"--shards", fmt.Sprint(shards),
		"--log-level", "info",
	)
	if err != nil {
		t.Fatalf("start node %s: %v", name, err)
	}
	if nd.conn == nil {
		conn, err := grpc.NewClient(nd.controlAddr(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithPerRPCCredentials(bearer(testnode.ControlToken)))
		if err != nil {
			p.kill()
			t.Fatalf("control client: %v", err)
		}
		nd.conn, nd.control = conn, pb.NewControlServiceClient(conn)
	}
	c.mu.Lock()
	nd.proc = p
	c.mu.Unlock()
}

// live returns the nodes whose process runs.
func (c *cluster) live() []*node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*node
	for _, nd := range c.nodes {
		if nd.proc != nil && nd.proc.alive() {
			out = append(out, nd)
		}
	}
	return out
}

// clusterView is what one node's ListNodes says.
type clusterView struct {
	names  []string
	shards int
	err    error
}

func (c *cluster) view(nd *node) clusterView {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := nd.control.ListNodes(ctx, &pb.ListNodesRequest{})
	v := clusterView{err: err}
	for _, info := range r.GetNodes() {
		v.names = append(v.names, info.GetName()+"/"+strings.TrimPrefix(info.GetState().String(), "NODE_STATE_"))
		v.shards += int(info.GetShards())
	}
	return v
}

// oneCluster reports whether every live node lists exactly the live nodes, all
// active, and every shard owned.
func (c *cluster) oneCluster() (bool, string) {
	live := c.live()
	var want []string
	for _, nd := range live {
		want = append(want, nd.name()+"/ACTIVE")
	}
	wantS := strings.Join(want, " ")
	var state []string
	ok := true
	for _, nd := range live {
		v := c.view(nd)
		got := strings.Join(v.names, " ")
		if v.err != nil || got != wantS || v.shards != shards {
			ok = false
		}
		state = append(state, fmt.Sprintf("%s sees [%s] %d shards %v", nd.name(), got, v.shards, v.err))
	}
	return ok, strings.Join(state, "; ")
}

// waitOneCluster waits until oneCluster holds with n live nodes and returns how long
// that took; past bound it fails the test (and lets it go on).
func (c *cluster) waitOneCluster(bound time.Duration, n int) time.Duration {
	c.t.Helper()
	start := time.Now()
	poll(c.t, bound, fmt.Sprintf("one cluster of %d nodes with %d shards owned", n, shards), func() (bool, string) {
		if l := len(c.live()); l != n {
			return false, fmt.Sprintf("%d live processes", l)
		}
		return c.oneCluster()
	})
	return time.Since(start)
}

// owner returns the slot of the node owning room, by ListRooms through via.
func (c *cluster) owner(via *node, room string) (*node, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	r, err := via.control.ListRooms(ctx, &pb.ListRoomsRequest{Prefix: room})
	if err != nil {
		return nil, err
	}
	for _, rs := range r.GetRooms() {
		if rs.GetName() == room {
			for _, nd := range c.live() {
				if nd.name() == rs.GetOwner() {
					return nd, nil
				}
			}
			return nil, fmt.Errorf("owner %q of %s is not a live node", rs.GetOwner(), room)
		}
	}
	return nil, fmt.Errorf("room %s not listed", room)
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return false }

// pollUntil polls cond until it holds or bound passes (a failure bound, not a pace),
// then fails the test and stops it.
func pollUntil(t testing.TB, bound time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	if !poll(t, bound, what, cond) {
		t.FailNow()
	}
}

// poll is pollUntil that lets the test go on: it reports the failure and returns
// false.
func poll(t testing.TB, bound time.Duration, what string, cond func() (bool, string)) bool {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		ok, state := cond()
		if ok {
			return true
		}
		if time.Now().After(deadline) {
			t.Errorf("%s within %v: last state: %s", what, bound, state)
			return false
		}
		time.Sleep(50 * time.Millisecond) // polling a condition; the deadline is the bound
	}
}
