package jwtauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// now is the fixed clock of every test, so expiry cases do not depend on timing.
var now = time.Unix(1_800_000_000, 0)

var secret = []byte("0123456789abcdef0123456789abcdef-test-secret")

// testKeys holds generated key pairs, built once: RSA generation is slow under -race.
type testKeys struct {
	rsa      *rsa.PrivateKey
	rsaPEM   string
	rsa2     *rsa.PrivateKey
	ec       *ecdsa.PrivateKey
	ecPEM    string
	ec384    *ecdsa.PrivateKey
	ec384PEM string
	ed       ed25519.PrivateKey
	edPEM    string
}

var keysOnce = sync.OnceValue(func() *testKeys {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	k := &testKeys{}
	var err error
	k.rsa, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.rsa2, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.ec384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	must(err)
	_, k.ed, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	k.rsaPEM, err = MarshalPublicKey(&k.rsa.PublicKey)
	must(err)
	k.ecPEM, err = MarshalPublicKey(&k.ec.PublicKey)
	must(err)
	k.ec384PEM, err = MarshalPublicKey(&k.ec384.PublicKey)
	must(err)
	k.edPEM, err = MarshalPublicKey(k.ed.Public())
	must(err)
	return k
})

func newVerifier(t testing.TB, cfg Config) *Verifier {
	t.Helper()
	v, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	v.now = func() time.Time { return now }
	return v
}

func mint(t testing.TB, alg, kid string, key any, c Claims, ttl time.Duration, opts ...MintOption) string {
	t.Helper()
	s, err := Mint(alg, kid, key, c, ttl, append([]MintOption{WithNow(now)}, opts...)...)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	return s
}

// rawToken assembles a token from raw JSON header and claims and a raw signature.
func rawToken(header, claims string, sig []byte) string {
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(claims)) + "." + enc.EncodeToString(sig)
}

func TestVerifyMatrix(t *testing.T) {
	k := keysOnce()
	user := Claims{User: "alice"}
	hmacCfg := Config{Keys: []Key{{Algorithm: "HS256", Secret: secret}}}
	rsaCfg := Config{Keys: []Key{{Algorithm: "RS256", PublicKey: k.rsaPEM}}}
	validClaims := `{"sub":"alice","exp":` + itoa(now.Add(time.Hour).Unix()) + `}`

	tests := []struct {
		name    string
		cfg     Config
		token   func(t *testing.T) string
		wantErr error // nil: must verify
	}{
		{"hs256 ok", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour)
		}, nil},
		{"alg none lowercase", hmacCfg, func(*testing.T) string {
			return rawToken(`{"alg":"none","typ":"JWT"}`, validClaims, nil)
		}, ErrInvalid},
		{"alg None", hmacCfg, func(*testing.T) string {
			return rawToken(`{"alg":"None"}`, validClaims, nil)
		}, ErrInvalid},
		{"alg NONE", hmacCfg, func(*testing.T) string {
			return rawToken(`{"alg":"NONE"}`, validClaims, nil)
		}, ErrInvalid},
		{"alg nOnE with signature", hmacCfg, func(*testing.T) string {
			return rawToken(`{"alg":"nOnE"}`, validClaims, []byte("x"))
		}, ErrInvalid},
		{"alg none with kid", Config{Keys: []Key{{ID: "k1", Algorithm: "HS256", Secret: secret}}}, func(*testing.T) string {
			return rawToken(`{"alg":"none","kid":"k1"}`, validClaims, nil)
		}, ErrInvalid},
		{"alg missing", hmacCfg, func(*testing.T) string {
			return rawToken(`{"typ":"JWT"}`, validClaims, []byte("x"))
		}, ErrInvalid},
		{"hs256 signed with rsa public key pem (key confusion)", rsaCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", []byte(k.rsaPEM), user, time.Hour)
		}, ErrInvalid},
		{"hs256 with rsa pem, rsa key has kid", Config{Keys: []Key{{ID: "r", Algorithm: "RS256", PublicKey: k.rsaPEM}}}, func(t *testing.T) string {
			return mint(t, "HS256", "r", []byte(k.rsaPEM), user, time.Hour)
		}, ErrInvalid},
		{"disallowed alg hs512 for hs256 key", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS512", "", secret, user, time.Hour)
		}, ErrInvalid},
		{"disallowed alg ps256 for rs256 key", rsaCfg, func(t *testing.T) string {
			return mint(t, "PS256", "", k.rsa, user, time.Hour)
		}, ErrInvalid},
		{"kid matches but alg differs", Config{Keys: []Key{
			{ID: "a", Algorithm: "HS256", Secret: secret},
			{ID: "b", Algorithm: "HS512", Secret: secret},
		}}, func(t *testing.T) string {
			return mint(t, "HS512", "a", secret, user, time.Hour)
		}, ErrInvalid},
		{"tampered signature", hmacCfg, func(t *testing.T) string {
			s := mint(t, "HS256", "", secret, user, time.Hour)
			i := strings.LastIndexByte(s, '.')
			sig, _ := base64.RawURLEncoding.DecodeString(s[i+1:])
			sig[0] ^= 1
			return s[:i+1] + base64.RawURLEncoding.EncodeToString(sig)
		}, ErrInvalid},
		{"tampered claims", hmacCfg, func(t *testing.T) string {
			s := mint(t, "HS256", "", secret, user, time.Hour)
			parts := strings.Split(s, ".")
			parts[1] = base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"mallory","exp":` + itoa(now.Add(time.Hour).Unix()) + `}`))
			return strings.Join(parts, ".")
		}, ErrInvalid},
		{"wrong secret", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", []byte("another-secret-of-more-than-32-bytes!!"), user, time.Hour)
		}, ErrInvalid},
		{"rs256 signed by another key", rsaCfg, func(t *testing.T) string {
			return mint(t, "RS256", "", k.rsa2, user, time.Hour)
		}, ErrInvalid},
		{"unknown kid", Config{Keys: []Key{{ID: "k1", Algorithm: "HS256", Secret: secret}}}, func(t *testing.T) string {
			return mint(t, "HS256", "k2", secret, user, time.Hour)
		}, ErrInvalid},
		{"kid when keys have none", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "k1", secret, user, time.Hour)
		}, ErrInvalid},
		{"no kid when key has one", Config{Keys: []Key{{ID: "k1", Algorithm: "HS256", Secret: secret}}}, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour)
		}, ErrInvalid},
		{"kid not a string", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour, WithHeader("kid", 7))
		}, ErrInvalid},
		{"matching kid ok", Config{Keys: []Key{
			{ID: "old", Algorithm: "HS256", Secret: []byte("an-old-secret-that-is-long-enough-xx")},
			{ID: "new", Algorithm: "HS256", Secret: secret},
		}}, func(t *testing.T) string {
			return mint(t, "HS256", "new", secret, user, time.Hour)
		}, nil},
		{"without kid tries each key of the alg", Config{Keys: []Key{
			{Algorithm: "HS256", Secret: []byte("an-old-secret-that-is-long-enough-xx")},
			{Algorithm: "RS256", PublicKey: k.rsaPEM},
			{Algorithm: "HS256", Secret: secret},
		}}, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour)
		}, nil},
		{"jku and x5u headers are ignored, never fetched", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour,
				WithHeader("jku", "http://127.0.0.1:1/keys"), WithHeader("x5u", "http://127.0.0.1:1/cert"))
		}, nil},
		{"embedded jwk header is not trusted", rsaCfg, func(t *testing.T) string {
			return mint(t, "RS256", "", k.rsa2, user, time.Hour, WithHeader("jwk", map[string]any{
				"kty": "RSA", "n": base64.RawURLEncoding.EncodeToString(k.rsa2.N.Bytes()), "e": "AQAB",
			}))
		}, ErrInvalid},
		{"expired beyond leeway", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, Claims{User: "alice", ExpiresAt: now.Add(-time.Minute)}, 0)
		}, ErrExpired},
		{"expired within leeway", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, Claims{User: "alice", ExpiresAt: now.Add(-2 * time.Second)}, 0)
		}, nil},
		{"expired beyond custom leeway", Config{Keys: hmacCfg.Keys, Leeway: time.Second}, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, Claims{User: "alice", ExpiresAt: now.Add(-2 * time.Second)}, 0)
		}, ErrExpired},
		{"expired and tampered is invalid, not expired", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", []byte("another-secret-of-more-than-32-bytes!!"),
				Claims{User: "alice", ExpiresAt: now.Add(-time.Minute)}, 0)
		}, ErrInvalid},
		{"expired with wrong audience is invalid", Config{Keys: hmacCfg.Keys, Audience: "roomcast"}, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, Claims{User: "alice", ExpiresAt: now.Add(-time.Minute)}, 0, WithAudience("other"))
		}, ErrInvalid},
		{"nbf in future", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour, WithNotBefore(now.Add(time.Minute)))
		}, ErrInvalid},
		{"nbf within leeway", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour, WithNotBefore(now.Add(2*time.Second)))
		}, nil},
		{"iat in future", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour, WithIssuedAt(now.Add(time.Minute)))
		}, ErrInvalid},
		{"audience ok", Config{Keys: hmacCfg.Keys, Audience: "roomcast"}, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour, WithAudience("billing", "roomcast"))
		}, nil},
		{"wrong audience", Config{Keys: hmacCfg.Keys, Audience: "roomcast"}, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour, WithAudience("billing"))
		}, ErrInvalid},
		{"missing audience", Config{Keys: hmacCfg.Keys, Audience: "roomcast"}, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour)
		}, ErrInvalid},
		{"issuer ok", Config{Keys: hmacCfg.Keys, Issuer: "https://auth.example.com"}, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour, WithIssuer("https://auth.example.com"))
		}, nil},
		{"wrong issuer", Config{Keys: hmacCfg.Keys, Issuer: "https://auth.example.com"}, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour, WithIssuer("https://evil.example.com"))
		}, ErrInvalid},
		{"no exp", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, 0)
		}, ErrInvalid},
		{"no sub", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, Claims{}, time.Hour)
		}, ErrInvalid},
		{"empty sub", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, Claims{}, time.Hour, WithClaim("sub", ""))
		}, ErrInvalid},
		{"sub not a string", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, Claims{}, time.Hour, WithClaim("sub", 42))
		}, ErrInvalid},
		{"join not a list", hmacCfg, func(t *testing.T) string {
			return mint(t, "HS256", "", secret, user, time.Hour, WithClaim("join", "chat:*"))
		}, ErrInvalid},
		{"rs256 ok", rsaCfg, func(t *testing.T) string {
			return mint(t, "RS256", "", k.rsa, user, time.Hour)
		}, nil},
		{"ps256 ok", Config{Keys: []Key{{Algorithm: "PS256", PublicKey: k.rsaPEM}}}, func(t *testing.T) string {
			return mint(t, "PS256", "", k.rsa, user, time.Hour)
		}, nil},
		{"es256 ok", Config{Keys: []Key{{Algorithm: "ES256", PublicKey: k.ecPEM}}}, func(t *testing.T) string {
			return mint(t, "ES256", "", k.ec, user, time.Hour)
		}, nil},
		{"es384 ok", Config{Keys: []Key{{Algorithm: "ES384", PublicKey: k.ec384PEM}}}, func(t *testing.T) string {
			return mint(t, "ES384", "", k.ec384, user, time.Hour)
		}, nil},
		{"eddsa ok", Config{Keys: []Key{{ID: "ed", Algorithm: "EdDSA", PublicKey: k.edPEM}}}, func(t *testing.T) string {
			return mint(t, "EdDSA", "ed", k.ed, user, time.Hour)
		}, nil},
		{"empty token", hmacCfg, func(*testing.T) string { return "" }, ErrInvalid},
		{"two segments", hmacCfg, func(*testing.T) string { return "abc.def" }, ErrInvalid},
		{"garbage segments", hmacCfg, func(*testing.T) string { return "a.b.c" }, ErrInvalid},
		{"too long", hmacCfg, func(*testing.T) string { return strings.Repeat("a", MaxTokenLen+1) }, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newVerifier(t, tt.cfg)
			c, err := v.Verify(tt.token(t))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if c.User != "alice" || c.ExpiresAt.IsZero() {
					t.Fatalf("claims = %+v", c)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify succeeded with claims %+v; want %v", c, tt.wantErr)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Verify error %q does not match %v", err, tt.wantErr)
			}
			other := ErrExpired
			if tt.wantErr == ErrExpired {
				other = ErrInvalid
			}
			if errors.Is(err, other) {
				t.Fatalf("Verify error %q matches both sentinels", err)
			}
		})
	}
}

func TestVerifyClaims(t *testing.T) {
	v := newVerifier(t, Config{Keys: []Key{{Algorithm: "HS256", Secret: secret}}})
	want := Claims{
		User:    "alice",
		Info:    json.RawMessage(`{"name":"Alice","tags":["a"]}`),
		Join:    []string{"chat:*"},
		Publish: []string{"chat:lobby"},
		Read:    []string{"chat:*", "news:*"},
		Rooms:   []string{"news:today"},
	}
	c, err := v.Verify(mint(t, "HS256", "", secret, want, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if c.User != want.User || string(c.Info) != string(want.Info) ||
		strings.Join(c.Join, ",") != "chat:*" || strings.Join(c.Publish, ",") != "chat:lobby" ||
		strings.Join(c.Read, ",") != "chat:*,news:*" || strings.Join(c.Rooms, ",") != "news:today" {
		t.Fatalf("claims = %+v", c)
	}
	if !c.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Fatalf("ExpiresAt = %v, want %v", c.ExpiresAt, now.Add(time.Hour))
	}

	t.Run("null info is nil", func(t *testing.T) {
		c, err := v.Verify(mint(t, "HS256", "", secret, Claims{User: "bob"}, time.Hour, WithClaim("info", nil)))
		if err != nil {
			t.Fatal(err)
		}
		if c.Info != nil || c.Join != nil {
			t.Fatalf("claims = %+v", c)
		}
	})
}

func TestNewRejectsBadConfig(t *testing.T) {
	k := keysOnce()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	smallPEM, _ := MarshalPublicKey(&small.PublicKey)
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no keys", Config{}},
		{"unknown algorithm", Config{Keys: []Key{{Algorithm: "HS1", Secret: secret}}}},
		{"none algorithm", Config{Keys: []Key{{Algorithm: "none", Secret: secret}}}},
		{"lowercase algorithm", Config{Keys: []Key{{Algorithm: "hs256", Secret: secret}}}},
		{"short secret", Config{Keys: []Key{{Algorithm: "HS256", Secret: []byte("short")}}}},
		{"pem as hmac secret", Config{Keys: []Key{{Algorithm: "HS256", Secret: []byte(k.rsaPEM)}}}},
		{"hmac with public key", Config{Keys: []Key{{Algorithm: "HS256", Secret: secret, PublicKey: k.rsaPEM}}}},
		{"rsa with secret", Config{Keys: []Key{{Algorithm: "RS256", Secret: secret, PublicKey: k.rsaPEM}}}},
		{"rsa without key", Config{Keys: []Key{{Algorithm: "RS256"}}}},
		{"rsa not pem", Config{Keys: []Key{{Algorithm: "RS256", PublicKey: "not a pem"}}}},
		{"rsa alg with ec key", Config{Keys: []Key{{Algorithm: "RS256", PublicKey: k.ecPEM}}}},
		{"rsa too small", Config{Keys: []Key{{Algorithm: "RS256", PublicKey: smallPEM}}}},
		{"es256 with p384 key", Config{Keys: []Key{{Algorithm: "ES256", PublicKey: k.ec384PEM}}}},
		{"es256 with rsa key", Config{Keys: []Key{{Algorithm: "ES256", PublicKey: k.rsaPEM}}}},
		{"eddsa with ec key", Config{Keys: []Key{{Algorithm: "EdDSA", PublicKey: k.ecPEM}}}},
		{"duplicate kid", Config{Keys: []Key{
			{ID: "a", Algorithm: "HS256", Secret: secret},
			{ID: "a", Algorithm: "RS256", PublicKey: k.rsaPEM},
		}}},
		{"negative leeway", Config{Keys: []Key{{Algorithm: "HS256", Secret: secret}}, Leeway: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil {
				t.Fatal("New accepted an invalid config")
			}
		})
	}
}

func TestReplace(t *testing.T) {
	oldSecret := []byte("an-old-secret-that-is-long-enough-xx")
	v := newVerifier(t, Config{Keys: []Key{{Algorithm: "HS256", Secret: oldSecret}}})
	oldTok := mint(t, "HS256", "", oldSecret, Claims{User: "alice"}, time.Hour)
	newTok := mint(t, "HS256", "", secret, Claims{User: "alice"}, time.Hour)

	if err := v.Replace(Config{Keys: []Key{{Algorithm: "HS256", Secret: []byte("short")}}}); err == nil {
		t.Fatal("Replace accepted an invalid config")
	}
	if _, err := v.Verify(oldTok); err != nil {
		t.Fatalf("old config lost after a failed Replace: %v", err)
	}
	if err := v.Replace(Config{Keys: []Key{{Algorithm: "HS256", Secret: secret}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(newTok); err != nil {
		t.Fatalf("new key not used: %v", err)
	}
	if _, err := v.Verify(oldTok); !errors.Is(err, ErrInvalid) {
		t.Fatalf("old key still accepted: %v", err)
	}
}

// TestReplaceConcurrent runs Verify while keys rotate; the race detector checks it.
func TestReplaceConcurrent(t *testing.T) {
	v := newVerifier(t, Config{Keys: []Key{{Algorithm: "HS256", Secret: secret}}})
	tok := mint(t, "HS256", "", secret, Claims{User: "alice"}, time.Hour)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				if _, err := v.Verify(tok); err != nil {
					t.Errorf("Verify: %v", err)
					return
				}
			}
		})
	}
	for range 50 {
		if err := v.Replace(Config{Keys: []Key{{Algorithm: "HS256", Secret: secret}}}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}

func TestMintRejects(t *testing.T) {
	k := keysOnce()
	tests := []struct {
		name string
		alg  string
		key  any
		c    Claims
	}{
		{"none", "none", secret, Claims{User: "a"}},
		{"rsa key for hmac", "HS256", k.rsa, Claims{User: "a"}},
		{"secret for rsa", "RS256", secret, Claims{User: "a"}},
		{"bad info", "HS256", secret, Claims{User: "a", Info: json.RawMessage("{")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Mint(tt.alg, "", tt.key, tt.c, time.Hour); err == nil {
				t.Fatal("Mint succeeded")
			}
		})
	}
}

func itoa(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// FuzzVerify checks that no input crashes Verify and that whatever verifies carries
// the required claims. Seeds live in testdata/fuzz/FuzzVerify.
func FuzzVerify(f *testing.F) {
	f.Add(mint(f, "HS256", "", secret, Claims{User: "alice", Join: []string{"chat:*"}}, time.Hour))
	f.Add(rawToken(`{"alg":"none"}`, `{"sub":"a","exp":1900000000}`, nil))
	f.Add("a.b.c")
	v := newVerifier(f, Config{Keys: []Key{{Algorithm: "HS256", Secret: secret}}, Audience: ""})
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(token)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrExpired) {
				t.Fatalf("error %q wraps neither sentinel", err)
			}
			return
		}
		if c.User == "" || c.ExpiresAt.IsZero() {
			t.Fatalf("verified token without sub or exp: %+v", c)
		}
	})
}
