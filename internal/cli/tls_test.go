package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
)

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate, written as PEM files.
type testPKI struct {
	pool                  *x509.CertPool
	server                tls.Certificate
	caFile                string
	clientCert, clientKey string
	otherCert, otherKey   string // a client certificate from another CA
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	serial := int64(1)
	issue := func(tmpl, parent *x509.Certificate, pub, signer any) *x509.Certificate {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(time.Hour)
		if parent == nil {
			parent = tmpl
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	newCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey) {
		k := newKey()
		return issue(&x509.Certificate{Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign}, nil, &k.PublicKey, k), k
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}

	ca, caKey := newCA("test ca")
	p := &testPKI{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.caFile = write("ca.pem", "CERTIFICATE", ca.Raw)

	sk := newKey()
	sc := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "node"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, &sk.PublicKey, caKey)
	p.server = tls.Certificate{Certificate: [][]byte{sc.Raw}, PrivateKey: sk}

	ck := newKey()
	cc := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "backend"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, &ck.PublicKey, caKey)
	p.clientCert = write("client.pem", "CERTIFICATE", cc.Raw)
	p.clientKey = write("client-key.pem", "PRIVATE KEY", keyDER(ck))

	other, otherKey := newCA("other ca")
	ok := newKey()
	oc := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "stranger"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, other, &ok.PublicKey, otherKey)
	p.otherCert = write("other.pem", "CERTIFICATE", oc.Raw)
	p.otherKey = write("other-key.pem", "PRIVATE KEY", keyDER(ok))
	return p
}

func TestTLS(t *testing.T) {
	pki := newTestPKI(t)
	serverTLS := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pki.server}, MinVersion: tls.VersionTLS12})
	mutualTLS := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pki.server}, MinVersion: tls.VersionTLS12,
		ClientCAs: pki.pool, ClientAuth: tls.RequireAndVerifyClientCert})

	tests := []struct {
		name     string
		creds    credentials.TransportCredentials
		args     []string
		env      map[string]string
		wantCode int
	}{
		{"trusted ca", serverTLS, []string{"--ca-file", pki.caFile}, nil, 0},
		{"ca from environment", serverTLS, nil, map[string]string{EnvCAFile: pki.caFile}, 0},
		{"tls without the ca", serverTLS, []string{"--tls"}, nil, ExitUnavailable},
		{"skip verify", serverTLS, []string{"--insecure-skip-verify"}, nil, 0},
		{"plaintext to a tls server", serverTLS, nil, nil, ExitUnavailable},
		{"mtls with a trusted client", mutualTLS, []string{"--ca-file", pki.caFile, "--cert-file", pki.clientCert, "--key-file", pki.clientKey}, nil, 0},
		{"mtls without a client certificate", mutualTLS, []string{"--ca-file", pki.caFile}, nil, ExitUnavailable},
		{"mtls with an untrusted client", mutualTLS, []string{"--ca-file", pki.caFile, "--cert-file", pki.otherCert, "--key-file", pki.otherKey}, nil, ExitUnavailable},
		{"unreadable ca file", serverTLS, []string{"--ca-file", filepath.Join(t.TempDir(), "nope.pem")}, nil, ExitUsage},
		{"ca file without pem", serverTLS, []string{"--ca-file", pki.clientKey}, nil, ExitUsage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			_, addr := startFake(t, tt.creds)
			args := append(append([]string{"--addr", addr, "--timeout", "5s"}, tt.args...), "stats", "chat:x")
			res := runCLI(context.Background(), t, "", args...)
			if res.code != tt.wantCode {
				t.Errorf("exit %d, want %d (stderr %q)", res.code, tt.wantCode, res.stderr)
			}
		})
	}
}
