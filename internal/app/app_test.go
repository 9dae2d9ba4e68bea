package app

import (
	"testing"

	"github.com/roomcast/roomcast/fabric"
)

func TestEmbeddedNamespacesAreValid(t *testing.T) {
	c := Defaults()
	list, err := c.NamespaceList()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := fabric.NewNamespaces(list)
	if err != nil {
		t.Fatal(err)
	}
	for _, room := range []string{"lobby", "chat:lobby", "feed:prices"} {
		if _, err := ns.Lookup(room); err != nil {
			t.Errorf("default namespaces do not cover %q: %v", room, err)
		}
	}
}

func TestValidateRefusesUnsafeOrIncompleteSettings(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"no control credentials": func(c *Config) { c.ControlToken = nil },
		"bad transport":          func(c *Config) { c.Transport = "carrier-pigeon" },
		"ws path":                func(c *Config) { c.WSPath = "ws" },
		"half tls":               func(c *Config) { c.ControlTLSCert = "cert.pem" },
		"mtls without tls":       func(c *Config) { c.ControlClientCA = "ca.pem" },
		"short old gossip key": func(c *Config) {
			c.EtcdEndpoints, c.ClusterName = []string{"127.0.0.1:2379"}, "c"
			c.GossipKey, c.PeerSecret = "0123456789abcdef", "0123456789abcdef"
			c.GossipOldKeys = []string{"short"}
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := Defaults()
			c.ControlToken = []string{"t"}
			mutate(&c)
			if c.Validate() == nil {
				t.Fatal("accepted")
			}
		})
	}
	c := Defaults()
	if _, err := c.JWTConfig(); err == nil {
		t.Fatal("a node without any jwt key was accepted")
	}
}
