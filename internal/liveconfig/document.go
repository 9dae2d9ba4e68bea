package liveconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/roomcast/roomcast/fabric"
	"github.com/roomcast/roomcast/internal/jwtauth"
)

// MaxDocumentBytes bounds a live configuration document. etcd refuses requests over
// 1.5 MiB by default; the bound leaves room and keeps a typo from shipping megabytes to
// every node.
const MaxDocumentBytes = 1 << 20

// JWTKey is one token verification key, as written in the config file and in the live
// document (key jwt_keys).
type JWTKey struct {
	// ID is the key id (kid); optional. See jwtauth.Key.
	ID string `yaml:"id,omitempty" json:"id,omitempty"`
	// Algorithm is the one JWS algorithm the key verifies (HS256, RS256, ES256, EdDSA…).
	Algorithm string `yaml:"algorithm" json:"algorithm"`
	// Secret is the HMAC secret of an HS* key.
	Secret string `yaml:"secret,omitempty" json:"secret,omitempty"`
	// PublicKeyFile names a PEM file holding the public key. Config file only: a
	// document in etcd must carry the PEM itself (PublicKey), because a path means
	// nothing on the other nodes.
	PublicKeyFile string `yaml:"public_key_file,omitempty" json:"public_key_file,omitempty"`
	// PublicKey is the PEM-encoded public key of an RS*, PS*, ES* or EdDSA key.
	PublicKey string `yaml:"public_key,omitempty" json:"public_key,omitempty"`
}

// Document is the live part of a node's configuration: the settings a node applies
// without a restart. Its keys are the config file's keys of the same settings, so a
// section can be copied between the two.
//
// A key that is absent (or empty) leaves the node's own value from its file,
// environment or flags in force; see Over. The token keys (jwt_secret and jwt_keys)
// are one setting: a document that sets either replaces the node's whole key set, so
// rotating keys in etcd never leaves an old key accepted by accident.
type Document struct {
	// Namespaces are the room namespaces, with their per-room limits (history_size,
	// history_ttl, max_members, idempotency_window) and options.
	Namespaces []fabric.Namespace `yaml:"namespaces,omitempty" json:"namespaces,omitempty"`
	// JWTSecret is an HS256 client-token secret (a key without kid).
	JWTSecret string `yaml:"jwt_secret,omitempty" json:"jwt_secret,omitempty"`
	// JWTKeys are further client-token verification keys.
	JWTKeys []JWTKey `yaml:"jwt_keys,omitempty" json:"jwt_keys,omitempty"`
	// JWTAudience, when set, is the audience every token must carry.
	JWTAudience string `yaml:"jwt_audience,omitempty" json:"jwt_audience,omitempty"`
	// JWTIssuer, when set, is the issuer every token must carry.
	JWTIssuer string `yaml:"jwt_issuer,omitempty" json:"jwt_issuer,omitempty"`
	// JWTLeeway is the clock skew allowed on exp, nbf and iat (0: the default).
	JWTLeeway time.Duration `yaml:"jwt_leeway,omitempty" json:"jwt_leeway,omitempty"`
}

// Settings are a complete, validated live configuration, ready to be swapped in:
// fabric.Namespaces.Replace and jwtauth.Verifier.Replace accept them without error.
type Settings struct {
	// Namespaces is the namespace table.
	Namespaces []fabric.Namespace
	// JWT is the token verifier's configuration.
	JWT jwtauth.Config
}

// Parse decodes and validates a document as stored in etcd: strict YAML (an unknown
// key is an error, so a typo never passes silently), at most MaxDocumentBytes, no
// public_key_file, and every setting it holds valid (Validate). An empty document is
// valid and sets nothing. `roomcast config set` and the nodes both use Parse, so the
// CLI refuses exactly what a node would refuse on its own.
func Parse(raw []byte) (Document, error) {
	var d Document
	if len(raw) > MaxDocumentBytes {
		return d, fmt.Errorf("live config is %d bytes, more than the %d allowed", len(raw), MaxDocumentBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&d); err != nil && !errors.Is(err, io.EOF) {
		return Document{}, fmt.Errorf("live config: %w", err)
	}
	// A second document in the stream would be silently ignored by a reader that
	// stops at the first one; refuse it instead.
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Document{}, errors.New("live config: more than one YAML document (remove the '---' separator)")
	}
	for _, k := range d.JWTKeys {
		if k.PublicKeyFile != "" {
			return Document{}, fmt.Errorf("live config: jwt key %q: public_key_file is for config files only; put the PEM in public_key", k.ID)
		}
	}
	if err := d.Validate(); err != nil {
		return Document{}, err
	}
	return d, nil
}

// Validate checks every setting the document holds, with the same code a node uses to
// apply them: the namespace table (fabric.NewNamespaces) and, when the document sets
// token keys, the verifier (jwtauth.New). Settings it does not hold are not checked:
// they come from each node.
func (d Document) Validate() error {
	if len(d.Namespaces) > 0 {
		if _, err := fabric.NewNamespaces(d.Namespaces); err != nil {
			return fmt.Errorf("namespaces: %w", err)
		}
	}
	if d.JWTLeeway < 0 {
		return errors.New("jwt: jwt_leeway must not be negative")
	}
	if d.hasKeys() {
		jc, err := d.JWTConfig()
		if err != nil {
			return err
		}
		if _, err := jwtauth.New(jc); err != nil {
			return fmt.Errorf("jwt: %w", err)
		}
	}
	return nil
}

func (d Document) hasKeys() bool { return d.JWTSecret != "" || len(d.JWTKeys) > 0 }

// Over returns base with every setting d holds put over it: d's namespaces replace
// base's when d has any; d's token keys (jwt_secret and jwt_keys together) replace
// base's when d has either; audience, issuer and leeway each replace base's when set.
func (d Document) Over(base Document) Document {
	out := base
	if len(d.Namespaces) > 0 {
		out.Namespaces = d.Namespaces
	}
	if d.hasKeys() {
		out.JWTSecret, out.JWTKeys = d.JWTSecret, d.JWTKeys
	}
	if d.JWTAudience != "" {
		out.JWTAudience = d.JWTAudience
	}
	if d.JWTIssuer != "" {
		out.JWTIssuer = d.JWTIssuer
	}
	if d.JWTLeeway != 0 {
		out.JWTLeeway = d.JWTLeeway
	}
	return out
}

// Settings validates d as a node's complete live configuration — it must hold at least
// one token key — and returns it ready to apply. Public key files are read here.
func (d Document) Settings() (Settings, error) {
	if _, err := fabric.NewNamespaces(d.Namespaces); err != nil {
		return Settings{}, fmt.Errorf("namespaces: %w", err)
	}
	jc, err := d.JWTConfig()
	if err != nil {
		return Settings{}, err
	}
	if len(jc.Keys) == 0 {
		return Settings{}, errors.New("no jwt key configured: set --jwt-secret (or jwt_keys in the config file or the live config), or run with --dev")
	}
	if _, err := jwtauth.New(jc); err != nil {
		return Settings{}, fmt.Errorf("jwt: %w", err)
	}
	return Settings{Namespaces: d.Namespaces, JWT: jc}, nil
}

// JWTConfig builds the token verifier's configuration from the document's token
// settings, reading public key files. It does not insist on a key; Settings does.
func (d Document) JWTConfig() (jwtauth.Config, error) {
	jc := jwtauth.Config{Audience: d.JWTAudience, Issuer: d.JWTIssuer, Leeway: d.JWTLeeway}
	if d.JWTSecret != "" {
		jc.Keys = append(jc.Keys, jwtauth.Key{Algorithm: "HS256", Secret: []byte(d.JWTSecret)})
	}
	for _, k := range d.JWTKeys {
		key := jwtauth.Key{ID: k.ID, Algorithm: k.Algorithm, Secret: []byte(k.Secret), PublicKey: k.PublicKey}
		if k.PublicKeyFile != "" {
			b, err := os.ReadFile(k.PublicKeyFile)
			if err != nil {
				return jc, fmt.Errorf("jwt key %q: %w", k.ID, err)
			}
			key.PublicKey = string(b)
		}
		jc.Keys = append(jc.Keys, key)
	}
	return jc, nil
}
