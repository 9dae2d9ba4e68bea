package shardmap

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	leader   prometheus.Gauge
	revision prometheus.Gauge
	writes   prometheus.Counter
	moved    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "roomcast", Subsystem: "shardmap", Name: "leader",
			Help: "1 while this node is the shard-map leader.",
		}),
		revision: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "roomcast", Subsystem: "shardmap", Name: "revision",
			Help: "etcd revision of the cached shard map.",
		}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "roomcast", Subsystem: "shardmap", Name: "writes_total",
			Help: "Shard-map transactions committed by this node as leader.",
		}),
		moved: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "roomcast", Subsystem: "shardmap", Name: "shards_moved_total",
			Help: "Shards moved by this node's map writes.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	// A node that re-registers after being fenced creates a new ShardMap on the same
	// registry: it takes over the collectors of its predecessor.
	var err error
	if m.leader, err = register(reg, m.leader); err != nil {
		return nil, err
	}
	if m.revision, err = register(reg, m.revision); err != nil {
		return nil, err
	}
	if m.writes, err = register(reg, m.writes); err != nil {
		return nil, err
	}
	if m.moved, err = register(reg, m.moved); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the equal collector registered already.
func register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(T); ok {
				return old, nil
			}
		}
		return c, fmt.Errorf("shardmap: register metrics: %w", err)
	}
	return c, nil
}
