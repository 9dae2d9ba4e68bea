// Package jwtauth verifies the JSON Web Tokens that WebSocket clients present, and mints
// tokens for development and tests.
//
// Verification is deliberately strict, because a token is all that stands between the
// internet and a room:
//
//   - every key pins one algorithm; a token whose header alg is not exactly that
//     algorithm never verifies with it, so "none" (in any spelling) and key confusion
//     (an HS256 token "signed" with an RSA public key's PEM) cannot succeed;
//   - key material is checked when the Verifier is built: PEMs are parsed, the key type
//     must match the algorithm, HMAC secrets must be at least 32 bytes and may not be a
//     PEM document;
//   - `exp` and `sub` are required; `nbf` and `iat` are honoured; `aud` and `iss` are
//     checked when configured; clocks may disagree by Config.Leeway;
//   - the `kid`, `jku`, `x5u` and `jwk` headers are never fetched or trusted: `kid` only
//     selects among the configured keys, and an unknown kid is rejected.
//
// Concurrency: a *Verifier is safe for concurrent use. Replace swaps the whole key set
// atomically: every Verify call sees either the old or the new configuration, never a
// mix. Mint is a pure function.
package jwtauth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Verify errors wrap exactly one of these sentinels; match them with errors.Is.
var (
	// ErrExpired means the token was valid but its `exp` has passed (beyond the leeway).
	// Clients should fetch a new token; the edge reports it as "token expired".
	ErrExpired = errors.New("token expired")
	// ErrInvalid means the token is malformed, its signature or algorithm is wrong, it
	// names an unknown key, or a required or configured claim is missing or wrong.
	ErrInvalid = errors.New("invalid token")
)

// DefaultLeeway is the clock skew tolerated on exp, nbf and iat when Config.Leeway is 0.
const DefaultLeeway = 5 * time.Second

// MinSecretLen is the shortest HMAC secret accepted, in bytes.
const MinSecretLen = 32

// MinRSABits is the smallest RSA modulus accepted for RS* and PS* keys.
const MinRSABits = 2048

// MaxTokenLen bounds the length of a token Verify will look at, so a hostile client
// cannot make the node decode megabytes of base64 and JSON.
const MaxTokenLen = 16 << 10

// Key is one verification key.
type Key struct {
	// ID is the key id (`kid`). Optional. When set, only tokens whose header kid equals
	// it are verified with this key; when empty, only tokens without a kid are.
	ID string
	// Algorithm is the one JWS algorithm this key verifies: HS256, HS384, HS512, RS256,
	// RS384, RS512, ES256, ES384, PS256 or EdDSA (exact spelling).
	Algorithm string
	// Secret is the HMAC secret for HS* algorithms, at least MinSecretLen bytes.
	Secret []byte
	// PublicKey is the PEM-encoded public key (PKIX, PKCS#1 for RSA, or a certificate)
	// for RS*, PS*, ES* and EdDSA algorithms.
	PublicKey string
}

// Config configures a Verifier.
type Config struct {
	// Keys are the verification keys; at least one. Key IDs must be unique.
	Keys []Key
	// Audience, when set, must be one of the token's `aud` values.
	Audience string
	// Issuer, when set, must equal the token's `iss`.
	Issuer string
	// Leeway is the clock skew tolerated on exp, nbf and iat. 0 means DefaultLeeway;
	// negative is an error.
	Leeway time.Duration
}

// Claims are the verified contents of a token.
type Claims struct {
	// User is the `sub` claim; never empty in a verified token.
	User string
	// Info is the `info` claim: any JSON value, the connection's public info. Nil when
	// absent or null.
	Info json.RawMessage
	// Join lists the room patterns the client may join (claim "join").
	Join []string
	// Publish lists the room patterns the client may publish to (claim "publish").
	Publish []string
	// Read lists the room patterns whose presence and history the client may read
	// (claim "read").
	Read []string
	// Rooms lists rooms the client joins automatically on connect (claim "rooms").
	Rooms []string
	// ExpiresAt is the `exp` claim; never zero in a verified token.
	ExpiresAt time.Time
}

// tokenClaims is the wire form of Claims.
type tokenClaims struct {
	jwt.RegisteredClaims
	Info    json.RawMessage `json:"info,omitempty"`
	Join    []string        `json:"join,omitempty"`
	Publish []string        `json:"publish,omitempty"`
	Read    []string        `json:"read,omitempty"`
	Rooms   []string        `json:"rooms,omitempty"`
}

// algorithms maps every accepted algorithm to the kind of key it needs.
var algorithms = map[string]keyKind{
	"HS256": kindHMAC, "HS384": kindHMAC, "HS512": kindHMAC,
	"RS256": kindRSA, "RS384": kindRSA, "RS512": kindRSA, "PS256": kindRSA,
	"ES256": kindP256, "ES384": kindP384,
	"EdDSA": kindEd25519,
}

type keyKind int

const (
	kindHMAC keyKind = iota + 1
	kindRSA
	kindP256
	kindP384
	kindEd25519
)

// parsedKey is a validated Key with its material decoded.
type parsedKey struct {
	id  string
	alg string
	key any // []byte, *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// state is one immutable configuration; Replace swaps it as a whole.
type state struct {
	keys   []parsedKey
	parser *jwt.Parser
}

// Verifier verifies tokens against a set of keys. Build it with New.
type Verifier struct {
	st atomic.Pointer[state]
	// now is the clock; tests replace it before first use.
	now func() time.Time
}

// New validates cfg and returns a Verifier for it.
func New(cfg Config) (*Verifier, error) {
	v := &Verifier{now: time.Now}
	if err := v.Replace(cfg); err != nil {
		return nil, err
	}
	return v, nil
}

// Replace validates cfg and, only if all of it is valid, makes it the live
// configuration (for example after a key rotation in the live config). On error the
// previous configuration stays in force.
func (v *Verifier) Replace(cfg Config) error {
	st, err := v.build(cfg)
	if err != nil {
		return err
	}
	v.st.Store(st)
	return nil
}

func (v *Verifier) build(cfg Config) (*state, error) {
	if len(cfg.Keys) == 0 {
		return nil, errors.New("jwtauth: no keys configured")
	}
	if cfg.Leeway < 0 {
		return nil, errors.New("jwtauth: negative leeway")
	}
	leeway := cfg.Leeway
	if leeway == 0 {
		leeway = DefaultLeeway
	}
	st := &state{keys: make([]parsedKey, 0, len(cfg.Keys))}
	ids := make(map[string]bool)
	algs := make(map[string]bool)
	var methods []string
	for i, k := range cfg.Keys {
		pk, err := parseKey(k)
		if err != nil {
			return nil, fmt.Errorf("jwtauth: key %d (kid %q): %w", i, k.ID, err)
		}
		if k.ID != "" {
			if ids[k.ID] {
				return nil, fmt.Errorf("jwtauth: key id %q used twice", k.ID)
			}
			ids[k.ID] = true
		}
		if !algs[pk.alg] {
			algs[pk.alg] = true
			methods = append(methods, pk.alg)
		}
		st.keys = append(st.keys, pk)
	}
	opts := []jwt.ParserOption{
		// The union of the keys' algorithms; the keyfunc then pins each key to its own.
		jwt.WithValidMethods(methods),
		jwt.WithLeeway(leeway),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithTimeFunc(func() time.Time { return v.now() }),
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	st.parser = jwt.NewParser(opts...)
	return st, nil
}

// parseKey checks that k's material fits its algorithm and decodes it.
func parseKey(k Key) (parsedKey, error) {
	kind, ok := algorithms[k.Algorithm]
	if !ok {
		return parsedKey{}, fmt.Errorf("unsupported algorithm %q", k.Algorithm)
	}
	pk := parsedKey{id: k.ID, alg: k.Algorithm}
	if kind == kindHMAC {
		if k.PublicKey != "" {
			return parsedKey{}, fmt.Errorf("%s takes a secret, not a public key", k.Algorithm)
		}
		if len(k.Secret) < MinSecretLen {
			return parsedKey{}, fmt.Errorf("%s secret shorter than %d bytes", k.Algorithm, MinSecretLen)
		}
		// A PEM as an HMAC secret is the classic key-confusion set-up: refuse it.
		if bytes.Contains(k.Secret, []byte("-----BEGIN")) {
			return parsedKey{}, errors.New("hmac secret looks like a pem key")
		}
		pk.key = bytes.Clone(k.Secret)
		return pk, nil
	}
	if len(k.Secret) > 0 {
		return parsedKey{}, fmt.Errorf("%s takes a public key, not a secret", k.Algorithm)
	}
	pub, err := parsePublicPEM(k.PublicKey)
	if err != nil {
		return parsedKey{}, err
	}
	switch kind {
	case kindRSA:
		rk, ok := pub.(*rsa.PublicKey)
		if !ok {
			return parsedKey{}, fmt.Errorf("%s needs an rsa public key, got %T", k.Algorithm, pub)
		}
		if rk.N.BitLen() < MinRSABits {
			return parsedKey{}, fmt.Errorf("rsa key of %d bits is shorter than %d", rk.N.BitLen(), MinRSABits)
		}
		pk.key = rk
	case kindP256, kindP384:
		ek, ok := pub.(*ecdsa.PublicKey)
		want := elliptic.P256()
		if kind == kindP384 {
			want = elliptic.P384()
		}
		if !ok || ek.Curve != want {
			return parsedKey{}, fmt.Errorf("%s needs an ecdsa %s public key", k.Algorithm, want.Params().Name)
		}
		pk.key = ek
	case kindEd25519:
		ek, ok := pub.(ed25519.PublicKey)
		if !ok {
			return parsedKey{}, fmt.Errorf("EdDSA needs an ed25519 public key, got %T", pub)
		}
		pk.key = ek
	}
	return pk, nil
}

// parsePublicPEM decodes a PKIX or PKCS#1 public key, or a certificate's public key.
func parsePublicPEM(s string) (crypto.PublicKey, error) {
	if s == "" {
		return nil, errors.New("public key is empty")
	}
	block, rest := pem.Decode([]byte(s))
	if block == nil {
		return nil, errors.New("public key is not pem")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("public key pem has trailing data")
	}
	switch block.Type {
	case "PUBLIC KEY":
		return x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		return x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		return c.PublicKey, nil
	}
	return nil, fmt.Errorf("unsupported pem block %q (want a public key or certificate)", block.Type)
}

// Verify checks token and returns its claims. Errors wrap ErrExpired or ErrInvalid.
func (v *Verifier) Verify(token string) (*Claims, error) {
	if len(token) > MaxTokenLen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrInvalid, MaxTokenLen)
	}
	st := v.st.Load()
	var tc tokenClaims
	_, err := st.parser.ParseWithClaims(token, &tc, st.keyfunc)
	if err != nil {
		// The library checks the signature before the claims, so an expiry is only
		// reported for an authentic token, and only when expiry is all that is wrong
		// with it: a refreshed token would not fix a wrong audience.
		if onlyExpired(err) && tc.Subject != "" {
			return nil, fmt.Errorf("%w: %v", ErrExpired, err)
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if tc.Subject == "" {
		return nil, fmt.Errorf("%w: sub is missing", ErrInvalid)
	}
	c := &Claims{
		User:      tc.Subject,
		Join:      tc.Join,
		Publish:   tc.Publish,
		Read:      tc.Read,
		Rooms:     tc.Rooms,
		ExpiresAt: tc.ExpiresAt.Time,
	}
	if len(tc.Info) > 0 && !bytes.Equal(tc.Info, []byte("null")) {
		c.Info = tc.Info
	}
	return c, nil
}

// onlyExpired reports whether err is an expiry and no other claim failure.
func onlyExpired(err error) bool {
	if !errors.Is(err, jwt.ErrTokenExpired) {
		return false
	}
	for _, other := range []error{
		jwt.ErrTokenInvalidAudience, jwt.ErrTokenInvalidIssuer, jwt.ErrTokenNotValidYet,
		jwt.ErrTokenUsedBeforeIssued, jwt.ErrTokenRequiredClaimMissing, jwt.ErrTokenInvalidSubject,
		jwt.ErrTokenSignatureInvalid, jwt.ErrTokenMalformed, jwt.ErrTokenUnverifiable,
	} {
		if errors.Is(err, other) {
			return false
		}
	}
	return true
}

// keyfunc picks the candidate keys for a token: the key named by its kid, or every
// key without an id; in both cases only keys pinned to the token's exact alg.
func (st *state) keyfunc(t *jwt.Token) (any, error) {
	alg, _ := t.Header["alg"].(string)
	var kid string
	if raw, present := t.Header["kid"]; present {
		s, ok := raw.(string)
		if !ok || s == "" {
			return nil, errors.New("kid header is not a non-empty string")
		}
		kid = s
	}
	var set jwt.VerificationKeySet
	known := false
	for _, k := range st.keys {
		if k.id != kid {
			continue
		}
		known = true
		if k.alg == alg {
			set.Keys = append(set.Keys, k.key)
		}
	}
	switch {
	case kid != "" && !known:
		return nil, fmt.Errorf("unknown kid %q", kid)
	case len(set.Keys) == 0:
		return nil, fmt.Errorf("no key for alg %q", alg)
	}
	return set, nil
}

// MintOption adjusts a token built by Mint.
type MintOption func(*mintOptions)

type mintOptions struct {
	claims  jwt.MapClaims
	headers map[string]any
	now     time.Time
}

// WithAudience sets the `aud` claim.
func WithAudience(aud ...string) MintOption {
	return func(o *mintOptions) { o.claims["aud"] = aud }
}

// WithIssuer sets the `iss` claim.
func WithIssuer(iss string) MintOption {
	return func(o *mintOptions) { o.claims["iss"] = iss }
}

// WithNotBefore sets the `nbf` claim.
func WithNotBefore(t time.Time) MintOption {
	return func(o *mintOptions) { o.claims["nbf"] = t.Unix() }
}

// WithIssuedAt sets the `iat` claim (Mint sets it to the current time by default).
func WithIssuedAt(t time.Time) MintOption {
	return func(o *mintOptions) { o.claims["iat"] = t.Unix() }
}

// WithNow sets the time Mint treats as now, for iat and the ttl-based exp.
func WithNow(t time.Time) MintOption {
	return func(o *mintOptions) { o.now = t }
}

// WithClaim sets an arbitrary claim, overriding what Mint would put there (useful in
// tests to build malformed tokens).
func WithClaim(name string, value any) MintOption {
	return func(o *mintOptions) { o.claims[name] = value }
}

// WithHeader sets an arbitrary header field (for example `jku`, to test that it is
// ignored). The `alg` header cannot be changed this way.
func WithHeader(name string, value any) MintOption {
	return func(o *mintOptions) { o.headers[name] = value }
}

// Mint signs c as a token for development and tests. alg is one of the algorithms Key
// accepts; key is the HMAC secret ([]byte) for HS* or the private key (a crypto.Signer:
// *rsa.PrivateKey, *ecdsa.PrivateKey or ed25519.PrivateKey) otherwise. kid, when
// non-empty, goes into the header. When ttl > 0, exp is now+ttl; otherwise exp is
// c.ExpiresAt, and a zero ExpiresAt leaves exp out (such a token never verifies; tests
// use it). Empty fields of c are left out of the token.
func Mint(alg string, kid string, key any, c Claims, ttl time.Duration, opts ...MintOption) (string, error) {
	if _, ok := algorithms[alg]; !ok {
		return "", fmt.Errorf("jwtauth: unsupported algorithm %q", alg)
	}
	method := jwt.GetSigningMethod(alg)
	if method == nil {
		return "", fmt.Errorf("jwtauth: unsupported algorithm %q", alg)
	}
	o := mintOptions{claims: jwt.MapClaims{}, headers: map[string]any{}, now: time.Now()}
	for _, opt := range opts {
		opt(&o)
	}
	claims := jwt.MapClaims{"iat": o.now.Unix()}
	if c.User != "" {
		claims["sub"] = c.User
	}
	switch {
	case ttl > 0:
		claims["exp"] = o.now.Add(ttl).Unix()
	case !c.ExpiresAt.IsZero():
		claims["exp"] = c.ExpiresAt.Unix()
	}
	if len(c.Info) > 0 {
		if !json.Valid(c.Info) {
			return "", errors.New("jwtauth: info is not valid json")
		}
		claims["info"] = c.Info
	}
	for name, list := range map[string][]string{"join": c.Join, "publish": c.Publish, "read": c.Read, "rooms": c.Rooms} {
		if len(list) > 0 {
			claims[name] = list
		}
	}
	for name, val := range o.claims {
		claims[name] = val
	}
	t := jwt.NewWithClaims(method, claims)
	if kid != "" {
		t.Header["kid"] = kid
	}
	for name, val := range o.headers {
		if name != "alg" {
			t.Header[name] = val
		}
	}
	s, err := t.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("jwtauth: sign: %w", err)
	}
	return s, nil
}

// MarshalPublicKey encodes a public key (*rsa.PublicKey, *ecdsa.PublicKey or
// ed25519.PublicKey) as a PKIX PEM, the form Key.PublicKey takes.
func MarshalPublicKey(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("jwtauth: %w", err)
	}
	return strings.TrimSpace(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))) + "\n", nil
}
