package app_test

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/etcdtest"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/liveconfig"
	"github.com/roomcast/roomcast/internal/testnode"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const docSecret = "a-secret-from-the-live-config-document-0123"

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// connectCode sends connect{token} and returns 0 when the node accepted it, or the
// close code it answered with.
func connectCode(t *testing.T, n *testnode.Node, token string) int {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, Subprotocols: []string{"roomcast.v1.json"}}
	c, _, err := d.Dial(n.WSURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, _ := protojson.Marshal(&pb.ClientCommand{Id: 1, Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: token}}})
	if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
		t.Fatal(err)
	}
	for {
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, b, err := c.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		if err != nil {
			t.Fatal(err)
		}
		m := &pb.ServerMessage{}
		if protojson.Unmarshal(b, m) == nil && m.GetId() == 1 && m.GetConnect() != nil {
			return 0
		}
	}
}

func mint(t *testing.T, secret string) string {
	t.Helper()
	tok, err := jwtauth.Mint("HS256", "", []byte(secret), jwtauth.Claims{User: "u", Join: []string{"*"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// known reports whether the node knows room's namespace (a control publish succeeds).
func known(t *testing.T, n *testnode.Node, room string) bool {
	t.Helper()
	_, err := n.Control.Publish(ctxT(t), &pb.PublishRequest{Room: room,
		Payload: &pb.Payload{Kind: &pb.Payload_JsonText{JsonText: "1"}}})
	if err == nil {
		return true
	}
	if status.Code(err) != codes.NotFound && status.Code(err) != codes.InvalidArgument && status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("publish %s: %v", room, err)
	}
	return false
}

func rejected(t *testing.T, n *testnode.Node, source string) float64 {
	t.Helper()
	resp, err := http.Get(n.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	prefix := `roomcast_config_rejected_total{source="` + source + `"} `
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return v
		}
	}
	t.Fatalf("no %s in /metrics", prefix)
	return 0
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition; the deadline is the bound
	}
}

// A document that is invalid when the node starts is refused (counted, logged) and
// the node starts on its own settings; the next valid document applies.
func TestInvalidLiveConfigAtStartIsRefused(t *testing.T) {
	etcd := etcdtest.Start(t)
	ctx := ctxT(t)
	if _, err := etcd.Client().Put(ctx, liveconfig.Key("test"), "namespaces:\n  - name: bad name\n"); err != nil {
		t.Fatal(err)
	}
	n := testnode.Start(t, testnode.Options{Etcd: etcd.Endpoints()})
	if rev := n.App().ConfigRevision(); rev != 0 {
		t.Fatalf("revision %d in force, want 0 (own settings)", rev)
	}
	if got := rejected(t, n, "etcd"); got != 1 {
		t.Fatalf("rejected %v, want 1", got)
	}
	if code := connectCode(t, n, mint(t, testnode.Secret)); code != 0 {
		t.Fatalf("the file's key: close %d", code)
	}
	store, err := liveconfig.New(liveconfig.Config{Client: etcd.Client(), Cluster: "test"})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := store.Set(ctx, []byte("namespaces:\n  - name: games\n"), -1)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the valid document applies", func() bool { return n.App().ConfigRevision() == rev })
	if !known(t, n, "games:1") || known(t, n, "chat:1") {
		t.Fatal("the document's namespaces are not the ones in force")
	}
}

// In cluster mode a reload (SIGHUP) re-reads the node's own settings under the
// document: what the document sets still wins, the rest comes from the new file, and a
// bad file is refused whole even where the document overrides it.
func TestReloadInClusterModeKeepsTheDocumentOnTop(t *testing.T) {
	etcd := etcdtest.Start(t)
	ctx := ctxT(t)
	store, err := liveconfig.New(liveconfig.Config{Client: etcd.Client(), Cluster: "test"})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := store.Set(ctx, []byte("namespaces:\n  - name: games\n"), 0)
	if err != nil {
		t.Fatal(err)
	}
	n := testnode.Start(t, testnode.Options{Etcd: etcd.Endpoints()})
	if n.App().ConfigRevision() != rev || !known(t, n, "games:1") || known(t, n, "chat:1") {
		t.Fatal("the node did not start with the stored document")
	}

	cfg := n.App().Config()
	bad := cfg
	bad.Namespaces = []fabric.Namespace{{Name: "bad name"}}
	bad.JWTSecret = docSecret
	if err := n.App().Reload(bad); err == nil {
		t.Fatal("a file with an invalid namespace was accepted")
	}
	if code := connectCode(t, n, mint(t, docSecret)); code == 0 {
		t.Fatal("a refused reload was half-applied")
	}
	if got := rejected(t, n, "file"); got != 1 {
		t.Fatalf("file rejections %v, want 1", got)
	}

	good := cfg
	good.Namespaces = []fabric.Namespace{{Name: "extra"}}
	good.JWTSecret = docSecret
	if err := n.App().Reload(good); err != nil {
		t.Fatal(err)
	}
	if code := connectCode(t, n, mint(t, docSecret)); code != 0 {
		t.Fatalf("the reloaded file's key (the document sets none): close %d", code)
	}
	if !known(t, n, "games:1") || known(t, n, "extra:1") {
		t.Fatal("the reloaded file's namespaces replaced the document's")
	}

	// Deleting the document leaves the reloaded file's settings.
	if _, err := store.Delete(ctx, rev); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the deletion applies", func() bool { return n.App().ConfigRevision() == 0 })
	if !known(t, n, "extra:1") || known(t, n, "games:1") {
		t.Fatal("after the deletion the file's namespaces are not in force")
	}
}
