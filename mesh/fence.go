package mesh

import (
	"math"
	"net"
	"time"

	"github.com/roomcast/roomcast/mesh/registry"
	"github.com/roomcast/roomcast/mesh/shardmap"
)

// coord is a node's standing in etcd: its registration (a session lease) and the
// shard map bound to that session. It is replaced whole when the node re-registers
// after being fenced.
type coord struct {
	reg *registry.Registry
	sm  *shardmap.ShardMap
}

// smap returns the current shard map.
func (c *cluster) smap() *shardmap.ShardMap { return c.co.Load().sm }

// registry returns the current registration.
func (c *cluster) registry() *registry.Registry { return c.co.Load().reg }

func (c *cluster) regConfig(n registry.Node) registry.Config {
	return registry.Config{Client: c.cfg.Etcd, Cluster: c.cfg.Name, TTL: c.cfg.LeaseTTL, Logger: c.m.cfg.Logger, Node: n}
}

func (c *cluster) newShardMap(reg *registry.Registry) (*shardmap.ShardMap, error) {
	return shardmap.New(shardmap.Config{
		Client: c.cfg.Etcd, Session: reg.Session(), Cluster: c.cfg.Name, Lost: reg.Lost(),
		ID: c.id, Shards: len(c.m.shards), Settle: c.cfg.Settle, Logger: c.m.cfg.Logger,
		Registerer: c.m.cfg.Registerer,
		// Only nodes gossip admitted get shards: one registered in etcd with the
		// wrong gossip key must never own anything.
		Admitted: c.ml.IsMember,
	})
}

// refence handles the loss of the node's registration (its lease expired or was
// revoked on a wrong failure verdict, or etcd was unreachable for a TTL). The shard
// map already reports no shard as served (fencing); refence keeps the state of the
// shards served until now as handoffs — it is final, since serving stopped — so that
// their next owner, or this node if the map still names it when it is back,
// continues them. Then it registers again, with the same ID, retrying until etcd
// accepts it or the cluster stops, and starts a new shard map on the new session.
//
// Epoch safety: a shard this node resumes at the same epoch was served by nobody
// else meanwhile (the epoch would have changed), so its own handoff is exactly the
// state to continue.
func (c *cluster) refence(old *coord) {
	m := c.m
	m.log.Warn("registration lost: fenced; re-registering")
	for i := range m.shards {
		if served := c.ready[i].Swap(0); served != 0 {
			c.stashShard(i, served+1, 0) // fence operations already past the ownership check
		}
	}
	c.applied.Store(math.MaxInt64) // everything served is stashed: rebuilds may take it
	c.wakeMapWaiters()
	_ = old.sm.Close()
	_ = old.reg.Close() // revokes the old lease if etcd still has it, so the ID is free
	backoff := 100 * time.Millisecond
	for c.ctx.Err() == nil {
		node := c.regNode()
		node.Draining = c.draining.Load()
		reg, err := registry.New(c.ctx, c.regConfig(node))
		if err == nil {
			sm, serr := c.newShardMap(reg)
			if serr == nil {
				c.coMu.Lock()
				if c.stopping {
					c.coMu.Unlock()
					_ = sm.Close()
					_ = reg.Close()
					return
				}
				c.co.Store(&coord{reg: reg, sm: sm})
				c.coMu.Unlock()
				m.log.Info("re-registered after fencing")
				return
			}
			_ = reg.Close()
			err = serr
		}
		m.log.Warn("re-registering failed; retrying", "err", err, "in", backoff)
		if !sleepCtx(c.ctx, backoff) {
			return
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// advertised is the address other nodes should dial for a listener at addr: with an
// advertise host, that host and the listener's port; else addr itself (an
// unspecified host is replaced once gossip has chosen its address).
func advertised(addr, host string) string {
	if host == "" {
		return addr
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return net.JoinHostPort(host, port)
}

// unspecified reports whether a listen host means "every interface".
func unspecified(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}
