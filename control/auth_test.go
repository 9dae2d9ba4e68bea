package control

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/roomcast/roomcast/fabric"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
)

// callMethod invokes a ControlService method generically with an empty request over
// conn and returns the status of its first response.
func callMethod(t *testing.T, conn *grpc.ClientConn, m protoreflect.MethodDescriptor) error {
	t.Helper()
	in, err := protoregistry.GlobalTypes.FindMessageByName(m.Input().FullName())
	if err != nil {
		t.Fatal(err)
	}
	out, err := protoregistry.GlobalTypes.FindMessageByName(m.Output().FullName())
	if err != nil {
		t.Fatal(err)
	}
	full := "/" + string(m.Parent().FullName()) + "/" + string(m.Name())
	desc := &grpc.StreamDesc{StreamName: string(m.Name()), ServerStreams: m.IsStreamingServer(), ClientStreams: m.IsStreamingClient()}
	stream, err := conn.NewStream(testCtx(t), desc, full)
	if err != nil {
		return err
	}
	if err := stream.SendMsg(in.New().Interface()); err != nil {
		// The server may have answered already; its status comes from RecvMsg.
		_ = err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	return stream.RecvMsg(out.New().Interface())
}

// TestEveryMethodRequiresAuth walks the ControlService descriptor so that a new RPC
// cannot slip through without authentication.
func TestEveryMethodRequiresAuth(t *testing.T) {
	// The fake answers a subscription with one event, so StreamEvents returns a
	// message instead of waiting forever with valid credentials.
	f := &fakeFabric{preload: []fabric.Event{{Type: fabric.EventConnect, User: "u"}}}
	_, addr := startServer(t, Config{Fabric: f, Tokens: []string{"other-token", testToken}})
	svc := pb.File_roomcast_v1_control_proto.Services().ByName("ControlService")
	if svc == nil {
		t.Fatal("ControlService not in the descriptor")
	}
	methods := svc.Methods()
	if methods.Len() < 14 {
		t.Fatalf("only %d methods", methods.Len())
	}
	creds := []struct {
		name  string
		token string
		ok    bool
	}{
		{"no token", "", false},
		{"wrong token", "not-the-token", false},
		{"token prefix", testToken[:len(testToken)-1], false},
		{"token with suffix", testToken + "x", false},
		{"right token", testToken, true},
		{"second token", "other-token", true},
	}
	for _, cr := range creds {
		conn := dial(t, addr, cr.token, nil)
		for i := range methods.Len() {
			m := methods.Get(i)
			t.Run(cr.name+"/"+string(m.Name()), func(t *testing.T) {
				err := callMethod(t, conn, m)
				code := status.Code(err)
				if !cr.ok {
					if code != codes.Unauthenticated {
						t.Fatalf("code = %v (%v), want Unauthenticated", code, err)
					}
					return
				}
				if code == codes.Unauthenticated || code == codes.Unimplemented {
					t.Fatalf("code = %v (%v) with valid credentials", code, err)
				}
			})
		}
	}
}

func TestAuthHeaderForms(t *testing.T) {
	_, addr := startServer(t, Config{Fabric: &fakeFabric{}})
	conn := dial(t, addr, "", nil)
	c := pb.NewControlServiceClient(conn)
	for _, tc := range []struct {
		header string
		ok     bool
	}{
		{"Bearer " + testToken, true},
		{"bearer " + testToken, true},
		{"Basic " + testToken, false},
		{testToken, false},
		{"Bearer", false},
		{"Bearer ", false},
	} {
		ctx := testCtx(t)
		_, err := c.ListNodes(metadataCtx(ctx, "authorization", tc.header), &pb.ListNodesRequest{})
		if got := status.Code(err) != codes.Unauthenticated; got != tc.ok {
			t.Errorf("header %q: err %v, want accepted=%v", tc.header, err, tc.ok)
		}
	}
}

func TestInsecureAllowsAnonymous(t *testing.T) {
	_, addr := startServer(t, Config{Fabric: &fakeFabric{}, Insecure: true})
	c := pb.NewControlServiceClient(dial(t, addr, "", nil))
	if _, err := c.ListNodes(testCtx(t), &pb.ListNodesRequest{}); err != nil {
		t.Fatalf("insecure server refused an anonymous call: %v", err)
	}
}

func TestNewValidation(t *testing.T) {
	pool := x509.NewCertPool()
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"no fabric", Config{Tokens: []string{"t"}}, false},
		{"no authentication", Config{Fabric: &fakeFabric{}}, false},
		{"tls without client cas", Config{Fabric: &fakeFabric{}, TLS: &tls.Config{}}, false},
		{"client cas without verification", Config{Fabric: &fakeFabric{}, TLS: &tls.Config{ClientCAs: pool, ClientAuth: tls.RequestClientCert}}, false},
		{"empty token", Config{Fabric: &fakeFabric{}, Tokens: []string{"  "}}, false},
		{"negative max recv", Config{Fabric: &fakeFabric{}, Tokens: []string{"t"}, MaxRecvBytes: -1}, false},
		{"tokens", Config{Fabric: &fakeFabric{}, Tokens: []string{"t"}}, true},
		{"insecure", Config{Fabric: &fakeFabric{}, Insecure: true}, true},
		{"mtls", Config{Fabric: &fakeFabric{}, TLS: &tls.Config{ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Logger = quietLogger()
			s, err := New(tt.cfg)
			if (err == nil) != tt.ok {
				t.Fatalf("New error = %v, want ok=%v", err, tt.ok)
			}
			if s != nil {
				s.Stop()
			}
		})
	}

	t.Run("two servers on one registry", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		s, err := New(Config{Fabric: &fakeFabric{}, Insecure: true, Registerer: reg, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Stop()
		if s2, err := New(Config{Fabric: &fakeFabric{}, Insecure: true, Registerer: reg, Logger: quietLogger()}); err == nil {
			s2.Stop()
			t.Fatal("second registration on the same registry succeeded")
		}
	})
}

// testPKI holds a CA and certificates signed by it, generated per test run.
type testPKI struct {
	pool *x509.CertPool
	ca   *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{pool: pool, ca: ca, key: key}
}

// issue returns a leaf certificate for a server (with a 127.0.0.1 SAN) or a client.
func (p *testPKI) issue(t *testing.T, name string, server bool) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestMTLS(t *testing.T) {
	pki := newPKI(t, "roomcast test ca")
	rogue := newPKI(t, "rogue ca")
	f := &fakeFabric{}
	_, addr := startServer(t, Config{Fabric: f, TLS: &tls.Config{
		Certificates: []tls.Certificate{pki.issue(t, "server", true)},
		ClientCAs:    pki.pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}})
	clientTLS := func(cert *tls.Certificate) *tls.Config {
		c := &tls.Config{RootCAs: pki.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		if cert != nil {
			c.Certificates = []tls.Certificate{*cert}
		}
		return c
	}

	t.Run("trusted client certificate authenticates", func(t *testing.T) {
		cert := pki.issue(t, "backend", false)
		c := pb.NewControlServiceClient(dial(t, addr, "", clientTLS(&cert)))
		resp, err := c.Publish(testCtx(t), &pb.PublishRequest{Room: "r", Payload: textPayload("1")})
		if err != nil {
			t.Fatalf("Publish with a trusted certificate: %v", err)
		}
		if resp.GetPosition().GetOffset() == 0 {
			t.Fatalf("position = %v", resp.GetPosition())
		}
	})
	for name, cert := range map[string]*tls.Certificate{
		"untrusted client certificate": new(rogue.issue(t, "intruder", false)),
		"no client certificate":        nil,
	} {
		t.Run(name+" is rejected", func(t *testing.T) {
			before := len(f.published())
			c := pb.NewControlServiceClient(dial(t, addr, testToken, clientTLS(cert)))
			_, err := c.Publish(testCtx(t), &pb.PublishRequest{Room: "r", Payload: textPayload("1")})
			if err == nil {
				t.Fatal("call succeeded")
			}
			// The handshake fails, so the call never reaches the service.
			if code := status.Code(err); code != codes.Unavailable {
				t.Fatalf("code = %v (%v), want Unavailable from the failed handshake", code, err)
			}
			if len(f.published()) != before {
				t.Fatal("publish reached the fabric")
			}
		})
	}
}

func TestOversizedRequest(t *testing.T) {
	f := &fakeFabric{}
	_, addr := startServer(t, Config{Fabric: f, MaxRecvBytes: 1024})
	c := pb.NewControlServiceClient(dial(t, addr, testToken, nil))
	ctx := testCtx(t)
	_, err := c.Publish(ctx, &pb.PublishRequest{Room: "r", Payload: binPayload(make([]byte, 2048))})
	wantCode(t, err, codes.ResourceExhausted)
	if _, err := c.Publish(ctx, &pb.PublishRequest{Room: "r", Payload: binPayload(make([]byte, 512))}); err != nil {
		t.Fatalf("small request after a large one: %v", err)
	}
	if n := len(f.published()); n != 1 {
		t.Fatalf("%d publishes reached the fabric, want 1", n)
	}
}

func TestHealthIsOpen(t *testing.T) {
	s, addr := startServer(t, Config{Fabric: &fakeFabric{}})
	h := healthpb.NewHealthClient(dial(t, addr, "", nil))
	ctx := testCtx(t)
	for _, svc := range []string{"", healthService} {
		resp, err := h.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("check %q = %v, %v; want SERVING without credentials", svc, resp, err)
		}
	}
	s.SetServing(false)
	for _, svc := range []string{"", healthService} {
		resp, err := h.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("check %q while draining = %v, %v; want NOT_SERVING", svc, resp, err)
		}
	}
	s.SetServing(true)
	if resp, err := h.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("check after SetServing(true) = %v, %v", resp, err)
	}
}

func TestReflectionRequiresAuth(t *testing.T) {
	_, addr := startServer(t, Config{Fabric: &fakeFabric{}, Reflection: true})
	list := func(token string) ([]string, error) {
		rc := reflectionpb.NewServerReflectionClient(dial(t, addr, token, nil))
		stream, err := rc.ServerReflectionInfo(testCtx(t))
		if err != nil {
			return nil, err
		}
		// On io.EOF the server has already ended the call; Recv returns its status.
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil && err != io.EOF {
			return nil, err
		}
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		stream.CloseSend()
		var names []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		return names, nil
	}
	_, err := list("")
	wantCode(t, err, codes.Unauthenticated)
	names, err := list(testToken)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(names, ","), "roomcast.v1.ControlService") {
		t.Fatalf("services = %v", names)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := &fakeFabric{}
	_, addr := startServer(t, Config{Fabric: f, Registerer: reg})
	c := pb.NewControlServiceClient(dial(t, addr, testToken, nil))
	ctx := testCtx(t)
	if _, err := c.Publish(ctx, &pb.PublishRequest{Room: "r", Payload: textPayload("1")}); err != nil {
		t.Fatal(err)
	}
	_, _ = c.Publish(ctx, &pb.PublishRequest{})
	anon := pb.NewControlServiceClient(dial(t, addr, "", nil))
	_, _ = anon.Publish(ctx, &pb.PublishRequest{})

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "grpc_server_handled_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["grpc_method"] == "Publish" {
				counts[labels["grpc_code"]] = m.GetCounter().GetValue()
			}
		}
	}
	if counts["OK"] != 1 || counts["InvalidArgument"] != 1 || counts["Unauthenticated"] != 1 {
		t.Fatalf("Publish counts by code = %v", counts)
	}
}
