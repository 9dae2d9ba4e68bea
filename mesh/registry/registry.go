// Package registry registers a roomcast node in etcd and lists the registered nodes.
//
// A node registers under /roomcast/<cluster>/nodes/<id>, where id is its gossip ID
// (unique per incarnation, see package membership), with a value describing its
// addresses. The key is bound to the lease of a concurrency.Session: it disappears when
// the process dies (after the lease TTL) or at once when somebody revokes the lease —
// which is what the shard-map leader does on memberlist's verdict that the node is
// dead. The registered nodes feed gossip joins (Discover) and the shard map's view of
// live nodes.
//
// # Fencing
//
// Lost is closed as soon as this node stops being registered: its session ended (the
// lease expired or keep-alives failed) or its key was deleted (its lease was revoked by
// a peer that believed it dead). A node must then stop acting as an owner at once; it
// comes back only as a new incarnation with a new Registry. A failed or ended watch of
// its own key also closes Lost: unable to tell whether it is still registered, the node
// takes the safe side. Lost is also closed by Close, so "stop serving" has a single
// trigger.
//
// # Concurrency contract
//
// A *Registry is safe for concurrent use. It owns one goroutine (the self-watch that
// closes Lost), started by New and stopped by Close. Watch starts one goroutine per
// call, stopped by cancelling its context. The package has no global state.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// DefaultTTL is the session lease TTL in seconds. A crashed node that nobody declares
// dead disappears from the registry after at most this long.
const DefaultTTL = 5

// Prefix returns the etcd prefix of a cluster: "/roomcast/<cluster>/".
func Prefix(cluster string) string { return "/roomcast/" + cluster + "/" }

// NodesPrefix returns the prefix under which a cluster's nodes register.
func NodesPrefix(cluster string) string { return Prefix(cluster) + "nodes/" }

// NodeKey returns the registration key of a node ID.
func NodeKey(cluster, id string) string { return NodesPrefix(cluster) + id }

// Node is what a node registers about itself.
type Node struct {
	// ID is the node's gossip ID, unique per incarnation.
	ID string `json:"id"`
	// GossipAddr is the host:port peers join for gossip.
	GossipAddr string `json:"gossip,omitempty"`
	// PeerAddr is the host:port of the mesh.v1 peer-link server.
	PeerAddr string `json:"peer,omitempty"`
	// ControlAddr is the host:port of the gRPC control API.
	ControlAddr string `json:"control,omitempty"`
	// ClientAddr is the host:port of the WebSocket listener.
	ClientAddr string `json:"client,omitempty"`
	// Version is the roomcast version the node runs.
	Version string `json:"version,omitempty"`
	// Draining says the node is leaving: the shard-map leader gives its shards to the
	// other nodes (a graceful handover) while it still serves its connections.
	Draining bool `json:"draining,omitempty"`
	// Lease is the etcd lease the registration is bound to (filled in when listed).
	Lease clientv3.LeaseID `json:"-"`
}

// Config configures a Registry.
type Config struct {
	// Client is the etcd client. Required. The Registry does not close it.
	Client *clientv3.Client
	// Cluster is the cluster name (the etcd prefix is /roomcast/<cluster>/). Required.
	Cluster string
	// Node is what to register; Node.ID is required.
	Node Node
	// TTL is the session lease TTL in seconds. Default DefaultTTL.
	TTL int
	// Logger receives the registry's logs. Default slog.Default().
	Logger *slog.Logger
}

// ErrAlreadyRegistered means another live registration holds the node's ID.
var ErrAlreadyRegistered = errors.New("registry: node id already registered")

// Registry is this node's registration in etcd.
type Registry struct {
	cfg     Config
	key     string
	log     *slog.Logger
	session *concurrency.Session

	// validUntil (Unix nanoseconds) is when the lease may have expired in etcd, as
	// far as this node can tell: the last keep-alive answer plus the TTL, less a
	// margin for the answer's travel time and clock rates.
	validUntil atomic.Int64
	kaDone     chan struct{} // closed when followKeepAlive ends
	lost       chan struct{}
	lostOnce   sync.Once
	cancel     context.CancelFunc
	done       chan struct{}
	closed     sync.Once
}

// New creates a session and registers the node under it. It fails with
// ErrAlreadyRegistered if the ID is registered already (IDs are unique per
// incarnation, so that means a second process claims this one's identity).
func New(ctx context.Context, cfg Config) (*Registry, error) {
	if cfg.Client == nil {
		return nil, errors.New("registry: etcd client is required")
	}
	if cfg.Cluster == "" || strings.Contains(cfg.Cluster, "/") {
		return nil, fmt.Errorf("registry: invalid cluster name %q", cfg.Cluster)
	}
	if cfg.Node.ID == "" || strings.Contains(cfg.Node.ID, "/") {
		return nil, fmt.Errorf("registry: invalid node id %q", cfg.Node.ID)
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	val, err := json.Marshal(cfg.Node)
	if err != nil {
		return nil, fmt.Errorf("registry: encode node: %w", err)
	}
	start := time.Now() // the lease is granted after this
	session, err := concurrency.NewSession(cfg.Client, concurrency.WithTTL(cfg.TTL), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("registry: create session: %w", err)
	}
	key := NodeKey(cfg.Cluster, cfg.Node.ID)
	resp, err := cfg.Client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val), clientv3.WithLease(session.Lease()))).
		Commit()
	if err != nil {
		session.Close()
		return nil, fmt.Errorf("registry: register: %w", err)
	}
	if !resp.Succeeded {
		session.Close()
		return nil, fmt.Errorf("%w: %s", ErrAlreadyRegistered, cfg.Node.ID)
	}

	wctx, cancel := context.WithCancel(context.Background())
	r := &Registry{
		cfg:     cfg,
		key:     key,
		log:     cfg.Logger.With("node", cfg.Node.ID),
		session: session,
		lost:    make(chan struct{}),
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	r.renewed(start, int64(cfg.TTL))
	ka, err := cfg.Client.KeepAlive(wctx, session.Lease())
	if err != nil {
		cancel()
		session.Close()
		return nil, fmt.Errorf("registry: keep-alive: %w", err)
	}
	go r.watchSelf(wctx, resp.Header.Revision+1)
	r.kaDone = make(chan struct{})
	go r.followKeepAlive(ka)
	return r, nil
}

// validityMargin is taken off the TTL when computing how long the lease is surely
// valid: it covers the keep-alive answer's travel time and clock-rate differences.
func validityMargin(ttl int64) time.Duration {
	return max(time.Duration(ttl)*time.Second/5, 500*time.Millisecond)
}

func (r *Registry) renewed(at time.Time, ttl int64) {
	r.validUntil.Store(at.Add(time.Duration(ttl)*time.Second - validityMargin(ttl)).UnixNano())
}

// followKeepAlive records every keep-alive answer of the session's lease (the
// session keeps it alive; this is a second listener on the same renewals).
func (r *Registry) followKeepAlive(ka <-chan *clientv3.LeaseKeepAliveResponse) {
	defer close(r.kaDone)
	for resp := range ka {
		if resp.TTL > 0 {
			r.renewed(time.Now(), resp.TTL)
		}
	}
}

// Valid reports whether the registration's lease is surely still valid in etcd: a
// keep-alive was answered within the TTL less a margin. An owner must stop acting
// as one when it is not — before etcd can expire the lease and let another node
// take its shards — even though Lost only closes once the session notices.
func (r *Registry) Valid() bool {
	return time.Now().UnixNano() < r.validUntil.Load()
}

// Session returns the registration's session. Everything a node owns in etcd (its
// election candidacy, ownership) should be bound to it, so it all ends together.
func (r *Registry) Session() *concurrency.Session { return r.session }

// Lost is closed when this node is no longer registered: its session ended, its key was
// deleted (its lease revoked by a peer), or Close was called.
func (r *Registry) Lost() <-chan struct{} { return r.lost }

// ID returns the registered node ID.
func (r *Registry) ID() string { return r.cfg.Node.ID }

func (r *Registry) markLost(why string) {
	r.lostOnce.Do(func() {
		if why != "closed" {
			r.log.Warn("registry: registration lost; fencing", "why", why)
		}
		close(r.lost)
	})
}

// watchSelf closes Lost when the session ends or the registration key is deleted. The
// key watch is what makes a revoked lease known at once: the session's keep-alive
// would only notice at its next renewal, up to a third of the TTL later.
func (r *Registry) watchSelf(ctx context.Context, fromRev int64) {
	defer close(r.done)
	wch := r.cfg.Client.Watch(ctx, r.key, clientv3.WithRev(fromRev), clientv3.WithFilterPut())
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.session.Done():
			r.markLost("session ended")
			return
		case wr, ok := <-wch:
			if !ok {
				if ctx.Err() != nil {
					return
				}
				r.markLost("watch of own key ended")
				return
			}
			if err := wr.Err(); err != nil {
				// A compacted or cancelled watch cannot tell us whether the key still
				// exists; losing the registration is the safe conclusion.
				r.markLost("watch of own key failed: " + err.Error())
				return
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					r.markLost("registration deleted")
					return
				}
			}
		}
	}
}

// Update replaces the registered node description (the ID cannot change).
func (r *Registry) Update(ctx context.Context, n Node) error {
	if n.ID != r.cfg.Node.ID {
		return errors.New("registry: node id cannot change")
	}
	val, err := json.Marshal(n)
	if err != nil {
		return fmt.Errorf("registry: encode node: %w", err)
	}
	resp, err := r.cfg.Client.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(r.key), "=", r.session.Lease())).
		Then(clientv3.OpPut(r.key, string(val), clientv3.WithLease(r.session.Lease()))).
		Commit()
	if err != nil {
		return fmt.Errorf("registry: update: %w", err)
	}
	if !resp.Succeeded {
		r.markLost("registration missing at update")
		return errors.New("registry: registration lost")
	}
	return nil
}

// Close deletes the registration (by revoking the session's lease), closes Lost and
// stops the self-watch. It is idempotent.
func (r *Registry) Close() error {
	var err error
	r.closed.Do(func() {
		r.cancel()
		<-r.done
		r.markLost("closed")
		err = r.session.Close()
		<-r.kaDone // its keep-alive channel closes with wctx
	})
	return err
}

// List returns the registered nodes of a cluster, sorted by ID, and the etcd revision
// of the listing.
func List(ctx context.Context, c *clientv3.Client, cluster string) ([]Node, int64, error) {
	resp, err := c.Get(ctx, NodesPrefix(cluster), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("registry: list: %w", err)
	}
	nodes := make([]Node, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		n, ok := decode(cluster, kv.Key, kv.Value)
		if !ok {
			continue
		}
		n.Lease = clientv3.LeaseID(kv.Lease)
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
	return nodes, resp.Header.Revision, nil
}

func decode(cluster string, key, val []byte) (Node, bool) {
	var n Node
	if err := json.Unmarshal(val, &n); err != nil {
		return Node{}, false
	}
	n.ID = strings.TrimPrefix(string(key), NodesPrefix(cluster)) // the key is authoritative
	return n, true
}

// Watch sends the full list of registered nodes now and after every change, until ctx
// is cancelled; then the channel is closed. The channel holds only the latest list: a
// slow reader skips intermediate lists, never the last one. Transient watch failures
// are retried after a short pause.
func Watch(ctx context.Context, c *clientv3.Client, cluster string) <-chan []Node {
	out := make(chan []Node, 1)
	go func() {
		defer close(out)
		for ctx.Err() == nil {
			nodes, rev, err := List(ctx, c, cluster)
			if err != nil {
				pause(ctx, 100*time.Millisecond)
				continue
			}
			offer(out, nodes)
			watchFrom(ctx, c, cluster, rev+1, nodes, out)
		}
	}()
	return out
}

// watchFrom applies watch events to nodes and offers each new list, until the watch
// fails (the caller re-lists) or ctx ends.
func watchFrom(ctx context.Context, c *clientv3.Client, cluster string, rev int64, nodes []Node, out chan []Node) {
	byID := make(map[string]Node, len(nodes))
	for _, n := range nodes {
		byID[n.ID] = n
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range c.Watch(wctx, NodesPrefix(cluster), clientv3.WithPrefix(), clientv3.WithRev(rev)) {
		if wr.Err() != nil {
			return
		}
		for _, ev := range wr.Events {
			id := strings.TrimPrefix(string(ev.Kv.Key), NodesPrefix(cluster))
			if ev.Type == clientv3.EventTypeDelete {
				delete(byID, id)
				continue
			}
			if n, ok := decode(cluster, ev.Kv.Key, ev.Kv.Value); ok {
				n.Lease = clientv3.LeaseID(ev.Kv.Lease)
				byID[id] = n
			}
		}
		list := make([]Node, 0, len(byID))
		for _, n := range byID {
			list = append(list, n)
		}
		slices.SortFunc(list, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
		offer(out, list)
	}
}

// offer replaces whatever is buffered in a latest-value channel with v.
func offer[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Discoverer returns a function listing the gossip addresses of a cluster's registered
// nodes, suitable for membership.Config.Discover.
func Discoverer(c *clientv3.Client, cluster string) func(ctx context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		nodes, _, err := List(ctx, c, cluster)
		if err != nil {
			return nil, err
		}
		addrs := make([]string, 0, len(nodes))
		for _, n := range nodes {
			if n.GossipAddr != "" {
				addrs = append(addrs, n.GossipAddr)
			}
		}
		return addrs, nil
	}
}

// Revoke deletes a node's registration by revoking its lease, which also ends every
// other key and candidacy bound to that lease (its election candidacy). It is what a
// peer does on memberlist's verdict that the node is dead, instead of waiting out the
// TTL. Revoking a node that is not registered is not an error.
func Revoke(ctx context.Context, c *clientv3.Client, cluster, id string) error {
	resp, err := c.Get(ctx, NodeKey(cluster, id))
	if err != nil {
		return fmt.Errorf("registry: revoke %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].Lease == 0 {
		return nil
	}
	if _, err := c.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		if strings.Contains(err.Error(), "requested lease not found") {
			return nil // revoked concurrently
		}
		return fmt.Errorf("registry: revoke %s: %w", id, err)
	}
	return nil
}
