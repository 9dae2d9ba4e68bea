// Package etcdtest starts a real, single-member embedded etcd server for tests.
//
// Start binds the server's client and peer listeners to 127.0.0.1 on free ports, keeps
// its data in a fresh temporary directory, waits until the server is ready to serve,
// and registers a t.Cleanup that closes the client and stops the server. A start takes
// about half a second, so a test package usually shares one server (started in a test
// or in TestMain through StartServer) and isolates tests by key prefix.
//
// # Concurrency contract
//
// A *Server is safe for concurrent use: Client returns a shared client that may be used
// from any goroutine, NewClient returns an additional client owned by the caller, and
// Stop may be called more than once and from several goroutines.
//
// # Goroutines
//
// After Stop returns, neither the server nor the clients created through this package
// leave goroutines running: with etcd v3.7.3, goleak.VerifyTestMain passes with no
// ignore options (this package's own TestMain checks it, as do the tests of
// mesh/registry and mesh/shardmap). Some gRPC transport goroutines may still be winding
// down for a few milliseconds after Stop; goleak retries, so that is not a failure.
// Clients a test creates itself with clientv3.New must be closed by the test.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/roomcast/roomcast/internal/embedetcd"
	"go.uber.org/zap"
)

// Server is a running embedded etcd member and a client connected to it.
type Server struct {
	etcd      *embed.Etcd
	dir       string
	client    *clientv3.Client
	endpoints []string

	stopOnce sync.Once
	mu       sync.Mutex
	extra    []*clientv3.Client
}

// Start starts an embedded etcd server for the test and stops it in t.Cleanup. It fails
// the test if the server does not start.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := StartServer()
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// StartServer starts an embedded etcd server outside of a test (for example in
// TestMain). The caller must call Stop.
func StartServer() (*Server, error) {
	// Ports are picked by binding and releasing them, so another process can steal one
	// in between; retrying on a fresh pair makes that race harmless.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		s, err := start()
		if err == nil {
			return s, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func start() (*Server, error) {
	dir, err := os.MkdirTemp("", "etcdtest-")
	if err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	ports, err := freePorts(2)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	clientAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	e, err := embedetcd.Start("etcdtest", dir, clientAddr, fmt.Sprintf("127.0.0.1:%d", ports[1]), nil)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}

	s := &Server{etcd: e, dir: dir, endpoints: []string{clientAddr}}
	c, err := s.dial()
	if err != nil {
		s.Stop()
		return nil, err
	}
	s.client = c
	return s, nil
}

// freePorts returns n distinct loopback TCP ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (s *Server) dial() (*clientv3.Client, error) {
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   s.endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("dial embedded etcd: %w", err)
	}
	return c, nil
}

// Client returns the server's shared client. It is closed by Stop; do not close it.
func (s *Server) Client() *clientv3.Client { return s.client }

// Endpoints returns the client endpoints ("127.0.0.1:port") of the server.
func (s *Server) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// NewClient returns a new client connected to the server, for tests that need a
// separate connection (one per simulated node, so that closing it loses that node's
// sessions only). It is closed by Stop if the caller has not closed it before.
func (s *Server) NewClient(t testing.TB) *clientv3.Client {
	t.Helper()
	c, err := s.dial()
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	s.mu.Lock()
	s.extra = append(s.extra, c)
	s.mu.Unlock()
	return c
}

// Stop closes every client created through the server and stops the server, then
// removes its data directory. It is idempotent.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		extra := s.extra
		s.extra = nil
		s.mu.Unlock()
		for _, c := range extra {
			c.Close() // closing twice is harmless; the error says "already closed".
		}
		if s.client != nil {
			s.client.Close()
		}
		s.etcd.Close()
		<-s.etcd.Server.StopNotify()
		os.RemoveAll(s.dir)
	})
}

// Ping reports whether the server answers a read within the context's deadline.
func (s *Server) Ping(ctx context.Context) error {
	_, err := s.client.Get(ctx, "etcdtest-ping")
	return err
}
