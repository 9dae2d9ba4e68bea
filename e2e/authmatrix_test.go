package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/roomcast/roomcast/conformance"
	pb "github.com/roomcast/roomcast/gen/roomcast/v1"
	"github.com/roomcast/roomcast/internal/app"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/testnode"
)

// controlMethods walks ControlService's descriptor, so a new RPC is covered without
// editing the test.
func controlMethods(t *testing.T) []protoreflect.MethodDescriptor {
	t.Helper()
	sd := pb.File_roomcast_v1_control_proto.Services().ByName("ControlService")
	if sd == nil {
		t.Fatal("no ControlService in the descriptor")
	}
	var out []protoreflect.MethodDescriptor
	for i := range sd.Methods().Len() {
		out = append(out, sd.Methods().Get(i))
	}
	if len(out) < 10 {
		t.Fatalf("only %d methods in ControlService", len(out))
	}
	return out
}

// invoke calls method with an empty request over conn and returns the call's error.
// Streams send one empty request (when the client streams) and wait for the first
// response; a stream that authenticates and then waits for events ends at the
// context's deadline.
func invoke(ctx context.Context, conn *grpc.ClientConn, md protoreflect.MethodDescriptor) error {
	full := "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
	newMsg := func(d protoreflect.MessageDescriptor) proto.Message {
		mt, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName())
		if err != nil {
			panic(err)
		}
		return mt.New().Interface()
	}
	if !md.IsStreamingClient() && !md.IsStreamingServer() {
		return conn.Invoke(ctx, full, newMsg(md.Input()), newMsg(md.Output()))
	}
	desc := &grpc.StreamDesc{StreamName: string(md.Name()), ServerStreams: md.IsStreamingServer(), ClientStreams: md.IsStreamingClient()}
	st, err := conn.NewStream(ctx, desc, full)
	if err != nil {
		return err
	}
	if err := st.SendMsg(newMsg(md.Input())); err != nil && err != io.EOF {
		return err
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	return st.RecvMsg(newMsg(md.Output()))
}

// authFailed reports whether err is the refusal of a call for its credentials: the
// API's Unauthenticated, or a TLS handshake the server broke off (Unavailable).
func authFailed(err error) bool {
	c := status.Code(err)
	return c == codes.Unauthenticated || c == codes.Unavailable
}

type tokenCreds struct{ tok string }

func (b tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.tok}, nil
}
func (tokenCreds) RequireTransportSecurity() bool { return false }

func grpcConn(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestControlAuthEveryRPC calls every ControlService RPC without credentials and with
// a wrong token (the credentials must be refused), and with the right token (they
// must pass; the empty request may then fail for other reasons).
func TestControlAuthEveryRPC(t *testing.T) {
	n := testnode.Start(t, testnode.Options{})
	creds := grpc.WithTransportCredentials(insecure.NewCredentials())
	clients := map[string]*grpc.ClientConn{
		"no token":      grpcConn(t, n.ControlAddr, creds),
		"wrong token":   grpcConn(t, n.ControlAddr, creds, grpc.WithPerRPCCredentials(tokenCreds{"not-" + n.ControlToken})),
		"wrong scheme":  grpcConn(t, n.ControlAddr, creds, grpc.WithPerRPCCredentials(basicCreds{n.ControlToken})),
		"correct token": grpcConn(t, n.ControlAddr, creds, grpc.WithPerRPCCredentials(tokenCreds{n.ControlToken})),
	}
	for _, md := range controlMethods(t) {
		t.Run(string(md.Name()), func(t *testing.T) {
			for name, conn := range clients {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				err := invoke(ctx, conn, md)
				cancel()
				if name == "correct token" {
					if status.Code(err) == codes.Unauthenticated {
						t.Errorf("%s: refused: %v", name, err)
					}
					continue
				}
				if status.Code(err) != codes.Unauthenticated {
					t.Errorf("%s: %v, want Unauthenticated", name, err)
				}
			}
		})
	}
}

type basicCreds struct{ tok string }

func (b basicCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Basic " + b.tok}, nil
}
func (basicCreds) RequireTransportSecurity() bool { return false }

// pki is a throwaway CA with a server certificate and client certificates.
type pki struct {
	dir                          string
	ca, otherCA                  *x509.Certificate
	caKey, otherKey              *ecdsa.PrivateKey
	caFile, serverCert, serverKy string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	p.ca, p.caKey = selfSigned(t, "roomcast test ca")
	p.otherCA, p.otherKey = selfSigned(t, "somebody else's ca")
	p.caFile = p.write(t, "ca.pem", "CERTIFICATE", p.ca.Raw)
	der, key := p.issue(t, p.ca, p.caKey, "127.0.0.1", true)
	p.serverCert = p.write(t, "server.pem", "CERTIFICATE", der)
	p.serverKy = p.write(t, "server-key.pem", "PRIVATE KEY", key)
	return p
}

func selfSigned(t *testing.T, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// issue signs a leaf certificate for cn; server certificates name 127.0.0.1.
func (p *pki) issue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, server bool) (der, keyDER []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err = x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der, keyDER
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// clientTLS trusts the test CA and presents a certificate signed by ca (none when ca
// is nil).
func (p *pki) clientTLS(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey) credentials.TransportCredentials {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(p.ca)
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if ca != nil {
		der, key := p.issue(t, ca, caKey, "backend", false)
		k, err := x509.ParsePKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: k}}
	}
	return credentials.NewTLS(cfg)
}

// TestControlMTLSEveryRPC runs a node whose control API requires client certificates
// and calls every RPC with a trusted certificate (admitted), an untrusted one, none
// at all, and none but the right bearer token (all refused).
func TestControlMTLSEveryRPC(t *testing.T) {
	p := newPKI(t)
	n := testnode.Start(t, testnode.Options{Configure: func(c *app.Config) {
		c.ControlTLSCert, c.ControlTLSKey, c.ControlClientCA = p.serverCert, p.serverKy, p.caFile
	}})
	clients := map[string]*grpc.ClientConn{
		"trusted certificate":   grpcConn(t, n.ControlAddr, grpc.WithTransportCredentials(p.clientTLS(t, p.ca, p.caKey))),
		"untrusted certificate": grpcConn(t, n.ControlAddr, grpc.WithTransportCredentials(p.clientTLS(t, p.otherCA, p.otherKey))),
		"no certificate":        grpcConn(t, n.ControlAddr, grpc.WithTransportCredentials(p.clientTLS(t, nil, nil))),
		"no certificate, token": grpcConn(t, n.ControlAddr, grpc.WithTransportCredentials(p.clientTLS(t, nil, nil)), grpc.WithPerRPCCredentials(tokenCreds{n.ControlToken})),
		"plaintext with token":  grpcConn(t, n.ControlAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(tokenCreds{n.ControlToken})),
	}
	for _, md := range controlMethods(t) {
		t.Run(string(md.Name()), func(t *testing.T) {
			for name, conn := range clients {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				err := invoke(ctx, conn, md)
				cancel()
				if name == "trusted certificate" {
					if authFailed(err) {
						t.Errorf("%s: refused: %v", name, err)
					}
					continue
				}
				if !authFailed(err) {
					t.Errorf("%s: %v, want the call refused", name, err)
				}
			}
		})
	}
}

// TestTokenExpiryDuringConnection: the sweeper closes a connection whose token
// expires with 4004; a refresh before expiry keeps it open.
func TestTokenExpiryDuringConnection(t *testing.T) {
	n := testnode.Start(t, testnode.Options{Configure: func(c *app.Config) {
		c.PingInterval = 100 * time.Millisecond // the sweeper runs every 50ms
		c.PongTimeout = 5 * time.Second
	}})
	short := func(user string) (string, time.Time) {
		exp := time.Now().Add(time.Second).Truncate(time.Second).Add(time.Second) // exp has second precision
		return n.Token(t, user, jwtauth.Claims{ExpiresAt: exp}), exp
	}
	t.Run("expires", func(t *testing.T) {
		c := mustDial(t, n, dialOpts{})
		tok, exp := short("expiring")
		c.connect(tok)
		code, disc := c.closeCode()
		if code != 4004 || disc.GetCode() != 4004 || !disc.GetReconnect() {
			t.Fatalf("close %d, disconnect %v; want 4004 with reconnect", code, disc)
		}
		if early := exp.Sub(time.Now()); early > 0 {
			t.Fatalf("closed %v before the token expired", early)
		}
	})
	t.Run("refreshed", func(t *testing.T) {
		c := mustDial(t, n, dialOpts{})
		tok, exp := short("refreshing")
		c.connect(tok)
		r := c.call(&pb.ClientCommand{Command: &pb.ClientCommand_Refresh{Refresh: &pb.RefreshCommand{Token: n.Token(t, "refreshing", claimsAll())}}})
		if r.GetRefresh() == nil {
			t.Fatalf("refresh: %v", r)
		}
		// The token's lifetime is the input: let it pass, with several sweeps after.
		time.Sleep(time.Until(exp.Add(500 * time.Millisecond)))
		if r := c.join("chat:still-here", nil); r.GetJoin() == nil {
			t.Fatalf("join after the old token's expiry: %v", r)
		}
	})
	t.Run("refresh for another user", func(t *testing.T) {
		c, _ := connect(t, n, "carol")
		r := c.call(&pb.ClientCommand{Command: &pb.ClientCommand_Refresh{Refresh: &pb.RefreshCommand{Token: n.Token(t, "mallory", claimsAll())}}})
		if r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED {
			t.Fatalf("refresh with another user's token: %v", r)
		}
	})
}

// TestCrossSiteUpgradeWithCookie: a browser on another site opening a WebSocket
// sends the user's cookies along; the node refuses the upgrade (403, never 101)
// whatever the request carries.
func TestCrossSiteUpgradeWithCookie(t *testing.T) {
	n := testnode.Start(t, testnode.Options{Configure: func(c *app.Config) {
		c.AllowedOrigins = []string{"https://app.example.com"}
	}})
	valid := n.Token(t, "victim", claimsAll())
	for name, tc := range map[string]struct {
		origin string
		want   int
	}{
		"foreign origin":            {"https://evil.example.com", http.StatusForbidden},
		"allowed origin as prefix":  {"https://app.example.com.evil.example", http.StatusForbidden},
		"allowed origin as suffix":  {"https://evilapp.example.com", http.StatusForbidden},
		"null origin":               {"null", http.StatusForbidden},
		"allowed origin over http":  {"http://app.example.com", http.StatusForbidden},
		"allowed origin (baseline)": {"https://app.example.com", http.StatusSwitchingProtocols},
	} {
		t.Run(name, func(t *testing.T) {
			h := http.Header{
				"Origin": {tc.origin},
				"Cookie": {"session=" + valid + "; roomcast_token=" + valid},
			}
			c, err := conformance.Dial(ctxT(t), n.WSURL, h, "roomcast.v1.json")
			if c != nil {
				defer c.Close()
			}
			if c == nil || c.Response == nil {
				t.Fatalf("no handshake response: %v", err)
			}
			if c.Response.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", c.Response.StatusCode, tc.want)
			}
		})
	}
}

// TestAuthMatrixKeys completes TestAuthMatrix on a node that trusts only an RS256
// key with a kid: key confusion, unknown kids, and the clock rules.
func TestAuthMatrixKeys(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	n := testnode.Start(t, testnode.Options{Configure: func(c *app.Config) {
		c.JWTSecret = ""
		c.JWTKeys = []app.JWTKey{{ID: "k1", Algorithm: "RS256", PublicKey: string(pubPEM)}}
		c.JWTLeeway = 5 * time.Second
	}})
	now := time.Now()
	claims := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "bob", "exp": now.Add(time.Hour).Unix(), "join": []string{"*"}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	sign := func(m jwt.SigningMethod, kid string, k any, c jwt.MapClaims) string {
		tok := jwt.NewWithClaims(m, c)
		if kid != "" {
			tok.Header["kid"] = kid
		}
		s, err := tok.SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, tc := range []struct {
		name   string
		tok    string
		ok     bool
		reason string // of the 4500 close, when refused
	}{
		{"rs256 with kid", sign(jwt.SigningMethodRS256, "k1", key, claims(nil)), true, ""},
		{"hs256 signed with the rsa public key pem", sign(jwt.SigningMethodHS256, "k1", pubPEM, claims(nil)), false, "invalid token"},
		{"hs256 with the public key pem and no kid", sign(jwt.SigningMethodHS256, "", pubPEM, claims(nil)), false, "invalid token"},
		{"hs256 with the public key der", sign(jwt.SigningMethodHS256, "k1", pubDER, claims(nil)), false, "invalid token"},
		{"unknown kid", sign(jwt.SigningMethodRS256, "k2", key, claims(nil)), false, "invalid token"},
		{"right kid, another key", sign(jwt.SigningMethodRS256, "k1", other, claims(nil)), false, "invalid token"},
		{"ps256 not allowed for the key", sign(jwt.SigningMethodPS256, "k1", key, claims(nil)), false, "invalid token"},
		{"expired beyond the leeway", sign(jwt.SigningMethodRS256, "k1", key, claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Minute).Unix() })), false, "token expired"},
		// The leeway tolerates clock skew in the verifier, but the node ends a
		// connection at exp by its own clock (the sweeper would close it at once), so
		// a token already expired here is refused at connect too.
		{"expired within the leeway", sign(jwt.SigningMethodRS256, "k1", key, claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-2 * time.Second).Unix() })), false, "token expired"},
		{"nbf beyond the leeway", sign(jwt.SigningMethodRS256, "k1", key, claims(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Minute).Unix() })), false, "invalid token"},
		{"nbf within the leeway", sign(jwt.SigningMethodRS256, "k1", key, claims(func(c jwt.MapClaims) { c["nbf"] = now.Add(2 * time.Second).Unix() })), true, ""},
		{"iat in the future beyond the leeway", sign(jwt.SigningMethodRS256, "k1", key, claims(func(c jwt.MapClaims) { c["iat"] = now.Add(time.Minute).Unix() })), false, "invalid token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustDial(t, n, dialOpts{})
			if tc.ok {
				if res := c.connect(tc.tok); res.GetUser() != "bob" {
					t.Fatalf("user %q", res.GetUser())
				}
				return
			}
			c.send(&pb.ClientCommand{Id: 1, Command: &pb.ClientCommand_Connect{Connect: &pb.ConnectCommand{Token: tc.tok}}})
			code, disc := c.closeCode()
			if code != 4500 || disc.GetCode() != 4500 || disc.GetReconnect() || !strings.Contains(disc.GetReason(), tc.reason) {
				t.Fatalf("close %d, disconnect %v; want 4500 %q", code, disc, tc.reason)
			}
		})
	}
}
