package cli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/testnode"
)

// binResult is what one run of the real binary produced.
type binResult struct {
	stdout, stderr string
	code           int
}

// runBinary runs the roomcast binary built by TestMain.
func runBinary(t *testing.T, args ...string) binResult {
	t.Helper()
	if realBinary == "" {
		t.Skipf("no roomcast binary: %s", realBinarySkip)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, realBinary, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	res := binResult{stdout: out.String(), stderr: errOut.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run %v: %v", args, err)
	}
	return res
}

// decode parses one line of protojson output into m.
func decode[M proto.Message](t *testing.T, r binResult, m M) M {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if err := protojson.Unmarshal([]byte(r.stdout), m); err != nil {
		t.Fatalf("output is not protojson of %T: %v\n%s", m, err, r.stdout)
	}
	return m
}

// TestRealNode drives a real in-process node with the real binary: what an
// operator would type.
func TestRealNode(t *testing.T) {
	if realBinary == "" {
		t.Skipf("no roomcast binary: %s", realBinarySkip)
	}
	n := testnode.Start(t, testnode.Options{})
	ctl := func(args ...string) binResult {
		t.Helper()
		return runBinary(t, append([]string{"--addr", n.ControlAddr, "--token", n.ControlToken, "-o", "json"}, args...)...)
	}

	// Publish to a history namespace; a retried publish with the same key is
	// accepted once.
	first := decode(t, ctl("publish", "news:flash", `{"headline":"one"}`), &pb.PublishResponse{})
	if first.GetPosition().GetOffset() != 1 || first.GetPosition().GetEpoch() == "" {
		t.Fatalf("first publish at %v", first.GetPosition())
	}
	second := decode(t, ctl("publish", "news:flash", `{"headline":"two"}`, "--idempotency-key", "k2"), &pb.PublishResponse{})
	again := decode(t, ctl("publish", "news:flash", `{"headline":"two"}`, "--idempotency-key", "k2"), &pb.PublishResponse{})
	if !proto.Equal(second.GetPosition(), again.GetPosition()) || second.GetPosition().GetOffset() != 2 {
		t.Errorf("retried publish at %v, first try at %v", again.GetPosition(), second.GetPosition())
	}

	hist := decode(t, ctl("history", "news:flash"), &pb.GetHistoryResponse{})
	if len(hist.GetMessages()) != 2 || hist.GetPosition().GetOffset() != 2 {
		t.Fatalf("history: %v", hist)
	}
	if got := payloadText(hist.GetMessages()[1].GetPayload()); got != `{"headline":"two"}` {
		t.Errorf("second message payload %s", got)
	}
	newest := decode(t, ctl("history", "news:flash", "--reverse", "--limit", "1"), &pb.GetHistoryResponse{})
	if len(newest.GetMessages()) != 1 || newest.GetMessages()[0].GetOffset() != 2 {
		t.Errorf("newest message: %v", newest.GetMessages())
	}
	epoch := first.GetPosition().GetEpoch()
	since := decode(t, ctl("history", "news:flash", "--since-epoch", epoch, "--since-offset", "1"), &pb.GetHistoryResponse{})
	if len(since.GetMessages()) != 1 || since.GetMessages()[0].GetOffset() != 2 {
		t.Errorf("history since offset 1: %v", since.GetMessages())
	}

	nodes := decode(t, ctl("nodes"), &pb.ListNodesResponse{})
	if len(nodes.GetNodes()) != 1 || nodes.GetNodes()[0].GetName() != n.Name || nodes.GetNodes()[0].GetState() != pb.NodeState_NODE_STATE_ACTIVE {
		t.Errorf("nodes: %v", nodes)
	}

	// A client connects with a token minted by the binary and auto-joins a room.
	tok := runBinary(t, "token", "alice", "--secret", testnode.Secret, "--join", "chat:*", "--read", "chat:*",
		"--rooms", "chat:lobby", "--info", `{"name":"Alice"}`)
	if tok.code != 0 {
		t.Fatalf("token: exit %d: %s", tok.code, tok.stderr)
	}
	ws := dialClient(t, n, strings.TrimSpace(tok.stdout))

	pres := decode(t, ctl("presence", "chat:lobby"), &pb.GetPresenceResponse{})
	if len(pres.GetMembers()) != 1 || pres.GetMembers()[0].GetUser() != "alice" || valueText(pres.GetMembers()[0].GetInfo()) != `{"name":"Alice"}` {
		t.Errorf("presence: %v", pres)
	}
	stats := decode(t, ctl("stats", "chat:lobby"), &pb.GetPresenceStatsResponse{})
	if stats.GetUsers() != 1 || stats.GetConnections() != 1 {
		t.Errorf("stats: %v", stats)
	}

	rooms := decode(t, ctl("rooms", "--all", "--page-size", "1"), &pb.ListRoomsResponse{})
	var names []string
	for _, r := range rooms.GetRooms() {
		names = append(names, r.GetName())
	}
	if !strings.Contains(strings.Join(names, ","), "chat:lobby") || !strings.Contains(strings.Join(names, ","), "news:flash") {
		t.Errorf("rooms: %v", names)
	}

	// The table output is what a human reads.
	table := runBinary(t, "--addr", n.ControlAddr, "--token", n.ControlToken, "presence", "chat:lobby")
	if table.code != 0 || !strings.Contains(table.stdout, "alice") || !strings.Contains(table.stdout, "USER") {
		t.Errorf("presence table: exit %d\n%s%s", table.code, table.stdout, table.stderr)
	}

	kick := decode(t, ctl("kick", "--user", "alice", "--reason", "bye"), &pb.KickResponse{})
	if kick.GetConnections() != 1 {
		t.Errorf("kick closed %d connections", kick.GetConnections())
	}
	if code := ws.closeCode(t); code != int(pb.CloseCode_CLOSE_CODE_FORBIDDEN) {
		t.Errorf("client closed with %d, want %d", code, pb.CloseCode_CLOSE_CODE_FORBIDDEN)
	}

	// Exit codes against a real node.
	if r := runBinary(t, "--addr", n.ControlAddr, "--token", "wrong", "nodes"); r.code != ExitAuth ||
		!strings.HasPrefix(r.stderr, "roomcast: Unauthenticated: ") {
		t.Errorf("wrong token: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := ctl("presence", "news:flash"); r.code != ExitServerError {
		t.Errorf("presence where it is off: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := ctl("stats"); r.code != ExitUsage {
		t.Errorf("missing argument: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := runBinary(t, "--addr", n.ControlAddr, "health"); r.code != 0 || strings.TrimSpace(r.stdout) != "SERVING" {
		t.Errorf("health: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	n.Stop()
	if r := ctl("nodes"); r.code != ExitUnavailable {
		t.Errorf("stopped node: exit %d, stderr %q", r.code, r.stderr)
	}
}

// wsConn is a minimal WebSocket client of the roomcast JSON protocol.
type wsConn struct {
	c *websocket.Conn
}

// dialClient connects and authenticates with token.
func dialClient(t *testing.T, n *testnode.Node, token string) *wsConn {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, Subprotocols: []string{"roomcast.v1.json"}}
	c, _, err := d.Dial(n.WSURL, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", n.WSURL, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	w := &wsConn{c: c}
	b, err := protojson.Marshal(&pb.ClientCommand{Id: 1, Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: token}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
		t.Fatal(err)
	}
	for {
		m := w.read(t)
		if m.GetId() != 1 {
			continue
		}
		if m.GetError() != nil {
			t.Fatalf("connect refused: %v", m.GetError())
		}
		return w
	}
}

func (w *wsConn) read(t *testing.T) *pb.ServerMessage {
	t.Helper()
	_ = w.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := w.c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	m := &pb.ServerMessage{}
	if err := protojson.Unmarshal(b, m); err != nil {
		t.Fatalf("bad server frame %s: %v", b, err)
	}
	return m
}

// closeCode reads until the server closes the connection and returns the code.
func (w *wsConn) closeCode(t *testing.T) int {
	t.Helper()
	for {
		_ = w.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err := w.c.ReadMessage()
		var ce *websocket.CloseError
		switch {
		case errors.As(err, &ce):
			return ce.Code
		case err != nil:
			t.Fatalf("connection ended without a close frame: %v", err)
		}
	}
}

// TestRealNodeEvents follows events with the real binary and stops it the way
// a user does, with Ctrl-C (SIGINT): it must exit with 0.
func TestRealNodeEvents(t *testing.T) {
	if realBinary == "" {
		t.Skipf("no roomcast binary: %s", realBinarySkip)
	}
	n := testnode.Start(t, testnode.Options{})
	dialClient(t, n, n.Token(t, "alice", jwtauth.Claims{}))

	cmd := exec.Command(realBinary, "--addr", n.ControlAddr, "--token", n.ControlToken, "-o", "json",
		"events", "--type", "join", "--room", "chat:*")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Kill()
			for range lines { // let the reader finish
			}
			_ = cmd.Wait()
		}
	})

	// The subscription is set up asynchronously: join alice to a fresh room until
	// the stream shows one of those joins. The deadline only bounds failure.
	deadline := time.Now().Add(20 * time.Second)
	var got *pb.StreamEventsResponse
	for i := 0; got == nil; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no join event arrived; stderr %q", stderr.String())
		}
		room := fmt.Sprintf("chat:r%d", i)
		if r := runBinary(t, "--addr", n.ControlAddr, "--token", n.ControlToken, "join", room, "--user", "alice"); r.code != 0 {
			t.Fatalf("join: exit %d: %s", r.code, r.stderr)
		}
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("events ended early; stderr %q", stderr.String())
			}
			got = &pb.StreamEventsResponse{}
			if err := protojson.Unmarshal([]byte(line), got); err != nil {
				t.Fatalf("event line is not protojson: %v\n%s", err, line)
			}
		case <-time.After(200 * time.Millisecond):
		}
	}
	if e := got.GetEvent(); e.GetType() != pb.EventType_EVENT_TYPE_JOIN || e.GetUser() != "alice" || !strings.HasPrefix(e.GetRoom(), "chat:r") {
		t.Errorf("event %v", e)
	}

	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	for range lines { // drain until the process closes stdout
	}
	err = cmd.Wait()
	exited = true
	if err != nil {
		t.Errorf("events after Ctrl-C: %v; stderr %q", err, stderr.String())
	}
}
