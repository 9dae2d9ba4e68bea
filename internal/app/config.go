package app

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/roomcast/roomcast/fabric"
	"github.com/roomcast/roomcast/internal/jwtauth"
	"github.com/roomcast/roomcast/internal/liveconfig"
)

// defaultNamespaces are used when neither the config file nor live config names any:
// they let a fresh node be tried at once. Production configs list their own.
//
//go:embed default_namespaces.yaml
var defaultNamespacesYAML []byte

// Config is everything a node needs. The zero value is not usable: start from
// Defaults() and override. Field names double as config-file keys (snake_case) and flag
// names (kebab-case); environment variables are ROOMCAST_<UPPER_SNAKE>.
type Config struct {
	// Name is the node's name; empty picks "<hostname>-<random>" (unique per incarnation).
	Name string `yaml:"name"`
	// Dev turns on development mode: generated (or given) JWT secret and control token
	// printed at start, any origin allowed, dev token endpoint on the client port.
	Dev bool `yaml:"dev"`

	ClientAddr        string        `yaml:"client_addr"`
	WSPath            string        `yaml:"ws_path"`
	ControlAddr       string        `yaml:"control_addr"`
	AdminAddr         string        `yaml:"admin_addr"`
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	AllowedOrigins    []string      `yaml:"allowed_origins"`

	JWTSecret    string        `yaml:"jwt_secret"`
	JWTKeys      []JWTKey      `yaml:"jwt_keys"`
	JWTAudience  string        `yaml:"jwt_audience"`
	JWTIssuer    string        `yaml:"jwt_issuer"`
	JWTLeeway    time.Duration `yaml:"jwt_leeway"`
	ControlToken []string      `yaml:"control_token"`

	ControlInsecure   bool   `yaml:"control_insecure"`
	ControlTLSCert    string `yaml:"control_tls_cert"`
	ControlTLSKey     string `yaml:"control_tls_key"`
	ControlClientCA   string `yaml:"control_client_ca"`
	ControlReflection bool   `yaml:"control_reflection"`
	ControlMaxRecv    int    `yaml:"control_max_recv_bytes"`

	Transport        string        `yaml:"transport"`
	WriteBatching    string        `yaml:"write_batching"`
	Workers          int           `yaml:"workers"`
	FlushWorkers     int           `yaml:"flush_workers"`
	AuthTimeout      time.Duration `yaml:"auth_timeout"`
	PingInterval     time.Duration `yaml:"ping_interval"`
	PongTimeout      time.Duration `yaml:"pong_timeout"`
	MaxFrameBytes    int           `yaml:"max_frame_bytes"`
	MaxQueueBytes    int           `yaml:"max_queue_bytes"`
	MaxQueueMessages int           `yaml:"max_queue_messages"`
	MaxRoomsPerConn  int           `yaml:"max_rooms_per_conn"`
	MaxConnsPerUser  int           `yaml:"max_conns_per_user"`
	CommandRate      float64       `yaml:"command_rate"`
	CommandBurst     int           `yaml:"command_burst"`
	ConnectRate      float64       `yaml:"connect_rate"`
	DrainTimeout     time.Duration `yaml:"drain_timeout"`
	Shards           int           `yaml:"shards"`

	// Cluster mode: set etcd_endpoints to join a cluster; empty runs a standalone node.
	EtcdEndpoints []string `yaml:"etcd_endpoints"`
	ClusterName   string   `yaml:"cluster_name"`
	GossipAddr    string   `yaml:"gossip_addr"`
	PeerAddr      string   `yaml:"peer_addr"`
	AdvertiseHost string   `yaml:"advertise_host"`
	Join          []string `yaml:"join"`
	GossipKey     string   `yaml:"gossip_key"`
	GossipOldKeys []string `yaml:"gossip_old_keys"`
	PeerSecret    string   `yaml:"peer_secret"`

	LogLevel  string `yaml:"log_level"`
	LogFormat string `yaml:"log_format"`

	// Quiet suppresses the development-mode banner (`roomcast dev` prints one for all
	// of its nodes).
	Quiet bool `yaml:"-"`

	// Namespaces configure rooms (config file, or the live config in etcd in cluster
	// mode). Empty: the embedded defaults.
	Namespaces []fabric.Namespace `yaml:"namespaces"`
}

// JWTKey is one token verification key in the config file (and in the live config in
// etcd, which shares the schema).
type JWTKey = liveconfig.JWTKey

// Defaults returns the documented defaults.
func Defaults() Config {
	return Config{
		ClientAddr:        ":8080",
		WSPath:            "/ws",
		ControlAddr:       ":9090",
		AdminAddr:         ":9100",
		ReadHeaderTimeout: 5 * time.Second,
		JWTLeeway:         5 * time.Second,
		ControlReflection: true,
		ControlMaxRecv:    4 << 20,
		Transport:         "auto",
		WriteBatching:     "auto",
		AuthTimeout:       5 * time.Second,
		PingInterval:      25 * time.Second,
		PongTimeout:       10 * time.Second,
		MaxFrameBytes:     64 << 10,
		MaxQueueBytes:     1 << 20,
		MaxQueueMessages:  4096,
		MaxRoomsPerConn:   128,
		MaxConnsPerUser:   64,
		CommandRate:       50,
		CommandBurst:      100,
		ConnectRate:       1000,
		DrainTimeout:      10 * time.Second,
		Shards:            256,
		ClusterName:       "default",
		GossipAddr:        ":7946",
		PeerAddr:          ":7947",
		LogLevel:          "info",
		LogFormat:         "text",
	}
}

// LoadFile reads a YAML config file over c: keys present in the file replace c's values.
// Unknown keys are an error, so a typo never passes silently.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	return c.loadYAML(b, path)
}

func (c *Config) loadYAML(b []byte, name string) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %w", name, err)
	}
	return nil
}

// NamespaceList returns the configured namespaces, or the embedded defaults.
func (c *Config) NamespaceList() ([]fabric.Namespace, error) {
	if len(c.Namespaces) > 0 {
		return c.Namespaces, nil
	}
	return defaultNamespaces()
}

// JWTConfig builds the token verifier's configuration.
func (c *Config) JWTConfig() (jwtauth.Config, error) {
	jc, err := c.liveDocument().JWTConfig()
	if err != nil {
		return jc, err
	}
	if len(jc.Keys) == 0 {
		return jc, errors.New("no jwt key configured: set --jwt-secret (or jwt_keys in the config file), or run with --dev")
	}
	return jc, nil
}

// liveDocument returns the live part of c (namespaces as written, without the
// embedded defaults), in the schema of the live config in etcd.
func (c *Config) liveDocument() liveconfig.Document {
	return liveconfig.Document{
		Namespaces:  c.Namespaces,
		JWTSecret:   c.JWTSecret,
		JWTKeys:     c.JWTKeys,
		JWTAudience: c.JWTAudience,
		JWTIssuer:   c.JWTIssuer,
		JWTLeeway:   c.JWTLeeway,
	}
}

// defaultNamespaces returns the embedded namespaces used when no setting names any.
func defaultNamespaces() ([]fabric.Namespace, error) {
	var d struct {
		Namespaces []fabric.Namespace `yaml:"namespaces"`
	}
	if err := yaml.Unmarshal(defaultNamespacesYAML, &d); err != nil {
		return nil, fmt.Errorf("embedded namespaces: %w", err)
	}
	return d.Namespaces, nil
}

// Validate checks what the components do not check themselves.
func (c *Config) Validate() error {
	switch c.Transport {
	case "auto", "epoll", "goroutine":
	default:
		return fmt.Errorf("transport must be auto, epoll or goroutine, not %q", c.Transport)
	}
	switch c.WriteBatching {
	case "auto", "off":
	default:
		return fmt.Errorf("write batching must be auto or off, not %q", c.WriteBatching)
	}
	if c.WSPath == "" || c.WSPath[0] != '/' {
		return fmt.Errorf("ws path must start with '/', got %q", c.WSPath)
	}
	if !c.ControlInsecure && len(c.ControlToken) == 0 && c.ControlClientCA == "" {
		return errors.New("control API has no credentials: set --control-token, or --control-client-ca for mTLS, or --control-insecure (not for production), or run with --dev")
	}
	if len(c.EtcdEndpoints) > 0 {
		if len(c.GossipKey) < 16 || len(c.PeerSecret) < 16 {
			return errors.New("cluster mode needs --gossip-key and --peer-secret, each at least 16 characters (shared by every node)")
		}
		for _, k := range c.GossipOldKeys {
			if len(k) < 16 {
				return errors.New("every gossip_old_keys entry must be at least 16 characters")
			}
		}
		if c.ClusterName == "" || strings.ContainsAny(c.ClusterName, "/ ") {
			return fmt.Errorf("cluster name %q must be non-empty without '/' or spaces", c.ClusterName)
		}
	}
	if (c.ControlTLSCert == "") != (c.ControlTLSKey == "") {
		return errors.New("control tls needs both --control-tls-cert and --control-tls-key")
	}
	if c.ControlClientCA != "" && c.ControlTLSCert == "" {
		return errors.New("--control-client-ca (mTLS) needs --control-tls-cert and --control-tls-key")
	}
	return nil
}
