package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/etcdtest"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/liveconfig"
	"github.com/roomcast/roomcast/internal/testnode"
)

// runConfigCLI runs `roomcast config ...` in-process, as cmd/roomcast wires it.
func runConfigCLI(ctx context.Context, t *testing.T, stdin string, args ...string) result {
	t.Helper()
	root := &cobra.Command{Use: "roomcast", Short: "roomcast test root"}
	AddGlobalFlags(root)
	root.AddCommand(Commands()...)
	root.AddCommand(ConfigCommand())
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(append([]string{"config"}, args...))
	code := Execute(ctx, root)
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}

// liveClient is a WebSocket client of the JSON protocol that reports refusals instead
// of failing the test.
type liveClient struct {
	t  *testing.T
	c  *websocket.Conn
	id uint32
}

// dialLive connects to n and sends connect{token}. It returns the client and nil when
// the node accepted the token, or the close code when it refused it.
func dialLive(t *testing.T, n *testnode.Node, token string) (*liveClient, int) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, Subprotocols: []string{"roomcast.v1.json"}}
	c, _, err := d.Dial(n.WSURL, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", n.WSURL, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	lc := &liveClient{t: t, c: c}
	m, code := lc.call(&pb.ClientCommand{Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: token}}})
	if code != 0 {
		return nil, code
	}
	if m.GetError() != nil {
		t.Fatalf("connect answered with an error: %v", m.GetError())
	}
	return lc, 0
}

// call sends cmd and returns its reply, or the close code if the server closed the
// connection instead.
func (lc *liveClient) call(cmd *pb.ClientCommand) (*pb.ServerMessage, int) {
	lc.t.Helper()
	lc.id++
	cmd.Id = lc.id
	b, err := protojson.Marshal(cmd)
	if err != nil {
		lc.t.Fatal(err)
	}
	if err := lc.c.WriteMessage(websocket.TextMessage, b); err != nil {
		lc.t.Fatal(err)
	}
	for {
		_ = lc.c.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, b, err := lc.c.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return nil, ce.Code
		}
		if err != nil {
			lc.t.Fatalf("read: %v", err)
		}
		m := &pb.ServerMessage{}
		if err := protojson.Unmarshal(b, m); err != nil {
			lc.t.Fatalf("bad server frame %s: %v", b, err)
		}
		if m.GetId() == lc.id {
			return m, 0
		}
	}
}

// join returns the error code of joining room (0: joined).
func (lc *liveClient) join(room string) pb.ErrorCode {
	lc.t.Helper()
	m, code := lc.call(&pb.ClientCommand{Command: &pb.ClientCommand_Join{Join: &pb.JoinCommand{Room: room}}})
	if code != 0 {
		lc.t.Fatalf("join %s: connection closed with %d", room, code)
	}
	return m.GetError().GetCode()
}

func mintWith(t *testing.T, secret, user string) string {
	t.Helper()
	tok, err := jwtauth.Mint("HS256", "", []byte(secret), jwtauth.Claims{User: user, Join: []string{"*"}, Publish: []string{"*"}, Read: []string{"*"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// metric returns the value of a sample line of the node's /metrics ("name{labels}").
func metric(t *testing.T, n *testnode.Node, sample string) float64 {
	t.Helper()
	resp, err := http.Get(n.AdminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("no sample %s in /metrics", sample)
	return 0
}

// eventually polls cond; the deadline only bounds failure.
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

const liveSecret = "the-rotated-live-config-secret-0123456789"

// liveDoc is the test nodes' namespaces plus "games", with a new token secret.
var liveDoc = `# set by the live config test
namespaces:
  - name: ""
    client_publish: true
  - name: chat
    presence: true
    join_leave: true
    history_size: 100
    history_ttl: 1h
    client_publish: true
  - name: news
    history_size: 1000
    history_ttl: 1h
  - name: games
    presence: true
    max_members: 8
jwt_secret: ` + liveSecret + "\n"

// TestLiveConfigAcrossACluster: `roomcast config set` reaches every node of a real
// cluster without a restart; invalid documents are refused by the CLI and, written
// straight into etcd, by every node, which keeps the previous configuration; a stale
// --if-revision is a conflict; deleting the document brings the nodes' own settings
// back.
func TestLiveConfigAcrossACluster(t *testing.T) {
	etcd := etcdtest.Start(t)
	nodes := []*testnode.Node{
		testnode.Start(t, testnode.Options{Etcd: etcd.Endpoints()}),
		testnode.Start(t, testnode.Options{Etcd: etcd.Endpoints()}),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ep := strings.Join(etcd.Endpoints(), ",")
	cfg := func(stdin string, args ...string) result {
		t.Helper()
		return runConfigCLI(ctx, t, stdin, append(args, "--etcd-endpoints", ep, "--cluster-name", "test")...)
	}
	// The test nodes trust testnode.Secret and have no "games" namespace.
	for _, n := range nodes {
		c, code := dialLive(t, n, n.Token(t, "before", jwtauth.Claims{}))
		if code != 0 {
			t.Fatalf("%s refused the file's key: %d", n.Name, code)
		}
		if got := c.join("games:1"); got != pb.ErrorCode_ERROR_CODE_UNKNOWN_NAMESPACE {
			t.Fatalf("%s: games joinable before any live config: %v", n.Name, got)
		}
	}
	if r := cfg("", "get"); r.code != ExitServerError || !strings.Contains(r.stderr, "no live configuration at /roomcast/test/config") {
		t.Fatalf("get with no document: exit %d %q", r.code, r.stderr)
	}

	// Refused locally: exit 2, the reason, nothing written.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("namespaces:\n  - name: bad name\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := cfg("", "set", "-f", bad); r.code != ExitUsage || !strings.Contains(r.stderr, `invalid live config, nothing written: namespaces: namespace "bad name"`) {
		t.Fatalf("invalid set: exit %d %q", r.code, r.stderr)
	}
	if r := cfg("namespace: []\n", "set", "-f", "-"); r.code != ExitUsage || !strings.Contains(r.stderr, "field namespace not found") {
		t.Fatalf("typo set: exit %d %q", r.code, r.stderr)
	}
	if r := cfg("", "get"); r.code != ExitServerError {
		t.Fatalf("a refused set wrote something: %+v", r)
	}

	// A valid document, created with --if-revision 0, applies on every node.
	r := cfg(liveDoc, "set", "-f", "-", "--if-revision", "0", "-o", "json")
	setDone := time.Now()
	var set struct {
		Key      string `json:"key"`
		Revision int64  `json:"revision"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &set) != nil || set.Key != "/roomcast/test/config" || set.Revision == 0 {
		t.Fatalf("set: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	// Every node is polled in one loop, so the logged times say when each applied it.
	applied := make([]time.Duration, len(nodes))
	eventually(t, "every node applies revision "+strconv.FormatInt(set.Revision, 10), func() bool {
		all := true
		for i, n := range nodes {
			if applied[i] == 0 && n.App().ConfigRevision() == set.Revision {
				applied[i] = time.Since(setDone)
			}
			all = all && applied[i] != 0
		}
		return all
	})
	t.Logf("applied %v after the set command returned (20 ms polls)", applied)
	for _, n := range nodes {
		if v := metric(t, n, "roomcast_config_revision"); v != float64(set.Revision) {
			t.Errorf("%s: roomcast_config_revision %v, want %d", n.Name, v, set.Revision)
		}
	}
	checkApplied := func(when string) {
		t.Helper()
		for _, n := range nodes {
			c, code := dialLive(t, n, mintWith(t, liveSecret, "carol"))
			if code != 0 {
				t.Fatalf("%s %s: a token of the live config's key was refused (%d)", n.Name, when, code)
			}
			if got := c.join("games:1"); got != pb.ErrorCode_ERROR_CODE_UNSPECIFIED {
				t.Fatalf("%s %s: games not joinable: %v", n.Name, when, got)
			}
			// The key set was replaced as a whole: the file's key no longer works.
			if _, code := dialLive(t, n, n.Token(t, "old", jwtauth.Claims{})); code != int(pb.CloseCode_CLOSE_CODE_UNAUTHORIZED) {
				t.Fatalf("%s %s: a token of the replaced key: close %d", n.Name, when, code)
			}
		}
	}
	checkApplied("after set")

	// get prints the document as written and its revision, in both formats.
	r = cfg("", "get")
	if r.code != 0 || !strings.HasPrefix(r.stdout, fmt.Sprintf("# roomcast live config /roomcast/test/config, revision %d\n", set.Revision)) ||
		!strings.Contains(r.stdout, "# set by the live config test") {
		t.Fatalf("get: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if _, err := liveconfig.Parse([]byte(r.stdout)); err != nil {
		t.Errorf("get's yaml output is not a valid document to give back to set: %v", err)
	}
	r = cfg("", "get", "-o", "json")
	var got struct {
		Revision int64 `json:"revision"`
		Valid    bool  `json:"valid"`
		Config   struct {
			Namespaces []struct {
				Name       string `json:"name"`
				HistoryTTL string `json:"history_ttl"`
			} `json:"namespaces"`
		} `json:"config"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got.Revision != set.Revision || !got.Valid ||
		len(got.Config.Namespaces) != 4 || got.Config.Namespaces[1].HistoryTTL != "1h" {
		t.Fatalf("get -o json: %v %q", err, r.stdout)
	}

	// A stale --if-revision is a conflict: exit 1, nothing written.
	if r := cfg(liveDoc, "set", "-f", "-", "--if-revision", strconv.FormatInt(set.Revision-1, 10)); r.code != ExitServerError ||
		!strings.Contains(r.stderr, fmt.Sprintf("conflict: live config changed meanwhile: expected revision %d, it is revision %d", set.Revision-1, set.Revision)) {
		t.Fatalf("stale set: exit %d %q", r.code, r.stderr)
	}

	// Written around the CLI straight into etcd, an invalid document is refused by
	// every node: the previous configuration stays in force, the refusal is counted.
	for name, doc := range map[string]string{
		"syntax":    "namespaces:\n  - name: bad name\n",
		"short key": "jwt_keys: []\njwt_secret: short\n",
		"duplicate": liveDoc + "namespaces:\n  - name: x\n",
	} {
		before := make([]float64, len(nodes))
		for i, n := range nodes {
			before[i] = metric(t, n, `roomcast_config_rejected_total{source="etcd"}`)
		}
		if _, err := etcd.Client().Put(ctx, liveconfig.Key("test"), doc); err != nil {
			t.Fatal(err)
		}
		for i, n := range nodes {
			eventually(t, n.Name+" counts the refusal of "+name, func() bool {
				return metric(t, n, `roomcast_config_rejected_total{source="etcd"}`) == before[i]+1
			})
			if rev := n.App().ConfigRevision(); rev != set.Revision {
				t.Fatalf("%s: revision %d in force after refusing %s, want %d", n.Name, rev, name, set.Revision)
			}
		}
	}
	checkApplied("after refusing invalid documents")
	if r := cfg("", "get"); r.code != 0 || !strings.Contains(r.stderr, "warning: the stored document is invalid") {
		t.Fatalf("get of an invalid stored document: exit %d %q", r.code, r.stderr)
	}

	// Deleting the document brings each node's own settings back.
	if r := cfg("", "delete"); r.code != 0 {
		t.Fatalf("delete: exit %d %q", r.code, r.stderr)
	}
	for _, n := range nodes {
		eventually(t, n.Name+" drops the live config", func() bool { return n.App().ConfigRevision() == 0 })
		c, code := dialLive(t, n, n.Token(t, "again", jwtauth.Claims{}))
		if code != 0 {
			t.Fatalf("%s: the file's key after delete: close %d", n.Name, code)
		}
		if got := c.join("games:1"); got != pb.ErrorCode_ERROR_CODE_UNKNOWN_NAMESPACE {
			t.Fatalf("%s: games still joinable after delete: %v", n.Name, got)
		}
	}
}

// A node that starts while the cluster has a live config starts with it.
func TestNodeStartsWithTheStoredLiveConfig(t *testing.T) {
	etcd := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t.Setenv(EnvEtcdEndpoints, strings.Join(etcd.Endpoints(), ","))
	t.Setenv(EnvClusterName, "test")
	r := runConfigCLI(ctx, t, liveDoc, "set", "-f", "-")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "live config stored: /roomcast/test/config, revision ") {
		t.Fatalf("set through the environment: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	n := testnode.Start(t, testnode.Options{Etcd: etcd.Endpoints()})
	if n.App().ConfigRevision() == 0 {
		t.Fatal("started without the stored live config")
	}
	c, code := dialLive(t, n, mintWith(t, liveSecret, "dora"))
	if code != 0 {
		t.Fatalf("the live config's key: close %d", code)
	}
	if got := c.join("games:1"); got != pb.ErrorCode_ERROR_CODE_UNSPECIFIED {
		t.Fatalf("games: %v", got)
	}
}

func TestConfigVerbsUsage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Setenv(EnvEtcdEndpoints, "")
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"no endpoints": {[]string{"get"}, "no etcd endpoints"},
		"no file":      {[]string{"set", "--etcd-endpoints", "127.0.0.1:1"}, "no document"},
		"bad output":   {[]string{"get", "-o", "xml", "--etcd-endpoints", "127.0.0.1:1"}, "want yaml or json"},
		"bad cluster":  {[]string{"get", "--etcd-endpoints", "127.0.0.1:1", "--cluster-name", "a/b"}, "cluster name"},
		"extra arg":    {[]string{"get", "x"}, "unknown command"},
	} {
		t.Run(name, func(t *testing.T) {
			r := runConfigCLI(ctx, t, "", tc.args...)
			if r.code != ExitUsage || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d %q, want 2 and %q", r.code, r.stderr, tc.want)
			}
		})
	}
	// --dry-run validates without etcd.
	if r := runConfigCLI(ctx, t, liveDoc, "set", "-f", "-", "--dry-run"); r.code != 0 || !strings.Contains(r.stdout, "valid live config") {
		t.Fatalf("dry run: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	// An unreachable etcd is exit code 3.
	if r := runConfigCLI(ctx, t, "", "get", "--etcd-endpoints", "127.0.0.1:1", "--timeout", "500ms"); r.code != ExitUnavailable {
		t.Fatalf("unreachable etcd: exit %d %q", r.code, r.stderr)
	}
}

// The real binary has the verb, with examples in its help.
func TestRealBinaryConfigHelp(t *testing.T) {
	for _, verb := range []string{"get", "set", "delete"} {
		r := runBinary(t, "config", verb, "--help")
		if r.code != 0 || !strings.Contains(r.stdout, "Examples:") || !strings.Contains(r.stdout, "--etcd-endpoints") {
			t.Fatalf("config %s --help: exit %d\n%s%s", verb, r.code, r.stdout, r.stderr)
		}
	}
}
