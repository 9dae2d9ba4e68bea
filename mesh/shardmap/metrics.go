package shardmap

import (
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
	for _, c := range []prometheus.Collector{m.leader, m.revision, m.writes, m.moved} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("shardmap: register metrics: %w", err)
		}
	}
	return m, nil
}
