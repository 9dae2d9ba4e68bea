package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// localServer is a server this tool started (local mode) with what it takes to drive it.
type localServer struct {
	dial  dialSpec
	pub   pubSpec
	pids  []int
	procs []*proc
	nodes []clusterNode // a cluster's nodes (targets cluster and socketio2)
	// cleanup, when set, runs after every process has stopped.
	cleanup func()
}

// proc is a started process and the goroutine that reaps it.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
}

func startProc(cmd *exec.Cmd) (*proc, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to every process it started (in reverse order) and waits; a
// process still running after the grace period is killed.
func (s *localServer) stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if s.cleanup != nil {
		s.cleanup()
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// findRoomcast finds the roomcast binary: the flag, then next to this executable, then
// PATH.
func findRoomcast(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "roomcast")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("roomcast")
	if err != nil {
		return "", fmt.Errorf("no roomcast binary: build it (go build -o bin/roomcast ./cmd/roomcast) and pass --roomcast-bin")
	}
	return p, nil
}

// startLocalRoomcast starts `roomcast node --dev` on free 127.0.0.1 ports with the
// limits a load test needs raised, and waits until it is ready.
func startLocalRoomcast(ctx context.Context, bin string, queue int, extra []string, logf *os.File) (*localServer, error) {
	ports := make([]int, 3)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	secret, token := randomHex(32), randomHex(16)
	client := fmt.Sprintf("127.0.0.1:%d", ports[0])
	control := fmt.Sprintf("127.0.0.1:%d", ports[1])
	admin := fmt.Sprintf("127.0.0.1:%d", ports[2])
	args := roomcastArgs(client, control, admin, secret, token, queue)
	args = append(args, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := startProc(cmd)
	if err != nil {
		return nil, fmt.Errorf("start roomcast: %w", err)
	}
	s := &localServer{
		dial:  dialSpec{Target: targetRoomcast, URL: "ws://" + client + "/ws", Secret: secret},
		pub:   pubSpec{Target: targetRoomcast, Control: control, Token: token},
		pids:  []int{cmd.Process.Pid},
		procs: []*proc{p},
		nodes: []clusterNode{{name: "roomcast", url: "ws://" + client + "/ws", control: control, admin: admin, proc: p}},
	}
	if err := waitHTTP(ctx, "http://"+admin+"/readyz", p); err != nil {
		s.stop()
		return nil, fmt.Errorf("roomcast did not become ready: %w", err)
	}
	return s, nil
}

// roomcastArgs are the `roomcast node` flags of a local node: development mode on the
// given addresses, with the limits a load test needs raised.
func roomcastArgs(client, control, admin, secret, token string, queue int) []string {
	return []string{"node", "--dev",
		"--client-addr", client, "--control-addr", control, "--admin-addr", admin,
		"--jwt-secret", secret, "--control-token", token,
		"--ping-interval", "10m", "--pong-timeout", "10m",
		"--max-conns-per-user", "0", "--connect-rate", "100000",
		"--max-queue-messages", strconv.Itoa(queue), "--max-queue-bytes", strconv.Itoa(queue * 512),
		"--command-rate", "1000", "--command-burst", "1000",
		"--auth-timeout", "30s", "--drain-timeout", "2s", "--log-level", "warn"}
}

// startLocalSocketIO starts redis-server and the Socket.IO adapter server in dir
// (bench/socketio, after npm ci) and waits until both are ready.
//
// With nodes > 1 it starts that many Node processes sharing the one Redis (target
// socketio2: the Redis adapter relays every broadcast between them).
func startLocalSocketIO(ctx context.Context, dir string, nodes int, logf *os.File) (*localServer, error) {
	rport, err := freePort()
	if err != nil {
		return nil, err
	}
	redis := exec.Command("redis-server", "--port", strconv.Itoa(rport), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--protected-mode", "no")
	redis.Stdout, redis.Stderr = logf, logf
	rp, err := startProc(redis)
	if err != nil {
		return nil, fmt.Errorf("start redis-server (apt-get install redis-server): %w", err)
	}
	s := &localServer{pids: []int{redis.Process.Pid}, procs: []*proc{rp}}
	if err := waitTCP(ctx, fmt.Sprintf("127.0.0.1:%d", rport), rp); err != nil {
		s.stop()
		return nil, fmt.Errorf("redis did not start: %w", err)
	}
	for range max(nodes, 1) {
		port, err := freePort()
		if err != nil {
			s.stop()
			return nil, err
		}
		node := exec.Command("node", filepath.Join(dir, "server.js"))
		node.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), fmt.Sprintf("REDIS_URL=redis://127.0.0.1:%d", rport))
		node.Stdout, node.Stderr = logf, logf
		np, err := startProc(node)
		if err != nil {
			s.stop()
			return nil, fmt.Errorf("start node: %w", err)
		}
		s.pids = append(s.pids, node.Process.Pid)
		s.procs = append(s.procs, np)
		base := fmt.Sprintf("http://127.0.0.1:%d", port)
		s.nodes = append(s.nodes, clusterNode{name: fmt.Sprintf("socketio-%d", len(s.nodes)), url: base, proc: np})
		if err := waitHTTP(ctx, base+"/bench/health", np); err != nil {
			s.stop()
			return nil, fmt.Errorf("socket.io server did not become ready (npm ci in %s?): %w", dir, err)
		}
	}
	s.dial = dialSpec{Target: targetSocketIO, URL: s.nodes[0].url}
	s.pub = pubSpec{Target: targetSocketIO, URL: s.nodes[0].url}
	if nodes > 1 {
		for _, n := range s.nodes {
			s.dial.URLs = append(s.dial.URLs, n.url)
			s.pub.URLs = append(s.pub.URLs, n.url)
		}
	}
	return s, nil
}

func waitHTTP(ctx context.Context, url string, p *proc) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", url, resp.Status)
		}
		if p.exited() || time.Now().After(deadline) {
			return err
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func waitTCP(ctx context.Context, addr string, p *proc) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p.exited() || time.Now().After(deadline) {
			return err
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
