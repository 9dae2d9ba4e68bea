package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/etcdtest"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/testnode"
)

// procNode is one `roomcast node` process started by a test.
type procNode struct {
	name    string
	wsURL   string
	control pb.ControlServiceClient
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed once the process has been reaped
}

// buildRoomcast builds the real binary once per test into a temporary directory.
func buildRoomcast(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "roomcast")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/roomcast")
	cmd.Dir = ".." // the module root; tests run in the package directory
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build roomcast: %v\n%s", err, out)
	}
	return bin
}

// freeAddr returns a 127.0.0.1 address whose TCP and UDP ports were free a moment
// ago. The port is below Linux's ephemeral range (32768 and up), so neither another
// test's ":0" listener nor any outgoing connection can be given it before the node
// binds it, as happened with ports the kernel handed out.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 1000 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", addr) // gossip binds UDP on the same port
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return addr
	}
	t.Fatal("no free port between 20000 and 32000")
	return ""
}

// procSpec is what identifies a node process across restarts: its name and addresses.
type procSpec struct {
	i                                             int
	name                                          string
	clientAddr, controlAddr, gossipAddr, peerAddr string
	drain                                         time.Duration
}

func newProcSpec(t *testing.T, i int) procSpec {
	return procSpec{
		i: i, name: fmt.Sprintf("proc-%d-%d", i, time.Now().UnixNano()%1e6),
		clientAddr: freeAddr(t), controlAddr: freeAddr(t), gossipAddr: freeAddr(t), peerAddr: freeAddr(t),
		drain: time.Second,
	}
}

// startProc starts one cluster node process; t.Cleanup kills it and closes its
// control client.
func startProc(t *testing.T, bin string, etcd []string, i int) *procNode {
	return newProcSpec(t, i).start(t, bin, etcd)
}

// start starts the node process of spec (again, for a restart: same name and
// addresses, a new incarnation).
func (spec procSpec) start(t *testing.T, bin string, etcd []string) *procNode {
	t.Helper()
	i, clientAddr, controlAddr := spec.i, spec.clientAddr, spec.controlAddr
	n := &procNode{
		name:    spec.name,
		wsURL:   "ws://" + clientAddr + "/ws",
		logPath: filepath.Join(t.TempDir(), fmt.Sprintf("node%d.log", i)),
		exited:  make(chan struct{}),
	}
	logFile, err := os.Create(n.logPath)
	if err != nil {
		t.Fatal(err)
	}
	n.cmd = exec.Command(bin, "node",
		"--name", n.name,
		"--client-addr", clientAddr,
		"--control-addr", controlAddr,
		"--admin-addr", "127.0.0.1:0",
		"--jwt-secret", testnode.Secret,
		"--control-token", testnode.ControlToken,
		"--log-level", "info",
		"--drain-timeout", spec.drain.String(),
		"--etcd-endpoints", etcd[0],
		"--cluster-name", "proc",
		"--gossip-addr", spec.gossipAddr,
		"--peer-addr", spec.peerAddr,
		"--gossip-key", testnode.ClusterKey,
		"--peer-secret", testnode.ClusterSecret,
	)
	n.cmd.Stdout, n.cmd.Stderr = logFile, logFile
	if err := n.cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start node %d: %v", i, err)
	}
	logFile.Close() // the child holds its own descriptor
	// The reaper goroutine ends when the process does; Cleanup makes sure it does.
	go func() { _ = n.cmd.Wait(); close(n.exited) }()
	conn, err := grpc.NewClient(controlAddr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(procBearer(testnode.ControlToken)))
	if err != nil {
		n.kill()
		t.Fatalf("control client: %v", err)
	}
	n.control = pb.NewControlServiceClient(conn)
	t.Cleanup(func() {
		n.kill()
		_ = conn.Close()
		if t.Failed() {
			out, _ := os.ReadFile(n.logPath)
			if len(out) > 4000 {
				out = out[len(out)-4000:]
			}
			t.Logf("log of %s (tail):\n%s", n.name, out)
		}
	})
	return n
}

// kill sends SIGKILL and waits until the process is reaped. It is idempotent.
func (n *procNode) kill() {
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
}

type procBearer string

func (b procBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (procBearer) RequireTransportSecurity() bool { return false }

// dialURL is dial for a node that is not a testnode.Node: it connects to a WebSocket
// URL directly and authenticates user with every right.
func dialURL(t *testing.T, url, user string) *wsClient {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: wait}
	conn, _, err := d.Dial(url, http.Header{})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c := &wsClient{t: t, conn: conn, in: make(chan *pb.ServerMessage, 4096), done: make(chan struct{})}
	go c.readLoop()
	t.Cleanup(func() { _ = c.conn.Close(); <-c.done })
	tok, err := jwtauth.Mint("HS256", "", []byte(testnode.Secret),
		jwtauth.Claims{User: user, Join: []string{"*"}, Publish: []string{"*"}, Read: []string{"*"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c.connect(tok)
	return c
}

// stream checks what one client sees of one room: within an epoch, offsets go up by
// exactly one (no gap, no duplicate), and no publisher sequence number arrives twice.
type stream struct {
	t     *testing.T
	name  string
	epoch string
	last  uint64
	seen  map[int]bool
	count int
}

func newStream(t *testing.T, name string, from *pb.Position) *stream {
	return &stream{t: t, name: name, epoch: from.GetEpoch(), last: from.GetOffset(), seen: map[int]bool{}}
}

// add checks m against the stream and reports whether it opened a new epoch.
func (s *stream) add(m *pb.RoomMessage) (newEpoch bool) {
	s.t.Helper()
	if m.GetEpoch() == s.epoch {
		if m.GetOffset() != s.last+1 {
			s.t.Fatalf("%s: offset %d after %d in epoch %s (gap or duplicate)", s.name, m.GetOffset(), s.last, s.epoch)
		}
	} else {
		newEpoch = true
		s.t.Logf("%s: epoch %q -> %q, first offset %d", s.name, s.epoch, m.GetEpoch(), m.GetOffset())
		s.epoch = m.GetEpoch()
	}
	s.last = m.GetOffset()
	seq := int(m.GetPayload().GetJson().GetNumberValue())
	if s.seen[seq] {
		s.t.Fatalf("%s: publish #%d delivered twice", s.name, seq)
	}
	s.seen[seq] = true
	s.count++
	return newEpoch
}

func (s *stream) position() *pb.Position { return &pb.Position{Epoch: s.epoch, Offset: s.last} }

// publishLog is what the background publisher saw: successful publishes in order.
type publishLog struct {
	mu   sync.Mutex
	oks  []publishOK
	errs int
}

type publishOK struct {
	seq     int
	started time.Time
	done    time.Time
	pos     *pb.Position
}

// firstOK returns the first successful publish that satisfies f.
func (l *publishLog) firstOK(f func(publishOK) bool) (publishOK, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ok := range l.oks {
		if f(ok) {
			return ok, true
		}
	}
	return publishOK{}, false
}

// waitProcCluster waits until every node sees all of them, with every shard owned.
func waitProcCluster(t *testing.T, nodes []*procNode) {
	t.Helper()
	for _, nd := range nodes {
		pollUntil(t, 30*time.Second, fmt.Sprintf("cluster of %d with 256 shards owned", len(nodes)), func() (bool, string) {
			select {
			case <-nd.exited:
				t.Fatalf("node %s exited during startup", nd.name)
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			r, err := nd.control.ListNodes(ctx, &pb.ListNodesRequest{})
			shards := uint32(0)
			for _, info := range r.GetNodes() {
				shards += info.GetShards()
			}
			return err == nil && len(r.GetNodes()) == len(nodes) && shards == 256, fmt.Sprintf("%v %v", r, err)
		})
	}
}

// pollUntil polls cond until it holds or the deadline passes; the deadline is a
// failure bound, not a pace.
func pollUntil(t *testing.T, bound time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s within %v: last state %s", what, bound, state)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition; the deadline is the bound
	}
}

// Three real node processes on one etcd; a node dies by SIGKILL while a backend
// publishes to a room continuously through another node. When the victim owns the room,
// the room moves; when it only holds members, the room stays. Either way the survivors
// keep serving the room, presence forgets the dead node's members, and a client of the
// dead node that reconnects to a survivor either recovers every missed message in order
// or is told it cannot.
func TestProcessClusterSurvivesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs real processes")
	}
	bin := buildRoomcast(t)
	for _, tc := range []struct {
		name      string
		killOwner bool
	}{
		{"kill the room owner", true},
		{"kill a member node", false},
	} {
		t.Run(tc.name, func(t *testing.T) { runKill9(t, bin, tc.killOwner) })
	}
}

func runKill9(t *testing.T, bin string, killOwner bool) {
	etcd := etcdtest.Start(t)
	var nodes []*procNode
	for i := range 3 {
		nodes = append(nodes, startProc(t, bin, etcd.Endpoints(), i))
	}
	waitProcCluster(t, nodes)

	room := pickRoom(t, nodes)
	users := []string{"u0", "u1"}
	clients := []*wsClient{dialURL(t, nodes[0].wsURL, users[0]), dialURL(t, nodes[1].wsURL, users[1])}
	streams := make([]*stream, 2)
	for i, cl := range clients {
		j := cl.mustJoin(room)
		if !j.GetRecoverable() {
			t.Fatalf("%s is not recoverable in the default namespaces", room)
		}
		streams[i] = newStream(t, fmt.Sprintf("client of node %d", i), j.GetPosition())
	}

	// The background publisher goes through node 2 and stops before the test ends.
	plog := &publishLog{}
	pubCtx, stopPub := context.WithCancel(context.Background())
	var pubWG sync.WaitGroup
	pubWG.Add(1)
	go func() {
		defer pubWG.Done()
		tick := time.NewTicker(15 * time.Millisecond)
		defer tick.Stop()
		for seq := 1; ; seq++ {
			select {
			case <-pubCtx.Done():
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(pubCtx, 2*time.Second)
			started := time.Now()
			r, err := nodes[2].control.Publish(ctx, &pb.PublishRequest{Room: room, Payload: jsonPayload(t, seq)})
			cancel()
			plog.mu.Lock()
			if err != nil {
				plog.errs++
			} else {
				plog.oks = append(plog.oks, publishOK{seq: seq, started: started, done: time.Now(), pos: r.GetPosition()})
			}
			plog.mu.Unlock()
		}
	}()
	stopPublisher := func() { stopPub(); pubWG.Wait() }
	t.Cleanup(stopPublisher)

	// Both clients see the stream before the kill.
	for i, cl := range clients {
		for streams[i].count < 20 {
			streams[i].add(cl.nextMessage())
		}
	}

	lr, err := nodes[2].control.ListRooms(ctxT(t), &pb.ListRoomsRequest{Prefix: room})
	if err != nil || len(lr.GetRooms()) != 1 {
		t.Fatalf("list rooms: %v %v", lr, err)
	}
	owner := lr.GetRooms()[0].GetOwner()
	ownerIdx := -1
	for i, nd := range nodes {
		if nd.name == owner {
			ownerIdx = i
		}
	}
	var victim int
	moved := false
	switch {
	case ownerIdx == -1:
		t.Fatalf("owner %q is none of the started nodes", owner)
	case ownerIdx == 2:
		t.Logf("room owner is node 2 (the publisher's node); killing member node 0: the room does not move")
		victim = 0
	case killOwner:
		victim, moved = ownerIdx, true
	default:
		victim = 1 - ownerIdx // the member node that does not own the room
	}
	survivor := 1 - victim // the member node that lives
	oldEpoch := streams[victim].epoch
	t.Logf("owner %s; killing node %d (%s) with SIGKILL", owner, victim, nodes[victim].name)

	killedAt := time.Now()
	nodes[victim].kill()

	// Survivors keep delivering: a publish through node 2 succeeds, at the new owner
	// when the room moved.
	var first publishOK
	pollUntil(t, 15*time.Second, "a successful publish after the kill", func() (bool, string) {
		var ok bool
		first, ok = plog.firstOK(func(p publishOK) bool {
			if moved {
				return p.pos.GetEpoch() != oldEpoch
			}
			return p.started.After(killedAt)
		})
		plog.mu.Lock()
		defer plog.mu.Unlock()
		return ok, fmt.Sprintf("%d ok, %d failed", len(plog.oks), plog.errs)
	})
	t.Logf("kill -> first successful publish to the room (moved=%v): %v (publish #%d at %v)",
		moved, first.done.Sub(killedAt).Round(time.Millisecond), first.seq, first.pos)

	// The surviving member client sees that publish: within each epoch without gaps or
	// duplicates (stream.add), and an epoch change is visible, never silent.
	for !streams[survivor].seen[first.seq] {
		streams[survivor].add(clients[survivor].nextMessage())
	}

	// Presence converges: only the survivor's user is left.
	pollUntil(t, 15*time.Second, "presence without the dead node's member", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		p, err := nodes[2].control.GetPresence(ctx, &pb.GetPresenceRequest{Room: room})
		ms := p.GetMembers()
		return err == nil && len(ms) == 1 && ms[0].GetUser() == users[survivor], fmt.Sprintf("%v %v", p, err)
	})

	// The dead node's client notices, reconnects to a survivor and rejoins from its
	// last position.
	dead := clients[victim]
	select {
	case <-dead.done:
	case <-time.After(wait):
		t.Fatal("the dead node's client did not notice its connection broke")
	}
	for len(dead.in) > 0 { // messages that arrived before the kill
		if m := (<-dead.in).GetMessage(); m != nil {
			streams[victim].add(m)
		}
	}
	last := streams[victim].position()
	re := dialURL(t, nodes[2].wsURL, users[victim])
	jr := re.join(room, last)
	if jr.GetError() != nil {
		t.Fatalf("rejoin: %v", jr.GetError())
	}
	j := jr.GetJoin()
	rs := streams[victim]
	if j.GetRecovered() {
		if moved {
			// Not wrong in itself (history may be replicated one day), but the
			// messages must then be exactly the missed ones of the old epoch.
			t.Logf("recovered=true across an owner change")
		}
		for _, m := range j.GetMessages() {
			rs.add(m) // same epoch, offsets last+1, last+2, ... or the test fails
			if m.GetEpoch() != last.GetEpoch() {
				t.Fatalf("recovered message from another epoch: %v", m)
			}
		}
		if rs.epoch != j.GetPosition().GetEpoch() || rs.last != j.GetPosition().GetOffset() {
			t.Fatalf("recovered up to %v but the join position is %v", rs.position(), j.GetPosition())
		}
		t.Logf("rejoin from %v: recovered=true with %d missed messages", last, len(j.GetMessages()))
	} else {
		if len(j.GetMessages()) != 0 {
			t.Fatalf("recovered=false with %d messages", len(j.GetMessages()))
		}
		if moved && j.GetPosition().GetEpoch() == last.GetEpoch() {
			t.Fatalf("recovered=false but the epoch %q did not change", last.GetEpoch())
		}
		t.Logf("rejoin from %v: recovered=false, position %v (client must re-sync)", last, j.GetPosition())
		// The client re-syncs: from here on, it follows the new position.
		rs.epoch, rs.last = j.GetPosition().GetEpoch(), j.GetPosition().GetOffset()
	}
	// Live messages continue right after the join position, in the same epoch.
	for range 10 {
		m := re.nextMessage()
		if rs.add(m) {
			t.Fatalf("live message after rejoin in epoch %q, join said %q", m.GetEpoch(), j.GetPosition().GetEpoch())
		}
	}
	stopPublisher()
}

// pickRoom returns a room owned by node 0 or 1, so killing its owner always exercises
// failover (node 2 publishes and must survive): it creates candidate rooms through node
// 2 and reads their owners.
func pickRoom(t *testing.T, nodes []*procNode) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range 32 {
		room := fmt.Sprintf("chat:proc-%d", i)
		if _, err := nodes[2].control.Publish(ctx, &pb.PublishRequest{Room: room, Payload: jsonPayload(t, "probe")}); err != nil {
			t.Fatalf("probe %s: %v", room, err)
		}
		r, err := nodes[2].control.ListRooms(ctx, &pb.ListRoomsRequest{Prefix: room})
		if err != nil {
			t.Fatal(err)
		}
		for _, rs := range r.GetRooms() {
			if rs.GetName() == room && (rs.GetOwner() == nodes[0].name || rs.GetOwner() == nodes[1].name) {
				return room
			}
		}
	}
	t.Fatal("no candidate room is owned by node 0 or 1")
	return ""
}
