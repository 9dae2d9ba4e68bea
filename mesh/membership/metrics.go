package membership

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	members prometheus.Gauge
	events  *prometheus.CounterVec
	joins   prometheus.Counter
	rejoins prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		members: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "roomcast", Subsystem: "membership", Name: "members",
			Help: "Members this node believes alive, itself included.",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "roomcast", Subsystem: "membership", Name: "events_total",
			Help: "Membership changes seen, by type (join, update, leave, failed).",
		}, []string{"type"}),
		joins: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "roomcast", Subsystem: "membership", Name: "joined_peers_total",
			Help: "Peers successfully contacted by Join and the re-joiner.",
		}),
		rejoins: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "roomcast", Subsystem: "membership", Name: "rejoin_attempts_total",
			Help: "Re-join rounds that found seeds not known to be alive.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.members, m.events, m.joins, m.rejoins} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("membership: metrics already registered: %w", err)
			}
			return nil, fmt.Errorf("membership: register metrics: %w", err)
		}
	}
	return m, nil
}
