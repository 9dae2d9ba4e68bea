package e2e

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/testnode"
)

func TestBroadcastReachesEveryRoom(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	a, _ := connect(t, n, "a")
	a.mustJoin("chat:b1")
	b, _ := connect(t, n, "b")
	b.mustJoin("news:b2")
	r, err := n.Control.Broadcast(ctxT(t), &pb.BroadcastRequest{Rooms: []string{"chat:b1", "news:b2", "nope:x"}, Payload: jsonPayload(t, "all")})
	if err != nil {
		t.Fatal(err)
	}
	res := r.GetResults()
	if len(res) != 3 || res[0].GetError() != nil || res[1].GetError() != nil || res[2].GetError() == nil {
		t.Fatalf("broadcast results %v", res)
	}
	if m := a.nextMessage(); m.GetRoom() != "chat:b1" || m.GetPayload().GetJson().GetStringValue() != "all" {
		t.Fatalf("a got %v", m)
	}
	if m := b.nextMessage(); m.GetRoom() != "news:b2" {
		t.Fatalf("b got %v", m)
	}
}

// The admin port serves the documented metrics, health and readiness.
func TestAdminEndpoints(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	c, _ := connect(t, n, "m")
	c.mustJoin("chat:metrics")
	c.publish("chat:metrics", "x")
	c.nextMessage()
	get := func(path string) (int, string) {
		resp, err := http.Get(n.AdminURL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Fatalf("healthz %d", code)
	}
	if code, _ := get("/readyz"); code != http.StatusOK {
		t.Fatalf("readyz %d", code)
	}
	_, metrics := get("/metrics")
	for _, name := range []string{
		"roomcast_connections 1", "roomcast_connects_total", "roomcast_messages_in_total",
		"roomcast_messages_out_total", "roomcast_bytes_out_total", "roomcast_rooms",
		"roomcast_publish_enqueue_seconds_bucket", "roomcast_commands_total",
		"grpc_server_handled_total", "go_goroutines",
		"roomcast_wsio_socket_writes_total", "roomcast_wsio_write_batches_total",
	} {
		if !strings.Contains(metrics, name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
}

// grpc.health.v1 answers without credentials (probes); reflection works with them, so
// grpcurl needs no proto files.
func TestHealthAndReflection(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	cc, err := grpc.NewClient(n.ControlAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hr, err := healthpb.NewHealthClient(cc).Check(ctxT(t), &healthpb.HealthCheckRequest{})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health %v %v", hr, err)
	}
	authed, err := grpc.NewClient(n.ControlAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearerCreds(n.ControlToken)))
	if err != nil {
		t.Fatal(err)
	}
	defer authed.Close()
	stream, err := grpc_reflection_v1.NewServerReflectionClient(authed).ServerReflectionInfo(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&grpc_reflection_v1.ServerReflectionRequest{MessageRequest: &grpc_reflection_v1.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range resp.GetListServicesResponse().GetService() {
		found = found || s.GetName() == "roomcast.v1.ControlService"
	}
	if !found {
		t.Fatalf("reflection does not list the control service: %v", resp)
	}
	_ = stream.CloseSend()
}

type bearerCreds string

func (b bearerCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearerCreds) RequireTransportSecurity() bool { return false }

// Namespaces and token keys change without a restart; an invalid change is refused
// whole and the running configuration stays.
func TestLiveReload(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	c, _ := connect(t, n, "r")
	if e := c.join("games:1", nil).GetError(); e.GetCode() != pb.ErrorCode_ERROR_CODE_UNKNOWN_NAMESPACE {
		t.Fatalf("before reload: %v", e)
	}
	cfg := n.App().Config()
	bad := cfg
	bad.Namespaces = append(append([]fabric.Namespace{}, cfg.Namespaces...), fabric.Namespace{Name: "games"}, fabric.Namespace{Name: "bad name"})
	if err := n.App().Reload(bad); err == nil {
		t.Fatal("an invalid namespace list was accepted")
	}
	if e := c.join("games:1", nil).GetError(); e.GetCode() != pb.ErrorCode_ERROR_CODE_UNKNOWN_NAMESPACE {
		t.Fatalf("a refused reload was half-applied: %v", e)
	}
	good := cfg
	good.Namespaces = append(append([]fabric.Namespace{}, cfg.Namespaces...), fabric.Namespace{Name: "games", Presence: true})
	good.JWTSecret = "a-brand-new-secret-for-the-reload-test-0123"
	if err := n.App().Reload(good); err != nil {
		t.Fatal(err)
	}
	c.mustJoin("games:1")
	// Old tokens are refused after the key change; the live connection stays.
	old := mustDial(t, n, dialOpts{})
	old.send(&pb.ClientCommand{Id: 1, Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: n.Token(t, "x", claimsAll())}}})
	if code, _ := old.closeCode(); code != int(pb.CloseCode_CLOSE_CODE_UNAUTHORIZED) {
		t.Fatalf("old-key token after reload: close %d", code)
	}
}
